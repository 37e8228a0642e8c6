"""MobileNetV1/V2, ReXNet and ReXNet-lite formats: every table fills exactly the Flax model's
leaves, every registered model (and widths without a name) is detected as itself from its
keys and shapes alone, and what does not fit is named. Zero-filled state_dicts: nothing runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flax_effnet import MobileNetV2, ReXNet, create_model
from flax_effnet.convert import KeyMismatchError, UnknownVariantError, convert_state_dict
from flax_effnet.convert.formats import FORMATS

# Format -> models it holds: registered names, or (module, label) for unnamed widths.
CASES = {
    "torchvision_mobilenet_v2": ["mobilenetv2_035", "mobilenetv2_050", "mobilenetv2_100", "mobilenetv2_140",
                                 (MobileNetV2(width=0.6), "width 0.6, scale_head False")],
    "seed002": [(MobileNetV2(width=0.5, scale_head=True), "width 0.5, scale_head True"),
                (MobileNetV2(width=0.75, scale_head=True), "width 0.75, scale_head True")],
    "timm_mobilenetv2": ["mobilenetv2_035", "mobilenetv2_075", "mobilenetv2_100", "mobilenetv2_110d",
                         "mobilenetv2_120d", "mobilenetv2_140"],
    "timm_mobilenetv1": ["mobilenetv1_100", "mobilenetv1_100h", "mobilenetv1_125"],
    "timm_rexnet": ["rexnet_100", "rexnet_130", "rexnet_150", "rexnet_200", "rexnet_300",
                    "rexnetr_100", "rexnetr_130", "rexnetr_150", "rexnetr_200", "rexnetr_300"],
    "seed003": ["rexnet_100", "rexnet_130", "rexnet_150", "rexnet_200", "rexnet_300",
                (ReXNet(width=0.9), "width 0.9")],
    "seed003_lite": ["rexnet_lite_100", "rexnet_lite_130", "rexnet_lite_150", "rexnet_lite_200"],
}  # fmt: skip
PAIRS = [(f, c) for f, cases in CASES.items() for c in cases]


def _model(case, num_classes):
    if isinstance(case, str):
        return create_model(case, num_classes=num_classes), case
    module, label = case
    return module.clone(num_classes=num_classes), label


def _zeros(fmt_name, model):
    fmt = FORMATS[fmt_name]
    rows = fmt.table(model, fmt.classifier[0], model.num_classes)
    return {r.torch_key: np.zeros(r.torch_shape, np.float32) for r in rows}


@pytest.mark.parametrize("fmt_name", sorted(CASES))
def test_table_covers_every_flax_leaf_once(fmt_name):
    fmt = FORMATS[fmt_name]
    model, _ = _model(CASES[fmt_name][0], 10)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}
    rows = fmt.table(model, fmt.classifier[0], 10)
    assert {r.flax_path: r.flax_shape for r in rows} == want
    assert len({r.flax_path for r in rows}) == len({r.torch_key for r in rows}) == len(rows)


@pytest.mark.parametrize(
    "fmt_name, case", PAIRS, ids=[f"{f}-{c if isinstance(c, str) else c[1]}" for f, c in PAIRS]
)
def test_architecture_detected_from_shapes(fmt_name, case):
    model, label = _model(case, 7)
    # Every state_dict carries BN counters; they are ignored, not unexpected.
    sd = _zeros(fmt_name, model)
    sd.update(
        {
            k.replace(".running_mean", ".num_batches_tracked"): np.zeros(())
            for k in list(sd)
            if k.endswith(".running_mean")
        }
    )
    converted, variables, info = convert_state_dict({f"module.{k}": v for k, v in sd.items()})
    assert (info.format, info.family, info.variant, info.num_classes) == (
        fmt_name,
        FORMATS[fmt_name].family,
        label,
        7,
    )
    assert info.prefix == "module." and info.classifier == "converted"
    assert converted == model
    assert info.model_name == (case if isinstance(case, str) else None)
    assert info.num_tensors == len(sd) - sum(k.endswith("num_batches_tracked") for k in sd)


def test_torchvision_and_seed002_are_told_apart_by_the_head():
    """Same keys; below width 1 only seed 002 scales the head. At width >= 1 they are the same
    network, read as torchvision's, and `format='seed002'` gives the same model."""
    seed = MobileNetV2(width=0.5, scale_head=True, num_classes=5)
    _, _, info = convert_state_dict(_zeros("seed002", seed))
    assert info.format == "seed002" and any("same keys" in n for n in info.notes)
    wide = create_model("mobilenetv2_140", num_classes=5)
    sd = _zeros("torchvision_mobilenet_v2", wide)
    m1, v1, info1 = convert_state_dict(sd)
    m2, v2, info2 = convert_state_dict(sd, format="seed002")
    assert (info1.format, info2.format) == ("torchvision_mobilenet_v2", "seed002")
    assert m1.network == m2.network
    assert jax.tree.map(np.shape, v1) == jax.tree.map(np.shape, v2)


def test_timm_mobilenets_and_efficientnets_share_conv_stem_but_not_formats():
    for name, fmt in (
        ("mobilenetv2_100", "timm_mobilenetv2"),
        ("mobilenetv1_100", "timm_mobilenetv1"),
    ):
        _, _, info = convert_state_dict(_zeros(fmt, create_model(name)))
        assert info.format == fmt


def test_clovaai_classifier_is_a_1x1_conv():
    model = create_model("rexnet_100")
    sd = _zeros("seed003", model)
    assert sd["output.1.weight"].shape == (1000, 1280, 1, 1)
    _, variables, _ = convert_state_dict(sd)
    assert variables["params"]["classifier"]["kernel"].shape == (1280, 1000)
    _, variables, info = convert_state_dict(sd, num_classes=5)
    assert info.classifier == "new" and variables["params"]["classifier"]["kernel"].shape == (
        1280,
        5,
    )
    lite = _zeros("seed003_lite", create_model("rexnet_lite_100"))
    _, variables, info = convert_state_dict(lite, num_classes=0)
    assert info.classifier == "none" and "classifier" not in variables["params"]
    assert variables["params"]["pre_logits"]["dense"]["kernel"].shape == (1280, 1024)
    assert info.ignored == ["output.4.bias", "output.4.weight"]


def test_missing_unexpected_and_misshaped_keys_are_named():
    sd = _zeros("seed003", create_model("rexnet_100"))
    del sd["features.10.out.5.fc.1.running_var"]
    sd["features.4.out.4.weight"] = np.zeros(7, np.float32)  # block 1: 16 -> 96 expanded, its dw BN
    sd["features.99.weight"] = np.zeros(3, np.float32)
    with pytest.raises(KeyMismatchError) as e:
        convert_state_dict(sd, variant="rexnet_100")
    msg = str(e.value)
    assert "seed003 checkpoint" in msg and "model rexnet_100" in msg
    assert "'features.10.out.5.fc.1.running_var': expected shape (" in msg
    assert "'features.4.out.4.weight': expected shape (96,), found (7,)" in msg
    assert "'features.99.weight': shape (3,)" in msg


def test_unknown_architecture_says_what_was_seen():
    sd = _zeros("timm_rexnet", create_model("rexnet_100"))
    sd = {k: v for k, v in sd.items() if not k.startswith("features.15.")}
    with pytest.raises(
        UnknownVariantError,
        match="timm_rexnet checkpoint with stem 32, 15 blocks matches no ReXNet.*--model",
    ):
        convert_state_dict(sd)


def test_model_of_another_family_is_refused():
    sd = _zeros("timm_mobilenetv2", create_model("mobilenetv2_100"))
    with pytest.raises(
        UnknownVariantError, match="'rexnet_100' is a rexnet model; a timm_mobilenetv2 checkpoint"
    ):
        convert_state_dict(sd, variant="rexnet_100")
    with pytest.raises(KeyMismatchError, match="model mobilenetv2_140"):
        convert_state_dict(sd, variant="mobilenetv2_140")
