"""Architecture specs: the B0 base table and the pure compound-scaling function.

EfficientNet (Tan & Le, 2019, arXiv:1905.11946) builds every variant from one baseline
(B0) by scaling width, depth and resolution. This module writes B0's seven stages once
and turns a variant's multipliers into the concrete block list with the exact rules that
the reference implementations use (TF `efficientnet_builder.round_filters/round_repeats`,
timm `round_channels` and `_scale_stage_depth`), so parameter counts match them exactly.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage of the B0 baseline (paper table 1)."""

    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int
    repeats: int


# B0: (kernel, stride, expansion, in, out, repeats) for stages 1-7 of the paper's table 1.
BASE_STAGES: tuple[StageSpec, ...] = (
    StageSpec(3, 1, 1, 32, 16, 1),
    StageSpec(3, 2, 6, 16, 24, 2),
    StageSpec(5, 2, 6, 24, 40, 2),
    StageSpec(3, 2, 6, 40, 80, 3),
    StageSpec(5, 1, 6, 80, 112, 3),
    StageSpec(5, 2, 6, 112, 192, 4),
    StageSpec(3, 1, 6, 192, 320, 1),
)
BASE_STEM_CHANNELS = 32
BASE_HEAD_CHANNELS = 1280
SE_RATIO = 0.25


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """Compound-scaling multipliers of one variant (paper section 3.3; TF `efficientnet_params`)."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS: dict[str, VariantSpec] = {
    v.name: v
    for v in (
        VariantSpec("b0", 1.0, 1.0, 224, 0.2),
        VariantSpec("b1", 1.0, 1.1, 240, 0.2),
        VariantSpec("b2", 1.1, 1.2, 260, 0.3),
        VariantSpec("b3", 1.2, 1.4, 300, 0.3),
        VariantSpec("b4", 1.4, 1.8, 380, 0.4),
        VariantSpec("b5", 1.6, 2.2, 456, 0.4),
        VariantSpec("b6", 1.8, 2.6, 528, 0.5),
        VariantSpec("b7", 2.0, 3.1, 600, 0.5),
        VariantSpec("b8", 2.2, 3.6, 672, 0.5),
        VariantSpec("l2", 4.3, 5.3, 800, 0.5),
    )
}


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MBConv block after scaling; everything a block needs to build itself."""

    stage: int
    index: int  # position inside its stage
    kernel_size: int
    stride: int
    in_channels: int
    expanded_channels: int
    out_channels: int
    se_channels: int
    drop_path_rate: float

    @property
    def has_residual(self) -> bool:
        """Identity shortcut only where shapes allow it (MobileNetV2's rule)."""
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The scaled network: stem width, blocks, head width."""

    stem_channels: int
    blocks: tuple[BlockSpec, ...]
    head_channels: int

    @property
    def num_stages(self) -> int:
        return self.blocks[-1].stage + 1


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never dropping below 90 % of `value`.

    The 90 % rule is TF's `round_filters`: rounding to the nearest multiple may go down,
    but not by more than 10 %.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's depth; TF and timm round up."""
    return int(math.ceil(repeats * depth))


def resolve_variant(variant: str | VariantSpec) -> VariantSpec:
    """Look a variant up by name ('b0'..'b7', 'b8', 'l2'), or pass a spec through."""
    if isinstance(variant, VariantSpec):
        return variant
    key = variant.lower().removeprefix("efficientnet-").removeprefix("efficientnet_")
    if key not in VARIANTS:
        raise ValueError(f"unknown EfficientNet variant {variant!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[key]


def scale_network(variant: str | VariantSpec, drop_path_rate: float = 0.2) -> NetworkSpec:
    """Turn a variant into its concrete block list.

    Stride sits on a stage's first block only; later blocks take the stage's output width
    as input. The stochastic-depth rate grows linearly with the global block index,
    `drop_path_rate * i / num_blocks` (timm `_gen_efficientnet`, TF `survival_prob`).
    The SE width is a quarter of the block's *input* channels, not of the expanded width.
    """
    spec = resolve_variant(variant)
    width = lambda c: make_divisible(c * spec.width)  # noqa: E731 - one-line rule, used 4 times
    repeats = [round_repeats(s.repeats, spec.depth) for s in BASE_STAGES]
    num_blocks = sum(repeats)
    blocks = []
    for stage_idx, (stage, n) in enumerate(zip(BASE_STAGES, repeats)):
        out_ch = width(stage.out_channels)
        for i in range(n):
            in_ch = width(stage.in_channels) if i == 0 else out_ch
            blocks.append(
                BlockSpec(
                    stage=stage_idx,
                    index=i,
                    kernel_size=stage.kernel_size,
                    stride=stage.stride if i == 0 else 1,
                    in_channels=in_ch,
                    expanded_channels=in_ch * stage.expand_ratio,
                    out_channels=out_ch,
                    se_channels=max(1, int(in_ch * SE_RATIO)),
                    drop_path_rate=drop_path_rate * len(blocks) / num_blocks,
                )
            )
    return NetworkSpec(
        stem_channels=width(BASE_STEM_CHANNELS),
        blocks=tuple(blocks),
        head_channels=width(BASE_HEAD_CHANNELS),
    )


def stage_strides() -> tuple[int, ...]:
    """Output stride (input size / feature size) of each of the seven stages."""
    total, out = 2, []  # the stem halves the input
    for stage in BASE_STAGES:
        total *= stage.stride
        out.append(total)
    return tuple(out)
