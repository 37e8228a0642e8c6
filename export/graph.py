"""What every export format shares: the eval-mode serving function with variables baked in,
its input layout, the names of its outputs, and the metadata that travels with it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_effnet.export.errors import ExportError
from flax_effnet.preprocessing import Preprocessing
from flax_effnet.registry import family_of, find_model_name, module_fields

LAYOUTS = ("nchw", "nhwc")
# Bumped when the meaning of a metadata key changes.
METADATA_VERSION = 1


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ExportError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def image_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    """An int or (height, width) -> (height, width), both positive."""
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(hw) != 2 or not all(isinstance(n, int) and n > 0 for n in hw):
        raise ExportError(f"input size must be a positive int or (height, width), got {input_size!r}")
    return hw


def input_shape(batch, input_size, layout: str) -> tuple:
    """The model input's shape for a batch size (an int or a symbolic dimension)."""
    h, w = image_size(input_size)
    return (batch, 3, h, w) if check_layout(layout) == "nchw" else (batch, h, w, 3)


def with_standard_ops(model: nn.Module) -> nn.Module:
    """The same module with depthwise_impl='conv' where it has that field.

    The CPU formulation ('shift') writes each depthwise conv as k*k strided slices, the stem as
    a patch matmul: exported to ONNX, b0 became 906 Concat, 585 Slice and 353 Mul nodes (16 s
    to export) instead of 17 Conv nodes (2.4 s). The param layout is the same for both, so the
    variables are unchanged; ONNX runtimes have their own fast depthwise kernels.
    """
    if "depthwise_impl" in module_fields(type(model)):
        return model.clone(depthwise_impl="conv")
    return model


def serving_function(model: nn.Module, variables: Mapping, *, layout: str = "nhwc") -> Callable:
    """`images -> outputs` in eval mode with `variables` closed over (they become constants
    of the exported graph). For layout 'nchw' the function takes (N, 3, H, W) and transposes
    it to the models' NHWC inside."""
    check_layout(layout)
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}

    def serve(images: jax.Array):
        x = jnp.transpose(images, (0, 2, 3, 1)) if layout == "nchw" else images
        return model.apply(variables, x, train=False)

    return serve


def output_names(model: nn.Module, outputs: Any) -> list[str]:
    """Names for the flattened outputs: 'logits' (or 'features' without a classifier) for one
    array, the tree paths ('p3', 'levels/0', ...) for a tuple or dict of them."""
    leaves = jax.tree_util.tree_leaves_with_path(outputs)
    if len(leaves) == 1 and not leaves[0][0]:
        return ["logits" if getattr(model, "num_classes", 0) else "features"]
    anchors = getattr(model, "anchors", None)
    if anchors is not None:  # a detector: (class outputs, box outputs), one per level
        levels = range(anchors.min_level, anchors.max_level + 1)
        return [f"{kind}_p{level}" for kind in ("class", "box") for level in levels]
    return [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in leaves]


def _model_description(model: nn.Module) -> dict:
    try:
        family = family_of(model)
    except ValueError:
        return {"class": type(model).__name__}
    return {"family": family.name, **family.encode(model)}


def serving_metadata(
    model: nn.Module,
    preprocessing: Preprocessing | None,
    class_names: Sequence[str] | None,
    *,
    input_size,
    layout: str,
    outputs: Sequence[str],
    source: Mapping | None = None,
) -> dict[str, Any]:
    """The JSON-able facts a server needs beside the graph: how to prepare an image
    (the saved preprocessing, at the exported input size), what the input layout is, what
    the outputs mean. ONNX keeps each value as a JSON string in `metadata_props`; StableHLO
    artifacts get them as one JSON file. Without `preprocessing` its keys are left out."""
    h, w = image_size(input_size)
    prep = dataclasses.asdict(preprocessing) if preprocessing is not None else {}
    try:
        name = find_model_name(model)
    except ValueError:
        name = None
    return {
        "flax_effnet.metadata_version": METADATA_VERSION,
        "model_name": name,
        "model": _model_description(model),
        "layout": check_layout(layout),
        "input_shape": list(input_shape("batch", (h, w), layout)),
        "outputs": list(outputs),
        **{k: v for k, v in prep.items() if k != "input_size"},
        # The size the graph was exported at; the saved one is what the weights were made for.
        "input_size": [h, w],
        **({"saved_input_size": prep["input_size"]} if prep else {}),
        "class_names": list(class_names) if class_names else None,
        "source": dict(source or {}),
    }
