"""MobileNetV2 and MobileNetV1 -> Flax, against the real PyTorch code: torchvision's
mobilenet_v2, timm's mobilenetv2_* / mobilenetv1_*, and seed 002's MobileNetV2
(tests/seed002_mobilenetv2.py). Random weights, randomised BatchNorm (scales large enough that
ReLU6 clips), an odd (33 px) and an even (64 px) input, two widths per source; logits, top-1
and every stage's output compared."""

import pytest

import convert_refs as R
from flax_effnet import MobileNetV2, model_entry
from flax_effnet.convert.verify import last_block_indices

MOBILENET = dict(padding="symmetric", bn_epsilon=1e-5, bn_momentum=0.9)
BN_SCALE = 1.5  # some BN outputs beyond 6: a ReLU in place of ReLU6 would change the logits


def _check(m, stages, size, expect, what):
    x = R.image(size)
    result = R.check_conversion(m, stages, x, expect, bn_scale=BN_SCALE)
    assert R.clipped_fraction(m, x) > 0.002, f"{what}: ReLU6 never clips"
    R.assert_equivalent(result, what)
    return result


def _torchvision():
    from conftest import register_torchvision_ops

    register_torchvision_ops()
    import torchvision

    return torchvision


def _timm(name):
    _torchvision()  # timm imports torchvision
    import timm

    return timm.create_model(name)


def _features_stages(torch_model, flax_model):
    """torchvision / seed 002 `features`: the stem is features[0], block g is features[g + 1]."""
    return [torch_model.features[i + 1] for i in last_block_indices(flax_model)]


@pytest.mark.parametrize("width, size", [(1.0, R.ODD), (0.5, R.EVEN)])
def test_torchvision_mobilenet_v2_logits_match(width, size):
    m = _torchvision().models.mobilenet_v2(width_mult=width)
    name = {1.0: "mobilenetv2_100", 0.5: "mobilenetv2_050"}[width]
    expect = dict(
        format="torchvision_mobilenet_v2",
        family="mobilenetv2",
        model_name=name,
        num_classes=1000,
        **MOBILENET,
    )
    result = _check(
        m,
        _features_stages(m, MobileNetV2(width=width)),
        size,
        expect,
        f"torchvision mobilenet_v2 {width} at {size}px",
    )
    pp = result["info"].preprocessing  # torchvision's IMAGENET1K_V1 eval transform
    assert (pp.input_size, pp.crop_pct, pp.interpolation) == (224, 224 / 256, "bilinear")


@pytest.mark.parametrize("alpha, size", [(0.5, R.ODD), (0.75, R.EVEN)])
def test_seed002_logits_match(alpha, size):
    """The seed's head rule (1280 * alpha) and its train script's 5-class head."""
    from seed002_mobilenetv2 import MobileNetV2 as Seed002

    m = Seed002(num_classes=5, alpha=alpha)
    expect = dict(
        format="seed002", family="mobilenetv2", model_name=None, num_classes=5, **MOBILENET
    )
    flax_model = MobileNetV2(width=alpha, scale_head=True)
    _check(m, _features_stages(m, flax_model), size, expect, f"seed002 alpha {alpha} at {size}px")


@pytest.mark.parametrize("name, size", [("mobilenetv2_110d", R.ODD), ("mobilenetv2_050", R.EVEN)])
def test_timm_mobilenetv2_logits_match(name, size):
    m = _timm(name)
    expect = dict(format="timm_mobilenetv2", family="mobilenetv2", model_name=name, **MOBILENET)
    result = _check(m, list(m.blocks), size, expect, f"timm {name} at {size}px")
    assert result["info"].preprocessing == model_entry(name).preprocessing


@pytest.mark.parametrize("name, size", [("mobilenetv1_100h", R.ODD), ("mobilenetv1_125", R.EVEN)])
def test_timm_mobilenetv1_logits_match(name, size):
    m = _timm(name)
    expect = dict(format="timm_mobilenetv1", family="mobilenetv1", model_name=name, **MOBILENET)
    result = _check(m, list(m.blocks), size, expect, f"timm {name} at {size}px")
    assert result["info"].preprocessing.mean == (0.5, 0.5, 0.5)  # timm's ra4 MobileNetV1 cfg
