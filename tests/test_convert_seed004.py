"""Seed 004's PyTorch EfficientNet -> Flax, against a reference module with the seed's structure
and key names (tests/convert_refs.py). Its SamePaddingConv2d freezes TF SAME padding for the
input shape it was built with: built for, and run at, 64 px (even at every stride-2 conv)."""

import pytest

import convert_refs as R


@pytest.mark.parametrize("variant", R.VARIANTS)
def test_seed004_logits_match(variant):
    m = R.Seed004EfficientNet(variant, in_spatial_shape=R.EVEN)
    expect = dict(format="seed004", variant=variant, padding="same", bn_epsilon=1e-3, bn_momentum=0.99)
    result = R.check_conversion(m, list(m.stages), R.image(R.EVEN), expect)
    R.assert_equivalent(result, f"seed004 {variant}")
