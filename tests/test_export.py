"""ONNX (jax2onnx -> ONNX Runtime) and StableHLO (jax.export) exports of every family give the
Flax model's outputs, for batch sizes other than any used while exporting.

Random weights with random BatchNorm statistics (`random_variables`), odd and even and
non-square sizes, both layouts; the reference is the model as users run it on CPU (the
'shift' formulation), the ONNX graph is built from the 'conv' one.
"""

from __future__ import annotations

import collections
import zlib

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import flax_effnet
from flax_effnet import Preprocessing
from flax_effnet.export import (
    load_onnx_metadata,
    load_stablehlo,
    run_onnx,
    run_stablehlo,
    to_onnx,
    to_stablehlo,
    verify_tolerance,
)
from flax_effnet.export.onnx_format import onnx_session, save_onnx
from flax_effnet.export.stablehlo import save_stablehlo
from infer_helpers import random_variables

pytestmark = pytest.mark.slow


def _batch(n, size, seed=1):
    h, w = (size, size) if isinstance(size, int) else size
    return np.random.default_rng(seed).standard_normal((n, h, w, 3)).astype(np.float32)


def _to_layout(x, layout):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "nchw" else x


def _check_onnx(tmp_path, name, size, layout, num_classes=7, batches=(1, 3)):
    model = flax_effnet.create_model(name, num_classes=num_classes)
    # Classifier not scaled up: logits of ~100 already (random BN statistics let activations
    # grow through the blocks), and float32 differences grow with the activations.
    variables = random_variables(model, max(np.atleast_1d(size)), seed=zlib.crc32(name.encode()), logit_scale=1.0)
    proto = to_onnx(model, variables, input_size=size, layout=layout)
    onnx.checker.check_model(proto)
    path = tmp_path / f"{name}.onnx"
    save_onnx(proto, path)
    (graph_input,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    h, w = (size, size) if isinstance(size, int) else size
    assert dims == (["batch", 3, h, w] if layout == "nchw" else ["batch", h, w, 3])
    forward = jax.jit(model.apply)
    diffs = []
    for n in batches:
        x = _batch(n, size, seed=n)
        ref = np.asarray(forward(variables, x))
        (got,) = run_onnx(path, _to_layout(x, layout))
        assert got.shape == (n, num_classes)
        diff = float(np.max(np.abs(got - ref)))
        assert diff <= verify_tolerance([ref]), (name, n, diff)
        diffs.append(diff)
    return proto, diffs


@pytest.mark.parametrize(
    "name, size, layout",
    [
        ("efficientnet_b0", 33, "nchw"),  # PyTorch padding, odd size
        ("tf_efficientnet_b0", 64, "nhwc"),  # TF SAME padding, even size
        ("tf_efficientnet_b3", (33, 48), "nchw"),  # odd height, even width
    ],
)
def test_onnx_efficientnet_matches_flax(tmp_path, name, size, layout):
    proto, _ = _check_onnx(tmp_path, name, size, layout)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    # Standard ops only: depthwise convs are grouped Conv nodes, not the CPU formulation's
    # slices, and the pointwise Einsums were rewritten to 1x1 Conv.
    assert ops["Slice"] == 0 and ops["Einsum"] == 0 and ops["Conv"] > 0
    # ...so that ONNX Runtime's optimizer folds every BatchNormalization into its Conv (its
    # machine-specific NCHWc pass, not asserted, then also replaces the layout Transposes).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert optimized["BatchNormalization"] == 0 and optimized["Conv"] == ops["Conv"], optimized


@pytest.mark.parametrize(
    "name", ["mobilenetv2_100", "mobilenetv1_100", "rexnet_100", "rexnet_lite_100"]
)
def test_onnx_other_families_match_flax(tmp_path, name):
    _check_onnx(tmp_path, name, 33, "nchw", batches=(2,))


def test_onnx_metadata_and_features_output(tmp_path):
    """A backbone without classifier exports 'features'; preprocessing, class names and layout
    are in metadata_props as JSON strings."""
    model = flax_effnet.create_model("mobilenetv1_100", num_classes=0)
    variables = random_variables(model, 32)
    prep = Preprocessing(input_size=40, crop_pct=0.95, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3)
    proto = to_onnx(
        model, variables, input_size=32, layout="nhwc", preprocessing=prep,
        class_names=["a", "b"], source={"format": "test"},
    )
    path = tmp_path / "m.onnx"
    save_onnx(proto, path)
    meta = load_onnx_metadata(path)
    assert meta["layout"] == "nhwc" and meta["input_size"] == [32, 32] and meta["saved_input_size"] == 40
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3
    assert meta["crop_pct"] == 0.95 and meta["interpolation"] == "bilinear"
    assert meta["class_names"] == ["a", "b"] and meta["model_name"] == "mobilenetv1_100"
    assert meta["model"]["family"] == "mobilenetv1" and meta["outputs"] == ["features"]
    assert meta["source"] == {"format": "test"}
    x = _batch(2, 32)
    (got,) = run_onnx(path, x)
    ref = np.asarray(jax.jit(model.apply)(variables, x))
    assert got.shape == ref.shape == (2, 1024)
    assert np.max(np.abs(got - ref)) <= verify_tolerance([ref])


def test_stablehlo_round_trip(tmp_path):
    """Serialize, deserialize in a fresh Exported and call at other batch sizes (NCHW here;
    the CLI test exports NHWC)."""
    layout = "nchw"
    model = flax_effnet.create_model("mobilenetv1_100", num_classes=5)
    variables = random_variables(model, 35)
    exported = to_stablehlo(model, variables, input_size=(35, 32), layout=layout)
    path = tmp_path / "m.stablehlo"
    save_stablehlo(exported, path)
    loaded = load_stablehlo(path)
    assert str(loaded.in_avals[0].shape[0]) == "batch" and loaded.platforms == ("cpu",)
    forward = jax.jit(model.apply)
    for n in (1, 4):
        x = _batch(n, (35, 32), seed=n)
        (got,) = run_stablehlo(loaded, _to_layout(x, layout))
        ref = np.asarray(forward(variables, x))
        assert got.shape == (n, 5)
        np.testing.assert_allclose(got, ref, rtol=0, atol=verify_tolerance([ref]))


def _small_detector(name="tf_efficientdet_d0"):
    """`name`'s structure with a narrow, one-cell BiFPN and one head repeat."""
    return flax_effnet.create_model(
        name, num_classes=3, fpn_channels=16, fpn_cell_repeats=1, box_class_repeats=1
    )


def _detector_reference(model, variables, x):
    classes, boxes = jax.jit(model.apply)(variables, x)
    return [np.asarray(a) for a in (*classes, *boxes)]


def test_stablehlo_efficientdet_levels(tmp_path):
    """EfficientDet's raw P3-P7 class and box outputs through StableHLO, non-square, at a batch
    size other than the verification's, named per level."""
    model = _small_detector()
    size = (128, 256)
    variables = random_variables(model, 128)
    exported = to_stablehlo(model, variables, input_size=size, layout="nhwc")
    path = tmp_path / "det.stablehlo"
    save_stablehlo(exported, path)
    x = _batch(3, size, seed=5)
    got = run_stablehlo(load_stablehlo(path), x)
    ref = _detector_reference(model, variables, x)
    assert len(got) == 10 and [g.shape for g in got] == [r.shape for r in ref]
    assert ref[0].shape == (3, 16, 32, 9 * 3) and ref[5].shape == (3, 16, 32, 9 * 4)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=0, atol=verify_tolerance(ref))
    from flax_effnet.export.graph import output_names

    assert exported.out_avals[0].shape[1:] == (16, 32, 27)
    assert output_names(model, ref) == [f"{kind}_p{level}" for kind in ("class", "box") for level in range(3, 8)]


@pytest.mark.parametrize(
    "name, size, layout",
    [
        ("tf_efficientdet_d0", (128, 256), "nchw"),  # TF SAME pool padding, non-square
        ("efficientdet_d0", 192, "nhwc"),  # symmetric pool padding; P6 3x3 -> P7 2x2 pads
    ],
)
def test_onnx_efficientdet_levels(tmp_path, name, size, layout):
    """EfficientDet's P3-P7 outputs through ONNX Runtime, named per level, at two batch sizes;
    every max-pool's padding is an explicit -inf Pad before a VALID MaxPool."""
    model = _small_detector(name)
    variables = random_variables(model, max(np.atleast_1d(size)))
    proto = to_onnx(model, variables, input_size=size, layout=layout)
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == [
        f"{kind}_p{level}" for kind in ("class", "box") for level in range(3, 8)
    ]
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 6 and all(  # P5->P6, P6->P7, and the bottom-up path's P3->P4 ... P6->P7
        not any(a.name == "pads" and any(a.ints) for a in n.attribute) for n in pools
    )
    path = tmp_path / f"{name}.onnx"
    save_onnx(proto, path)
    session = onnx_session(path)
    for n in (1, 3):
        x = _batch(n, size, seed=n)
        ref = _detector_reference(model, variables, x)
        got = run_onnx(session, _to_layout(x, layout))
        assert [g.shape for g in got] == [r.shape for r in ref]
        worst = max(float(np.max(np.abs(g - r))) for g, r in zip(got, ref))
        assert worst <= verify_tolerance(ref), (name, n, worst)


def test_jax2onnx_failure_is_a_named_error(monkeypatch):
    """An op jax2onnx cannot lower becomes one ExportError naming the model and the way out,
    not jax2onnx's traceback."""
    import jax2onnx

    from flax_effnet.export.errors import ExportError

    def fail(*args, **kwargs):
        raise NotImplementedError("no plugin for primitive 'foo'")

    monkeypatch.setattr(jax2onnx, "to_onnx", fail)
    model = flax_effnet.create_model("mobilenetv1_100", num_classes=3)
    with pytest.raises(ExportError, match=r"jax2onnx cannot convert MobileNetV1: NotImplementedError: "
                       r"no plugin for primitive 'foo'; --to stablehlo"):
        to_onnx(model, random_variables(model, 32), input_size=32)
