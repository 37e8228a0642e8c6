"""Multi-host start-up: `jax.distributed.initialize` from flags, environment or the cluster.

Every process of a multi-host job runs the same command. Before anything touches a device,
`initialize(config)` (called by `train_efficientnet`; library users call it before
`loop.train_and_evaluate`) connects it to the others; afterwards `jax.devices()` lists the devices
of all processes, the trainer's mesh spans them, each process feeds its rows of every global
batch (`samplers.GlobalOrderSampler`, `jax.make_array_from_process_local_data`), only
process 0 logs and writes metrics, and every process takes part in orbax's saves.

`--distributed` decides whether to initialize:
  auto  (default) when a coordinator is given (flags or `JAX_COORDINATOR_ADDRESS`), or when
        JAX recognises a multi-process environment it can configure itself: a Cloud TPU VM
        (pod slices: every host runs the command), SLURM (`srun`), Open MPI (`mpirun`).
        Otherwise one process, no initialization.
  on    always; what is not given is detected by JAX (TPU metadata, SLURM/MPI/Kubernetes).
  off   never (one process).

Explicit settings, for GPU nodes without a scheduler, or CPU hosts:
  --coordinator-address HOST:PORT (or JAX_COORDINATOR_ADDRESS): process 0's address, reachable
  from all; --num-processes N (JAX_NUM_PROCESSES); --process-id I (JAX_PROCESS_ID).

On CPU, cross-process collectives use gloo (`jax_cpu_collectives_implementation`), set here
when the installed JAX has no default.

Reference: https://docs.jax.dev/en/latest/multi_process.html
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax

# JAX cluster environments that `auto` hands to `jax.distributed.initialize()` (jax/_src/clusters).
# Kubernetes is left to `--distributed on`: a single notebook pod looks like a cluster too.
_AUTO_CLUSTERS = ("GceTpuCluster", "GkeTpuCluster", "SlurmCluster", "OmpiCluster")
MODES = ("auto", "on", "off")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {value!r}") from None


def _detected_cluster() -> str | None:
    """The name of the JAX cluster environment this process runs in, if `auto` should use it."""
    try:  # private, so guarded: without it, auto only reacts to explicit settings
        from jax._src.clusters import ClusterEnv
    except ImportError:
        return None
    for env in ClusterEnv._cluster_types:  # noqa: SLF001
        if env.__name__ in _AUTO_CLUSTERS:
            try:
                if env.is_env_present():
                    return env.__name__
            except Exception:  # noqa: BLE001 - a failing probe means "not this environment"
                logging.debug("cluster probe %s failed", env.__name__, exc_info=True)
    return None


def resolve(mode: str = "auto", coordinator_address: str = "", num_processes: int = 0,
            process_id: int = -1) -> dict[str, Any] | None:
    """The keyword arguments for `jax.distributed.initialize`, or None for a single process.

    Flags win over the environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
    `JAX_PROCESS_ID`); what is still unset (None) is left to JAX's cluster detection.
    """
    if mode not in MODES:
        raise ValueError(f"--distributed must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return None
    kwargs = {
        "coordinator_address": coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None,
        "num_processes": num_processes if num_processes > 0 else _env_int("JAX_NUM_PROCESSES"),
        "process_id": process_id if process_id >= 0 else _env_int("JAX_PROCESS_ID"),
    }
    explicit = any(v is not None for v in kwargs.values())
    if mode == "auto" and not explicit and _detected_cluster() is None:
        return None
    if kwargs["coordinator_address"] and None in (kwargs["num_processes"], kwargs["process_id"]) \
            and _detected_cluster() is None:
        raise ValueError("with --coordinator-address, also give --num-processes and --process-id "
                         "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    return kwargs


def initialize(config) -> bool:
    """Connect this process to the job described by `config` (see module docstring).

    Must run before any JAX computation. Returns True when `jax.distributed` was initialized.
    """
    kwargs = resolve(config.distributed, config.coordinator_address, config.num_processes,
                     config.process_id)
    if kwargs is None:
        return False
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:  # older JAX: no default
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True


def barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Wait until every process has reached `name` (coordination-service barrier; no-op alone).

    Unlike a collective (gloo gives a late process 30 s to join), this waits up to `timeout_s`.
    """
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost

    multihost.get_barrier_sync_fn()(key=name, timeout_ms=int(timeout_s * 1000))


def compile_steps(train_fn, eval_fn, state, *, train_batch: dict, eval_batch: dict):
    """(train, eval) compiled ahead of the first step on every process, then a barrier.

    A multi-host step starts with collectives that every process must join within seconds,
    while compiling a step can take minutes and longer on one host than on another; compiling
    here and meeting at a barrier keeps the slowest compiler from failing the others' first
    step. `eval_fn` may be None. With one process this only moves compilation earlier.
    `train_batch` and `eval_batch` are the global batches' `jax.ShapeDtypeStruct`s (with their
    shardings), as the task lays them out.
    """
    train = train_fn.lower(state, train_batch).compile()
    evaluate = None
    if eval_fn is not None:
        evaluate = eval_fn.lower(state.params, state.batch_stats, eval_batch).compile()
    barrier("flax_effnet_steps_compiled")
    return train, evaluate
