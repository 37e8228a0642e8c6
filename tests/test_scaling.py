"""The base table and compound scaling reproduce the reference architecture."""

import math

import pytest

from flax_effnet import VARIANTS, VariantSpec, make_divisible, scale_network, stage_strides
from flax_effnet.specs import BASE_STAGES, resolve_variant, round_repeats


@pytest.mark.parametrize(
    "value, expected",
    [(32, 32), (35.2, 32), (32 * 1.1, 32), (16 * 1.1, 16), (40 * 1.4, 56), (1280 * 1.1, 1408),
     (1280 * 1.8, 2304), (1280 * 3.1, 3968), (4, 8), (11.9, 16), (35, 32), (18, 24)],
)
def test_make_divisible(value, expected):
    assert make_divisible(value) == expected


def test_make_divisible_never_rounds_down_more_than_ten_percent():
    for tenths in range(10, 5000):
        v = tenths / 10
        r = make_divisible(v)
        assert r % 8 == 0 and r >= 0.9 * v and r >= 8


def test_round_repeats_rounds_up():
    assert [round_repeats(s.repeats, 1.1) for s in BASE_STAGES] == [2, 3, 3, 4, 4, 5, 2]
    assert [round_repeats(s.repeats, 3.1) for s in BASE_STAGES] == [4, 7, 7, 10, 10, 13, 4]


def stage_repeats(net):
    return [sum(1 for b in net.blocks if b.stage == s) for s in range(7)]


# (stem, head, repeats per stage, last stage width) from timm / torchvision's builders.
EXPECTED = {
    "b0": (32, 1280, [1, 2, 2, 3, 3, 4, 1], 320),
    "b1": (32, 1280, [2, 3, 3, 4, 4, 5, 2], 320),
    "b2": (32, 1408, [2, 3, 3, 4, 4, 5, 2], 352),
    "b3": (40, 1536, [2, 3, 3, 5, 5, 6, 2], 384),
    "b4": (48, 1792, [2, 4, 4, 6, 6, 8, 2], 448),
    "b5": (48, 2048, [3, 5, 5, 7, 7, 9, 3], 512),
    "b6": (56, 2304, [3, 6, 6, 8, 8, 11, 3], 576),
    "b7": (64, 2560, [4, 7, 7, 10, 10, 13, 4], 640),
}


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_scaled_network_matches_reference(variant):
    stem, head, repeats, last = EXPECTED[variant]
    net = scale_network(variant)
    assert (net.stem_channels, net.head_channels, stage_repeats(net)) == (stem, head, repeats)
    assert net.blocks[-1].out_channels == last


def test_block_rules_b0():
    net = scale_network("b0")
    assert len(net.blocks) == 16
    for prev, b in zip((None,) + net.blocks, net.blocks):
        first = prev is None or prev.stage != b.stage
        assert b.stride == (BASE_STAGES[b.stage].stride if first else 1)
        assert b.in_channels == (net.stem_channels if prev is None else prev.out_channels)
        assert b.se_channels == max(1, int(b.in_channels * 0.25))  # from the block *input*
        assert b.expanded_channels == b.in_channels * BASE_STAGES[b.stage].expand_ratio
        assert b.has_residual == (b.stride == 1 and b.in_channels == b.out_channels)
    # stage 0 of b0 has one block, 32 -> 16, so no residual; its SE is 8 wide
    assert (net.blocks[0].se_channels, net.blocks[0].has_residual) == (8, False)
    assert net.blocks[2].has_residual and not net.blocks[1].has_residual


def test_drop_path_rate_rises_linearly_over_global_index():
    net = scale_network("b3", drop_path_rate=0.3)
    n = len(net.blocks)
    assert [b.drop_path_rate for b in net.blocks] == pytest.approx([0.3 * i / n for i in range(n)])


def test_variant_table():
    assert {k: (v.width, v.depth, v.resolution, v.dropout) for k, v in VARIANTS.items()} == {
        "b0": (1.0, 1.0, 224, 0.2), "b1": (1.0, 1.1, 240, 0.2), "b2": (1.1, 1.2, 260, 0.3),
        "b3": (1.2, 1.4, 300, 0.3), "b4": (1.4, 1.8, 380, 0.4), "b5": (1.6, 2.2, 456, 0.4),
        "b6": (1.8, 2.6, 528, 0.5), "b7": (2.0, 3.1, 600, 0.5), "b8": (2.2, 3.6, 672, 0.5),
        "l2": (4.3, 5.3, 800, 0.5),
    }


def test_resolve_variant():
    assert resolve_variant("efficientnet-b4") is VARIANTS["b4"]
    assert resolve_variant("B2") is VARIANTS["b2"]
    custom = VariantSpec("tiny", 0.25, 0.25, 32, 0.1)
    assert resolve_variant(custom) is custom
    with pytest.raises(ValueError, match="unknown EfficientNet variant 'b9'"):
        resolve_variant("b9")


def test_stage_strides():
    assert stage_strides() == (2, 4, 8, 16, 16, 32, 32)
    assert math.prod(s.stride for s in BASE_STAGES) * 2 == 32
