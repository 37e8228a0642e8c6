"""Seed 000's PyTorch EfficientNet -> Flax, against a reference module with the seed's structure
and key names (tests/convert_refs.py), stride in the depthwise convs as in the standard model."""

import functools

import pytest

import convert_refs as R


@functools.lru_cache(maxsize=1)
def _model(variant, classifier_name="classifier"):
    return R.seed000(variant, classifier_name=classifier_name)


@pytest.mark.parametrize("size", [R.ODD, R.EVEN])
@pytest.mark.parametrize("variant", R.VARIANTS)
def test_seed000_logits_match(variant, size):
    m = _model(variant)
    expect = dict(format="seed000", variant=variant, padding="symmetric", bn_epsilon=1e-3, bn_momentum=0.9)
    result = R.check_conversion(m, m.stages(), R.image(size), expect)
    R.assert_equivalent(result, f"seed000 {variant} at {size}px")


def test_seed000_classifier_typo_is_accepted():
    """The seed assigns `self.clasifier`; a checkpoint of it has `clasifier.1.*`."""
    m = _model("b0", "clasifier")
    assert "clasifier.1.weight" in m.state_dict()
    result = R.check_conversion(m, m.stages(), R.image(R.EVEN), dict(format="seed000", variant="b0"))
    R.assert_equivalent(result, "seed000 b0 with clasifier")
