"""torchvision efficientnet_b0..b7 -> Flax: logits and every stage match the real torchvision code."""

import functools

import pytest

import convert_refs as R


@functools.lru_cache(maxsize=1)
def _torchvision_model(variant):
    from conftest import register_torchvision_ops

    register_torchvision_ops()
    import torchvision

    return getattr(torchvision.models, f"efficientnet_{variant}")()


@pytest.mark.parametrize("size", [R.ODD, R.EVEN])
@pytest.mark.parametrize("variant", R.VARIANTS)
def test_torchvision_logits_match(variant, size):
    m = _torchvision_model(variant)
    # torchvision's b5-b7 use BatchNorm2d(eps=1e-3, momentum=0.01); b0-b4 the defaults.
    eps = 1e-3 if variant in ("b5", "b6", "b7") else 1e-5
    expect = dict(format="torchvision", variant=variant, padding="symmetric", bn_epsilon=eps, num_classes=1000)
    result = R.check_conversion(m, list(m.features[1:8]), R.image(size), expect)
    assert result["info"].bn_momentum == (0.99 if eps == 1e-3 else 0.9)
    R.assert_equivalent(result, f"torchvision {variant} at {size}px")
