"""ReXNet and ReXNet-lite -> Flax, against the real PyTorch code: timm's rexnet_* / rexnetr_*,
and seed 003's ReXNetV1 and ReXNetV1_lite (= clovaai/rexnet, tests/seed003_rexnetv1*.py).
Random weights, randomised BatchNorm (SE BatchNorm included; scales large enough that ReLU6
clips), an odd (33 px) and an even (64 px) input, two widths per source; logits, top-1 and
every stage's output compared."""

import pytest

import convert_refs as R

# Seed 003's SiLU is a `@torch.jit.script` function, which torch 2.13 deprecates at import.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
from flax_effnet import ReXNet, ReXNetLite
from flax_effnet.convert.verify import last_block_indices

TORCH_BN = dict(padding="symmetric", bn_epsilon=1e-5, bn_momentum=0.9)
BN_SCALE = 1.5  # some BN outputs beyond 6: a ReLU in place of ReLU6 would change the logits


def _check(m, stages, size, expect, what):
    x = R.image(size)
    result = R.check_conversion(m, stages, x, expect, bn_scale=BN_SCALE)
    assert R.clipped_fraction(m, x) > 0.002, f"{what}: ReLU6 never clips"
    R.assert_equivalent(result, what)
    return result


@pytest.mark.parametrize("name, size", [("rexnet_100", R.ODD), ("rexnetr_130", R.EVEN)])
def test_timm_rexnet_logits_match(name, size):
    from conftest import register_torchvision_ops

    register_torchvision_ops()
    import timm

    m = timm.create_model(name)
    flax_model = ReXNet(width={"rexnet_100": 1.0, "rexnetr_130": 1.3}[name])
    stages = [m.features[i] for i in last_block_indices(flax_model)]
    expect = dict(format="timm_rexnet", family="rexnet", model_name=name, **TORCH_BN)
    _check(m, stages, size, expect, f"timm {name} at {size}px")


def _clovaai_stages(m, flax_model):
    """clovaai `features`: stem conv, BN, act, then block g at features[3 + g]."""
    return [m.features[3 + i] for i in last_block_indices(flax_model)]


@pytest.mark.parametrize("width, size", [(0.9, R.ODD), (1.3, R.EVEN)])
def test_seed003_rexnetv1_logits_match(width, size):
    from seed003_rexnetv1 import ReXNetV1

    m = ReXNetV1(width_mult=width)
    expect = dict(
        format="seed003",
        family="rexnet",
        model_name={0.9: None, 1.3: "rexnet_130"}[width],
        **TORCH_BN,
    )
    _check(
        m,
        _clovaai_stages(m, ReXNet(width=width)),
        size,
        expect,
        f"seed003 ReXNetV1 {width} at {size}px",
    )


@pytest.mark.parametrize("width, size", [(1.0, R.ODD), (1.5, R.EVEN)])
def test_seed003_rexnet_lite_logits_match(width, size):
    from seed003_rexnetv1_lite import ReXNetV1_lite

    m = ReXNetV1_lite(multiplier=width, classes=10)
    name = {1.0: "rexnet_lite_100", 1.5: "rexnet_lite_150"}[width]
    expect = dict(
        format="seed003_lite", family="rexnet_lite", model_name=name, num_classes=10, **TORCH_BN
    )
    _check(
        m,
        _clovaai_stages(m, ReXNetLite(width=width)),
        size,
        expect,
        f"seed003 ReXNetV1_lite {width} at {size}px",
    )
