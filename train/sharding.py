"""Device mesh and global batches: data parallelism over every device of every process.

One mesh axis, `data`. Batches are sharded on it; the train state is replicated. Each
process feeds only its own slice of the global batch, and
`jax.make_array_from_process_local_data` assembles the global `jax.Array` (also with one
process, so multi-host needs no other code path). Under `jit`, BatchNorm's batch mean and
variance are then computed over the global batch: XLA inserts the cross-device reductions.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all devices (of all processes), axis `data`."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over devices (and so over processes)."""
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by {n} devices")


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded on `data` (leaves keyed like `local`)."""
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
