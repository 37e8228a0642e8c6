"""ReXNetV1 as a Flax linen module: widths 0.9-3.0 (clovaai, seed 003, timm `rexnet_*`) and
timm's channel-rounded `rexnetr_*`.

Han et al., "Rethinking Channel Dimensions for Efficient Model Design" (CVPR 2021,
arXiv:2007.00992); seed document 003 (= clovaai/rexnet `rexnetv1.py`); timm `rexnet.py`.
Channels grow linearly per block, not per stage; every expanding block has a *partial*
shortcut (`out[..., :in] += x`); SiLU after the stem, expansion and head convs, ReLU6 after
the depthwise conv (after the SE where there is one); the SE has a BatchNorm. Param tree:

    stem/{conv,bn}
    blocks_{stage}_{index}/{conv_exp,bn_exp,conv_dw,bn_dw,se/{reduce,bn,expand},conv_pwl,bn_pwl}
    head/{conv,bn}
    classifier

`tests/golden/rexnet_100_params.json` freezes it. ReXNet-lite (`rexnet_lite.py`) shares the
block and the schedule.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_effnet.blocks import ConvBN, Ops, block_name, classifier, network_ops, run_backbone
from flax_effnet.layers import (
    ACTIVATIONS,
    Activation,
    DepthwiseImpl,
    DropPath,
    Padding,
)
from flax_effnet.preprocessing import Preprocessing
from flax_effnet.registry import Family, ModelEntry, register_family, register_model
from flax_effnet.specs import make_divisible, round_repeats

Dtype = Any

# Blocks per stage and each stage's first stride (clovaai `layers`, `strides`).
STAGE_REPEATS = (1, 2, 2, 3, 3, 5)
STAGE_STRIDES = (1, 2, 2, 2, 1, 2)
SE_STAGES = (2, 3, 4, 5)  # clovaai `use_ses = [False, False, True, True, True, True]`
SE_RATIO = 1 / 12
EXPAND_RATIO = 6  # every block but the first (t = 1)


@dataclasses.dataclass(frozen=True)
class LinearBottleneckSpec:
    """One ReXNet block after scaling.

    `expanded_channels == in_channels` means no expansion conv; `se_channels == 0` no SE.
    """

    stage: int
    index: int
    stride: int
    in_channels: int
    expanded_channels: int
    out_channels: int
    se_channels: int
    drop_path_rate: float

    @property
    def has_shortcut(self) -> bool:
        """ReXNet's rule: stride 1 and the block does not narrow (`in <= out`); the shortcut
        adds to the first `in_channels` outputs."""
        return self.stride == 1 and self.in_channels <= self.out_channels


@dataclasses.dataclass(frozen=True)
class ReXNetNetwork:
    stem_channels: int
    blocks: tuple[LinearBottleneckSpec, ...]
    head_channels: int


def stage_repeats(depth: float) -> tuple[int, ...]:
    """Blocks per stage: `ceil(repeats * depth)` (clovaai and timm `depth_mult`)."""
    return tuple(round_repeats(r, depth) for r in STAGE_REPEATS)


def linear_widths(
    width: float, final_channels: float, num_blocks: int, steps: int, round_fn
) -> list[int]:
    """Output widths of the blocks: 16 channels (16 / width below width 1, so that the first
    block keeps 16) plus `final_channels / steps` per block, scaled by `width` and rounded by
    `round_fn`. The running sum is accumulated as the references do, so .5 ties round the
    same way."""
    base = 16 / width if width < 1.0 else 16
    out = []
    for _ in range(num_blocks):
        out.append(round_fn(base * width))
        base += final_channels / steps
    return out


def stage_blocks(
    stem: int, repeats: tuple[int, ...], outs: list[int], se_channels, drop_path_rate: float
):
    """Stage/index, strides, expansion and SE of each block, from the block output widths.
    `se_channels(dw_channels)` gives the SE width of an SE block."""
    blocks, in_ch, n = [], stem, len(outs)
    for stage, stage_len in enumerate(repeats):
        for i in range(stage_len):
            k = len(blocks)
            # timm: make_divisible(round(in * 6), ch_div); `in` is already a multiple of ch_div.
            dw = in_ch if stage == 0 else in_ch * EXPAND_RATIO
            blocks.append(
                LinearBottleneckSpec(
                    stage=stage,
                    index=i,
                    stride=STAGE_STRIDES[stage] if i == 0 else 1,
                    in_channels=in_ch,
                    expanded_channels=dw,
                    out_channels=outs[k],
                    se_channels=se_channels(dw) if stage in SE_STAGES else 0,
                    # timm: linear in the block index, reaching the rate at the last block.
                    drop_path_rate=drop_path_rate * k / max(n - 1, 1),
                )
            )
            in_ch = outs[k]
    return tuple(blocks)


def rexnet_network(
    width: float = 1.0, depth: float = 1.0, ch_div: int = 1, drop_path_rate: float = 0.0
) -> ReXNetNetwork:
    """ReXNetV1's widths (timm `_block_cfg`/`_build_blocks`; equal to clovaai's for ch_div 1).

    Every width is `make_divisible(round(x), ch_div)`: the plain `int(round(x))` of clovaai
    for ch_div 1, multiples of 8 (16 for 3.0) for timm's `rexnetr_*`. The stem is 32 (also
    below width 1), the blocks grow by 180/num_blocks per block from 16, the SE reduces the
    expanded width by 12, the head is `1280 * width`.
    """
    rnd = lambda x: make_divisible(round(x), ch_div)  # noqa: E731 - the one rounding rule
    stem = rnd((32 / width if width < 1.0 else 32) * width)
    repeats = stage_repeats(depth)
    outs = linear_widths(width, 180, sum(repeats), sum(repeats), rnd)
    se = lambda dw: make_divisible(int(dw * SE_RATIO), ch_div)  # noqa: E731 - timm's, = clovaai's dw // 12
    blocks = stage_blocks(stem, repeats, outs, se, drop_path_rate)
    return ReXNetNetwork(stem, blocks, make_divisible(1280 * width, ch_div))


class LinearBottleneck(nn.Module):
    """ReXNet's block: [1x1 expand + BN + `exp_act`] -> 3x3 depthwise + BN -> [SE] ->
    `dw_act` -> 1x1 projection + BN, plus the partial shortcut `out[..., :in] += x` (through
    stochastic depth, as timm applies it) when stride is 1 and in <= out.

    ReXNetV1: exp_act SiLU, dw_act ReLU6 (after the SE). ReXNet-lite: ReLU6 both, no SE.
    """

    spec: LinearBottleneckSpec
    padding: Padding
    ops: Ops
    exp_act: Activation
    dw_act: Activation = "relu6"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        s, ops = self.spec, self.ops
        shortcut = x
        if s.expanded_channels != s.in_channels:
            x = ops.pointwise(s.expanded_channels, (1, 1), name="conv_exp")(x)
            x = ops.norm(act=self.exp_act, name="bn_exp")(x)
        x = ops.depthwise(3, s.stride, self.padding, name="conv_dw")(x)
        if s.se_channels:
            x = ops.norm(name="bn_dw")(x)
            x = ops.se(s.se_channels, act="relu", norm=ops.norm, name="se")(x)
            x = ACTIVATIONS[self.dw_act](x)
        else:  # BN and activation fused
            x = ops.norm(act=self.dw_act, name="bn_dw")(x)
        x = ops.pointwise(s.out_channels, (1, 1), name="conv_pwl")(x)
        x = ops.norm(name="bn_pwl")(x)
        if s.has_shortcut:
            x = DropPath(s.drop_path_rate, name="drop_path")(x, deterministic=not train)
            c = s.in_channels
            x = jnp.concatenate([x[..., :c] + shortcut, x[..., c:]], axis=-1)
        return x


class ReXNet(nn.Module):
    """ReXNetV1 classifier or backbone.

    Attributes:
      width: width multiplier: 0.9, 1.0, 1.3, 1.5, 2.0, 3.0 (or any other).
      depth: depth multiplier of the stages' repeats (clovaai and timm `depth_mult`; every
        checkpoint has 1.0; seed 003's code ignores it).
      ch_div: channel divisor: 1 for ReXNet (clovaai, seed 003, timm `rexnet_*`), 8 (16 at
        width 3) for timm's rounded `rexnetr_*`.
      num_classes: classifier outputs; 0 or None returns the pooled features instead.
      padding: 'symmetric' (PyTorch) or 'same' (TF SAME).
      bn_epsilon, bn_momentum: torch's defaults (eps 1e-5, momentum 0.1 = Flax 0.9).
      dropout_rate: head dropout (0.2 in every reference).
      drop_path_rate: stochastic depth at the last block (timm's; clovaai has none).
      depthwise_impl, dtype, param_dtype: as in `EfficientNet`.
    """

    width: float = 1.0
    depth: float = 1.0
    ch_div: int = 1
    num_classes: int | None = 1000
    padding: Padding = "symmetric"
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9
    dropout_rate: float = 0.2
    drop_path_rate: float = 0.0
    depthwise_impl: DepthwiseImpl = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def network(self) -> ReXNetNetwork:
        return rexnet_network(self.width, self.depth, self.ch_div, self.drop_path_rate)

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, return_stages: bool = False
    ) -> jax.Array | tuple[jax.Array, ...]:
        """Run the network on normalised NHWC images.

        Args:
          x: (N, H, W, 3) images; any H and W.
          train: batch statistics for BatchNorm (pass `mutable=['batch_stats']`), head dropout
            (RNG 'dropout') and stochastic depth (RNG 'drop_path', when drop_path_rate > 0).
          return_stages: the outputs of the 6 stages instead of logits (strides 2, 4, 8, 16,
            16, 32).

        Returns:
          float32 logits (N, num_classes), pooled float32 features when num_classes is 0/None,
          or the tuple of stage outputs.
        """
        net = self.network
        ops = network_ops(
            train=train,
            depthwise_impl=self.depthwise_impl,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = x.astype(ops.dtype)
        stem = ConvBN(
            net.stem_channels, 3, 2, self.padding, ops.stem_conv, ops.norm, "silu", name="stem"
        )
        blocks = [
            (spec, functools.partial(
                LinearBottleneck(spec, self.padding, ops, "silu", name=block_name(spec)),
                train=train))
            for spec in net.blocks
        ]
        x = run_backbone(self, stem, blocks, x, train=train, return_stages=return_stages,
                         depthwise_impl=self.depthwise_impl)
        if return_stages:
            return x
        x = ConvBN(
            net.head_channels, 1, 1, self.padding, ops.pointwise, ops.norm, "silu", name="head"
        )(x)
        x = ops.pool(x)
        if not self.num_classes:
            return x
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return classifier(self.num_classes, self.param_dtype)(x)


FAMILY = register_family(
    Family(
        "rexnet",
        ReXNet,
        (
            "width",
            "depth",
            "ch_div",
            "num_classes",
            "padding",
            "bn_epsilon",
            "bn_momentum",
            "dropout_rate",
            "drop_path_rate",
        ),
    )
)

# timm 1.0.31 `rexnet.py`: rexnet_* (.nav_in1k, the clovaai weights) and rexnetr_* use timm's
# default cfg (224 px, crop_pct 0.875, bicubic, ImageNet mean/std) except the trained
# rexnetr_200/300 (.sw_in12k_ft_in1k: crop_pct 0.95).
for _w, _tag in ((1.0, "100"), (1.3, "130"), (1.5, "150"), (2.0, "200"), (3.0, "300")):
    register_model(
        ModelEntry(f"rexnet_{_tag}", "rexnet", dict(width=_w), Preprocessing(224, 0.875, "bicubic"))
    )
    register_model(ModelEntry(
        f"rexnetr_{_tag}", "rexnet", dict(width=_w, ch_div=16 if _w == 3.0 else 8),
        Preprocessing(224, 0.95 if _w >= 2.0 else 0.875, "bicubic"),
    ))  # fmt: skip
