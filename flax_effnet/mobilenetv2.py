"""MobileNetV2 as a Flax linen module, widths 0.35-1.4 and timm's depth-scaled 110d/120d.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (2018,
arXiv:1801.04381); seed document 002. The channel and depth rules are torchvision's
`mobilenet_v2` and timm's `_gen_mobilenet_v2` (one function, equal tensors), plus seed 002's
head rule. The param tree is EfficientNet's without squeeze-excite:

    stem/{conv,bn}
    blocks_{stage}_{index}/{conv_exp,bn_exp,conv_dw,bn_dw,conv_pwl,bn_pwl}
    head/{conv,bn}
    classifier

`tests/golden/mobilenetv2_100_params.json` freezes it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_effnet.blocks import ConvBN, MBConv, block_name, classifier, network_ops, run_backbone
from flax_effnet.layers import DepthwiseImpl, Padding
from flax_effnet.preprocessing import Preprocessing
from flax_effnet.registry import Family, ModelEntry, register_family, register_model
from flax_effnet.specs import BlockSpec, NetworkSpec, make_divisible, round_repeats

Dtype = Any


@dataclasses.dataclass(frozen=True)
class InvertedResidualStage:
    """One row (t, c, n, s) of the paper's table 2."""

    expand_ratio: int
    out_channels: int
    repeats: int
    stride: int


# Paper table 2 (= torchvision `inverted_residual_setting`, timm's arch strings).
BASE_STAGES: tuple[InvertedResidualStage, ...] = (
    InvertedResidualStage(1, 16, 1, 1),
    InvertedResidualStage(6, 24, 2, 2),
    InvertedResidualStage(6, 32, 3, 2),
    InvertedResidualStage(6, 64, 4, 2),
    InvertedResidualStage(6, 96, 3, 1),
    InvertedResidualStage(6, 160, 3, 2),
    InvertedResidualStage(6, 320, 1, 1),
)
BASE_STEM_CHANNELS = 32
BASE_HEAD_CHANNELS = 1280
KERNEL_SIZE = 3


def mobilenetv2_network(
    width: float = 1.0,
    depth: float = 1.0,
    *,
    fix_stem_head: bool = False,
    scale_head: bool = False,
    drop_path_rate: float = 0.0,
) -> NetworkSpec:
    """The block list of a MobileNetV2.

    Channels are `make_divisible(c * width, 8)` (torchvision `_make_divisible`, timm
    `round_channels`). The head keeps at least 1280 channels (`1280 * max(1, width)`:
    torchvision, timm) unless `scale_head`, seed 002's `1280 * width` (at width 0.5: 640
    instead of 1280). Depth scales a stage's repeats by `ceil` (timm `_scale_stage_depth`);
    `fix_stem_head` (timm's 110d/120d) keeps the stem at 32, the head at 1280 and the first
    and last stages unscaled. Stochastic depth grows linearly with the global block index,
    `drop_path_rate * i / num_blocks` (timm's builder).
    """
    ch = lambda c: make_divisible(c * width)  # noqa: E731 - the one channel rule
    last = len(BASE_STAGES) - 1
    repeats = [
        s.repeats if fix_stem_head and i in (0, last) else round_repeats(s.repeats, depth)
        for i, s in enumerate(BASE_STAGES)
    ]
    stem = BASE_STEM_CHANNELS if fix_stem_head else ch(BASE_STEM_CHANNELS)
    if fix_stem_head:
        head = BASE_HEAD_CHANNELS
    else:
        head = (
            ch(BASE_HEAD_CHANNELS)
            if scale_head
            else make_divisible(BASE_HEAD_CHANNELS * max(1.0, width))
        )
    num_blocks = sum(repeats)
    blocks, in_ch = [], stem
    for stage_idx, (stage, n) in enumerate(zip(BASE_STAGES, repeats)):
        out_ch = ch(stage.out_channels)
        for i in range(n):
            blocks.append(
                BlockSpec(
                    stage=stage_idx,
                    index=i,
                    kernel_size=KERNEL_SIZE,
                    stride=stage.stride if i == 0 else 1,
                    in_channels=in_ch,
                    expanded_channels=in_ch * stage.expand_ratio,
                    out_channels=out_ch,
                    se_channels=0,
                    drop_path_rate=drop_path_rate * len(blocks) / num_blocks,
                )
            )
            in_ch = out_ch
    return NetworkSpec(stem_channels=stem, blocks=tuple(blocks), head_channels=head)


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier or backbone.

    Attributes:
      width: width multiplier (alpha): 0.35, 0.5, 0.75, 1.0, 1.4, or any other.
      depth: depth multiplier of the stages' repeats (timm's 110d: 1.2, 120d: 1.4).
      fix_stem_head: keep stem 32, head 1280 and the first and last stages' depth (timm's
        `fix_stem_head`, used by 110d/120d).
      scale_head: head width `1280 * width` even below width 1 (seed 002's code); torchvision
        and timm keep at least 1280.
      num_classes: classifier outputs; 0 or None returns the pooled features instead.
      padding: 'symmetric' (PyTorch `(k-1)//2`, what every MobileNetV2 checkpoint was trained
        with) or 'same' (TF SAME).
      bn_epsilon, bn_momentum: torch's defaults (eps 1e-5, momentum 0.1 = Flax 0.9).
      dropout_rate: head dropout (torchvision and seed 002: 0.2).
      drop_path_rate: stochastic depth at the last block (timm's `drop_path_rate`; 0 in
        torchvision and the seed).
      depthwise_impl, dtype, param_dtype: as in `EfficientNet`.
    """

    width: float = 1.0
    depth: float = 1.0
    fix_stem_head: bool = False
    scale_head: bool = False
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
    def network(self) -> NetworkSpec:
        return mobilenetv2_network(
            self.width,
            self.depth,
            fix_stem_head=self.fix_stem_head,
            scale_head=self.scale_head,
            drop_path_rate=self.drop_path_rate,
        )

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, return_stages: bool = False
    ) -> jax.Array | tuple[jax.Array, ...]:
        """Run the network on normalised NHWC images.

        Args:
          x: (N, H, W, 3) images; any H and W.
          train: batch statistics for BatchNorm (pass `mutable=['batch_stats']`), head dropout
            (RNG 'dropout') and stochastic depth (RNG 'drop_path', when drop_path_rate > 0).
          return_stages: the outputs of the 7 stages instead of logits (strides 2, 4, 8, 16,
            16, 32, 32, as EfficientNet's `stage_strides()`).

        Returns:
          float32 logits (N, num_classes), pooled float32 features (N, head channels) when
          num_classes is 0/None, or the tuple of stage outputs.
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
            net.stem_channels, 3, 2, self.padding, ops.stem_conv, ops.norm, "relu6", name="stem"
        )
        blocks = [
            (spec, functools.partial(
                MBConv(spec, self.padding, ops, "relu6", name=block_name(spec)),
                train=train))
            for spec in net.blocks
        ]
        x = run_backbone(self, stem, blocks, x, train=train, return_stages=return_stages,
                         depthwise_impl=self.depthwise_impl)
        if return_stages:
            return x
        x = ConvBN(
            net.head_channels, 1, 1, self.padding, ops.pointwise, ops.norm, "relu6", name="head"
        )(x)
        x = ops.pool(x)
        if not self.num_classes:
            return x
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return classifier(self.num_classes, self.param_dtype)(x)


FAMILY = register_family(
    Family(
        "mobilenetv2",
        MobileNetV2,
        (
            "width", "depth", "fix_stem_head", "scale_head", "num_classes", "padding",
            "bn_epsilon", "bn_momentum", "dropout_rate", "drop_path_rate",
        ),
    )
)  # fmt: skip

# timm 1.0.31 names (`efficientnet.py`); their pretrained cfgs are all timm's default: 224 px,
# crop_pct 0.875, bicubic, ImageNet mean/std (`mobilenetv2_100.ra_in1k`, `_050.lamb_in1k`, ...).
_TIMM_MODELS = {
    "mobilenetv2_035": dict(width=0.35),
    "mobilenetv2_050": dict(width=0.5),
    "mobilenetv2_075": dict(width=0.75),
    "mobilenetv2_100": dict(width=1.0),
    "mobilenetv2_140": dict(width=1.4),
    "mobilenetv2_110d": dict(width=1.1, depth=1.2, fix_stem_head=True),
    "mobilenetv2_120d": dict(width=1.2, depth=1.4, fix_stem_head=True),
}
for _name, _fields in _TIMM_MODELS.items():
    register_model(ModelEntry(_name, "mobilenetv2", _fields, Preprocessing(224, 0.875, "bicubic")))
