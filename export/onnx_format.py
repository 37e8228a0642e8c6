"""ONNX export through jax2onnx, and running the result in ONNX Runtime.

jax2onnx converts the jaxpr of a JAX function primitive by primitive to ONNX ops; it is what
Keras 3 moved to after the jax2tf + tf2onnx route lost support (jax-ml/jax#15627). The model
is exported with `depthwise_impl='conv'` (`graph.with_standard_ops`): standard Conv nodes
instead of the CPU formulation's hundreds of slices. Our 1x1 convolutions are matmuls over the
channel axis, which jax2onnx writes as NHWC Einsums between Transposes and channel-first
BatchNormalization; `pointwise_einsums_to_conv` turns them back into 1x1 Conv nodes, after
which ONNX Runtime folds every BatchNormalization into its Conv and its NCHWc pass replaces
the layout Transposes (b0's ORT-optimized graph, NCHW input: 49 Transpose and 32
BatchNormalization nodes with the Einsums, none after the rewrite).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from flax_effnet.export.errors import ExportError
from flax_effnet.export.graph import (
    input_shape,
    output_names,
    serving_function,
    serving_metadata,
    with_standard_ops,
)
from flax_effnet.preprocessing import Preprocessing

BATCH_DIM = "batch"


def check_available() -> None:
    """Raise ExportError naming what to install unless jax2onnx, onnx and onnxruntime import."""
    try:
        import jax2onnx  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs jax2onnx, onnx and onnxruntime ({e}): "
            "pip install 'flax-effnet[export]' && pip install --no-deps jax2onnx==0.17.1"
        ) from None


def _jax2onnx():
    check_available()
    import jax2onnx

    return jax2onnx


@contextlib.contextmanager
def _quiet_value_info():
    """Silence onnx_ir's warnings about intermediate values it cannot annotate (EfficientDet's
    pad-and-pool shapes print 16 per export); `to_onnx` drops those annotations anyway."""
    logger = logging.getLogger("onnx_ir.serde")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def to_onnx(
    model: nn.Module,
    variables: Mapping,
    *,
    input_size: int | Sequence[int] = 224,
    layout: str = "nchw",
    preprocessing: Preprocessing | None = None,
    class_names: Sequence[str] | None = None,
    source: Mapping | None = None,
):
    """An eval-mode ONNX graph of `model` with `variables` as initializers.

    Args:
      model: any model of the library (a linen module).
      variables: its variables ('params', 'batch_stats').
      input_size: the exported image size, an int or (height, width); the batch dimension
        is dynamic (named 'batch').
      layout: 'nchw' (the ONNX convention, the default here) or 'nhwc' (the models' own).
      preprocessing, class_names, source: written to `metadata_props` with the layout and
        the output names, each value a JSON string (`load_onnx_metadata` reads them back).

    Returns:
      an `onnx.ModelProto` with input 'images' and outputs 'logits' (or 'features', or one
      per output of a multi-output model).
    """
    jax2onnx = _jax2onnx()
    export_model = with_standard_ops(model)
    fn = serving_function(export_model, variables, layout=layout)
    shape = input_shape(BATCH_DIM, input_size, layout)
    outputs = jax.eval_shape(fn, jax.ShapeDtypeStruct(input_shape(1, input_size, layout), np.float32))
    names = output_names(model, outputs)
    try:
        with _quiet_value_info():
            proto = jax2onnx.to_onnx(
                fn,
                [shape],
                model_name=type(model).__name__,
                input_names=["images"],
                output_names=names,
            )
    except Exception as e:  # jax2onnx's own failures (an op it cannot lower) are not ours to trace
        raise ExportError(
            f"jax2onnx cannot convert {type(model).__name__}: {type(e).__name__}: {e}; "
            "--to stablehlo exports every model"
        ) from e
    # jax2onnx annotates some intermediate values with NCHW shapes where the value is NHWC
    # (ONNX Runtime warns "Error merging shape info" for each); the annotations are optional,
    # so they are dropped and ONNX Runtime infers its own.
    del proto.graph.value_info[:]
    pointwise_einsums_to_conv(proto.graph)
    metadata = serving_metadata(
        model,
        preprocessing,
        class_names,
        input_size=input_size,
        layout=layout,
        outputs=names,
        source=source,
    )
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return proto


# What jax2onnx writes for x (N, H, W, C_in) contracted with w (C_in, C_out) on the last axis.
_POINTWISE_EQUATION = b"abcd,de->abce"


def _constant_weight(graph, name: str, initializers: dict):
    """The (C_in, C_out) matrix behind an Einsum's weight input: an initializer, or a Squeeze
    of a (1, 1, C_in, C_out) one (how jax2onnx writes `kernel[0, 0]`); else None."""
    from onnx import numpy_helper

    if name in initializers:
        w = numpy_helper.to_array(initializers[name])
    else:
        producer = next((n for n in graph.node if name in n.output), None)
        if producer is None or producer.op_type != "Squeeze" or producer.input[0] not in initializers:
            return None
        w = numpy_helper.to_array(initializers[producer.input[0]])
    return w.reshape(w.shape[-2:]) if w.ndim >= 2 and w.size == np.prod(w.shape[-2:]) else None


def pointwise_einsums_to_conv(graph) -> int:
    """Rewrite each NHWC pointwise Einsum as Transpose -> 1x1 Conv -> Transpose, in place;
    the transposes cancel against jax2onnx's own around BatchNormalization once ONNX Runtime
    optimizes the graph. Weights no longer used are dropped. Returns the number rewritten."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        equation = next((a.s for a in node.attribute if a.name == "equation"), None)
        w = _constant_weight(graph, node.input[1], initializers) if node.op_type == "Einsum" else None
        if equation != _POINTWISE_EQUATION or w is None:
            nodes.append(node)
            continue
        out = node.output[0]
        kernel = numpy_helper.from_array(np.ascontiguousarray(w.T[:, :, None, None]), f"{out}_oihw")
        graph.initializer.append(kernel)
        nodes += [
            helper.make_node("Transpose", [node.input[0]], [f"{out}_nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", [f"{out}_nchw", kernel.name], [f"{out}_conv"], kernel_shape=[1, 1]),
            helper.make_node("Transpose", [f"{out}_conv"], [out], perm=[0, 2, 3, 1]),
        ]
        rewritten += 1
    del graph.node[:]
    graph.node.extend(_live_nodes(graph, nodes))
    used = {name for n in graph.node for name in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return rewritten


def _live_nodes(graph, nodes):
    """`nodes` without those whose outputs nothing reads (the Squeezes of replaced weights)."""
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(node.input)
    return live[::-1]


def save_onnx(proto, path: str | os.PathLike) -> None:
    import onnx

    onnx.save_model(proto, os.fspath(path))


def load_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata `to_onnx` wrote, values parsed from JSON."""
    import onnx

    proto = onnx.load_model(os.fspath(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


def onnx_session(path: str | os.PathLike, *, threads: int | None = None):
    """An ONNX Runtime CPU session for an exported file."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError(f"running the ONNX file needs onnxruntime ({e})") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, images: np.ndarray) -> list[np.ndarray]:
    """Run an exported file (or a session of one) on a batch; its outputs in order."""
    session = path_or_session
    if isinstance(path_or_session, (str, os.PathLike)):
        session = onnx_session(path_or_session)
    return session.run(None, {session.get_inputs()[0].name: np.asarray(images, np.float32)})
