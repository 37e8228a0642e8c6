"""MobileNetV1 as a Flax linen module, with the width multiplier; timm's mobilenetv1_100/100h/125.

Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications" (2017, arXiv:1704.04861); seed document 002 (prose only). A 3x3/2 stem conv and
13 depthwise-separable blocks (3x3 depthwise + BN + act, 1x1 pointwise + BN + act), no
shortcuts; channels and rounding as timm's `_gen_mobilenet_v1` (ReLU6, `round_channels`).
The paper's table lists the second-last depthwise conv with stride 2: a typo that every
implementation reads as stride 2 then stride 1, as here. Param tree:

    stem/{conv,bn}
    blocks_{stage}_{index}/{conv_dw,bn_dw,conv_pw,bn_pw}
    head/{conv,bn}          (only with head_conv: timm's mobilenetv1_100h)
    classifier

`tests/golden/mobilenetv1_100_params.json` freezes it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_effnet.blocks import ConvBN, Ops, block_name, classifier, network_ops, run_backbone
from flax_effnet.layers import DepthwiseImpl, Padding
from flax_effnet.preprocessing import INCEPTION_MEAN, INCEPTION_STD, Preprocessing
from flax_effnet.registry import Family, ModelEntry, register_family, register_model
from flax_effnet.specs import make_divisible

Dtype = Any


@dataclasses.dataclass(frozen=True)
class SeparableStage:
    """Stage of depthwise-separable blocks: output width, repeats, first block's stride."""

    out_channels: int
    repeats: int
    stride: int


# The paper's table 1 grouped by output width (= timm's `dsa_r1_k3_s1_c64`, `dsa_r2_k3_s2_c128`, ...).
BASE_STAGES: tuple[SeparableStage, ...] = (
    SeparableStage(64, 1, 1),
    SeparableStage(128, 2, 2),
    SeparableStage(256, 2, 2),
    SeparableStage(512, 6, 2),
    SeparableStage(1024, 2, 2),
)
BASE_STEM_CHANNELS = 32
BASE_HEAD_CHANNELS = 1024


@dataclasses.dataclass(frozen=True)
class SeparableSpec:
    """One depthwise-separable block after scaling."""

    stage: int
    index: int
    stride: int
    in_channels: int
    out_channels: int


@dataclasses.dataclass(frozen=True)
class MobileNetV1Network:
    stem_channels: int
    blocks: tuple[SeparableSpec, ...]
    head_channels: int  # 0: no head conv, the classifier reads the last block


def mobilenetv1_network(width: float = 1.0, *, head_conv: bool = False) -> MobileNetV1Network:
    """Channels `make_divisible(c * width, 8)`; a head conv of `max(1024, 1024 * width)` when
    `head_conv` (timm `_gen_mobilenet_v1`)."""
    ch = lambda c: make_divisible(c * width)  # noqa: E731 - the one channel rule
    stem = ch(BASE_STEM_CHANNELS)
    blocks, in_ch = [], stem
    for stage_idx, stage in enumerate(BASE_STAGES):
        out_ch = ch(stage.out_channels)
        for i in range(stage.repeats):
            blocks.append(SeparableSpec(stage_idx, i, stage.stride if i == 0 else 1, in_ch, out_ch))
            in_ch = out_ch
    head = max(BASE_HEAD_CHANNELS, ch(BASE_HEAD_CHANNELS)) if head_conv else 0
    return MobileNetV1Network(stem, tuple(blocks), head)


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv + BN + act, then 1x1 pointwise conv + BN + act (paper figure 3)."""

    spec: SeparableSpec
    padding: Padding
    ops: Ops
    act: str = "relu6"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s, ops = self.spec, self.ops
        x = ops.depthwise(3, s.stride, self.padding, name="conv_dw")(x)
        x = ops.norm(act=self.act, name="bn_dw")(x)
        x = ops.pointwise(s.out_channels, (1, 1), name="conv_pw")(x)
        return ops.norm(act=self.act, name="bn_pw")(x)


class MobileNetV1(nn.Module):
    """MobileNetV1 classifier or backbone.

    Attributes:
      width: width multiplier (alpha: 1, 0.75, 0.5, 0.25 in the paper; timm's 1.25). The
        paper's resolution multiplier is the input size.
      head_conv: a 1x1 conv + BN + ReLU6 of `max(1024, 1024 * width)` channels before the
        pooling (timm's mobilenetv1_100h).
      num_classes: classifier outputs; 0 or None returns the pooled features instead.
      padding: 'symmetric' (PyTorch) or 'same' (TF SAME).
      bn_epsilon, bn_momentum: torch's defaults (eps 1e-5, momentum 0.1 = Flax 0.9).
      dropout_rate: head dropout.
      depthwise_impl, dtype, param_dtype: as in `EfficientNet`.
    """

    width: float = 1.0
    head_conv: bool = False
    num_classes: int | None = 1000
    padding: Padding = "symmetric"
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9
    dropout_rate: float = 0.2
    depthwise_impl: DepthwiseImpl = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def network(self) -> MobileNetV1Network:
        return mobilenetv1_network(self.width, head_conv=self.head_conv)

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, return_stages: bool = False
    ) -> jax.Array | tuple[jax.Array, ...]:
        """Run the network on normalised NHWC images.

        Args:
          x: (N, H, W, 3) images; any H and W.
          train: batch statistics for BatchNorm (pass `mutable=['batch_stats']`) and head
            dropout (RNG 'dropout'). There are no shortcuts, so no stochastic depth.
          return_stages: the outputs of the 5 stages instead of logits (strides 2, 4, 8, 16, 32).

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
            net.stem_channels, 3, 2, self.padding, ops.stem_conv, ops.norm, "relu6", name="stem"
        )
        blocks = [
            (spec, DepthwiseSeparable(spec, self.padding, ops, name=block_name(spec)))
            for spec in net.blocks
        ]
        x = run_backbone(self, stem, blocks, x, train=train, return_stages=return_stages,
                         depthwise_impl=self.depthwise_impl)
        if return_stages:
            return x
        if net.head_channels:
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
        "mobilenetv1",
        MobileNetV1,
        (
            "width",
            "head_conv",
            "num_classes",
            "padding",
            "bn_epsilon",
            "bn_momentum",
            "dropout_rate",
        ),
    )
)

# timm 1.0.31 `efficientnet.py`: the `ra4_e3600_r224_in1k` weights, trained with mean = std =
# 0.5 (IMAGENET_INCEPTION_*), bicubic; crop_pct 0.875 (0.9 for _125).
_INCEPTION = dict(mean=INCEPTION_MEAN, std=INCEPTION_STD)
for _name, _fields, _crop in (
    ("mobilenetv1_100", dict(width=1.0), 0.875),
    ("mobilenetv1_100h", dict(width=1.0, head_conv=True), 0.875),
    ("mobilenetv1_125", dict(width=1.25), 0.9),
):
    register_model(
        ModelEntry(
            _name, "mobilenetv1", _fields, Preprocessing(224, _crop, "bicubic", **_INCEPTION)
        )
    )
