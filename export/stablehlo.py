"""StableHLO export through `jax.export`: a serialized, versioned artifact that any later
jaxlib can deserialize and run (`jax.export.deserialize(data).call(images)`), without this
library or the model's Python code.

The model is exported as given: its 'auto' depthwise_impl resolves for the exporting
backend (the CPU formulation on CPU), and the artifact runs on that platform
(`Exported.platforms`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn

from flax_effnet.export.errors import ExportError
from flax_effnet.export.graph import input_shape, serving_function

BATCH_DIM = "batch"


def to_stablehlo(
    model: nn.Module,
    variables: Mapping,
    *,
    input_size: int | Sequence[int] = 224,
    layout: str = "nhwc",
) -> jax.export.Exported:
    """An eval-mode `jax.export.Exported` of `model` with `variables` baked in as constants.

    Args:
      model, variables: any model of the library and its variables.
      input_size: an int or (height, width); the batch dimension is symbolic ('batch').
      layout: 'nhwc' (the models' own, the default here) or 'nchw'.

    Returns:
      the Exported; `.serialize()` gives the bytes to save, `.call(images)` runs it.
    """
    fn = serving_function(model, variables, layout=layout)
    (batch,) = jax.export.symbolic_shape(BATCH_DIM)
    spec = jax.ShapeDtypeStruct(input_shape(batch, input_size, layout), np.float32)
    return jax.export.export(jax.jit(fn))(spec)


def check_available() -> None:
    """Raise ExportError naming what to install unless jax.export can serialize."""
    try:
        import flatbuffers  # noqa: F401  (jax.export's serialization format)
    except ImportError as e:
        raise ExportError(
            f"StableHLO export needs flatbuffers ({e}): pip install 'flax-effnet[export]'"
        ) from None


def save_stablehlo(exported: jax.export.Exported, path: str | os.PathLike) -> None:
    with open(path, "wb") as f:
        f.write(exported.serialize())


def load_stablehlo(path: str | os.PathLike) -> jax.export.Exported:
    """Deserialize an artifact written by `save_stablehlo`."""
    with open(path, "rb") as f:
        return jax.export.deserialize(bytearray(f.read()))


def run_stablehlo(exported: jax.export.Exported, images: np.ndarray) -> list[np.ndarray]:
    """Run a (deserialized) artifact on a batch; its outputs flattened, in order."""
    out = jax.jit(exported.call)(np.asarray(images, np.float32))
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(out)]
