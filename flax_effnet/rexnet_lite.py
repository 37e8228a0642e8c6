"""ReXNet-lite (clovaai/rexnet `rexnetv1_lite.py`, seed document 003's `ReXNetV1_lite`),
widths 1.0-2.0, as a Flax linen module.

ReXNetV1's schedule and block (`rexnet.py`) without SE or SiLU: ReLU6 after the stem,
expansion, depthwise and head convs; widths rounded to multiples of 8; the blocks grow by
164/15 per block. The head differs: the pooled features go through a 1x1 conv to 1024
channels with BN and ReLU6 (written as a Dense layer on the pooled vector, `pre_logits`)
before dropout and the classifier. Param tree:

    stem/{conv,bn}
    blocks_{stage}_{index}/{conv_exp,bn_exp,conv_dw,bn_dw,conv_pwl,bn_pwl}
    head/{conv,bn}
    pre_logits/{dense,bn}
    classifier

timm has no ReXNet-lite: the names are our own (`rexnet_lite_100` ... `rexnet_lite_200`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_effnet.blocks import ConvBN, block_name, classifier, network_ops, run_backbone
from flax_effnet.layers import DepthwiseImpl, Padding, conv_init
from flax_effnet.preprocessing import Preprocessing
from flax_effnet.registry import Family, ModelEntry, register_family, register_model
from flax_effnet.rexnet import (
    STAGE_REPEATS,
    LinearBottleneck,
    ReXNetNetwork,
    linear_widths,
    stage_blocks,
)
from flax_effnet.specs import make_divisible

Dtype = Any
PRE_LOGITS_CHANNELS = 1024


def rexnet_lite_network(width: float = 1.0) -> ReXNetNetwork:
    """ReXNet-lite's widths (clovaai `ReXNetV1_lite`, `fix_head_stem=False`).

    Every width is `_make_divisible(int(round(x)), 8)`: the stem `32 * width` (32 below width 1),
    blocks from 16 growing by 164/15 per block, the head `1280 * width` above width 1, else 1280.
    """
    rnd = lambda x: make_divisible(int(round(x)), 8)  # noqa: E731 - the one rounding rule
    stem = rnd((32 / width if width < 1.0 else 32) * width)
    n = sum(STAGE_REPEATS)
    outs = linear_widths(width, 164, n, n - 1, rnd)
    blocks = stage_blocks(stem, STAGE_REPEATS, outs, lambda dw: 0, 0.0)
    return ReXNetNetwork(stem, blocks, int(1280 * width) if width > 1 else 1280)


class ReXNetLite(nn.Module):
    """ReXNet-lite classifier or backbone.

    Attributes:
      width: width multiplier: 1.0, 1.3, 1.5, 2.0 (or any other).
      num_classes: classifier outputs; 0 or None returns the 1024 pre-logits features.
      padding: 'symmetric' (PyTorch) or 'same' (TF SAME).
      bn_epsilon, bn_momentum: clovaai's (eps 1e-5, momentum 0.1 = Flax 0.9).
      dropout_rate: dropout before the classifier (0.2).
      depthwise_impl, dtype, param_dtype: as in `EfficientNet`.
    """

    width: float = 1.0
    num_classes: int | None = 1000
    padding: Padding = "symmetric"
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9
    dropout_rate: float = 0.2
    depthwise_impl: DepthwiseImpl = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def network(self) -> ReXNetNetwork:
        return rexnet_lite_network(self.width)

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, return_stages: bool = False
    ) -> jax.Array | tuple[jax.Array, ...]:
        """Run the network on normalised NHWC images.

        Args:
          x: (N, H, W, 3) images; any H and W.
          train: batch statistics for BatchNorm (pass `mutable=['batch_stats']`) and dropout
            (RNG 'dropout'); the reference has no stochastic depth.
          return_stages: the outputs of the 6 stages instead of logits (strides 2, 4, 8, 16,
            16, 32).

        Returns:
          float32 logits (N, num_classes), the float32 pre-logits features (N, 1024) when
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
                LinearBottleneck(spec, self.padding, ops, "relu6", name=block_name(spec)),
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
        x = PreLogits(
            PRE_LOGITS_CHANNELS, ops.norm, ops.dtype, self.param_dtype, name="pre_logits"
        )(x)
        if not self.num_classes:
            return x.astype(jnp.float32)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return classifier(self.num_classes, self.param_dtype)(x)


class PreLogits(nn.Module):
    """clovaai's `output[0:3]`: a 1x1 conv with bias on the pooled features (a Dense layer),
    BN, ReLU6."""

    features: int
    norm: Any
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = nn.Dense(
            self.features,
            kernel_init=conv_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="dense",
        )
        return self.norm(act="relu6", name="bn")(dense(x))


FAMILY = register_family(
    Family(
        "rexnet_lite",
        ReXNetLite,
        ("width", "num_classes", "padding", "bn_epsilon", "bn_momentum", "dropout_rate"),
    )
)

# clovaai trained and evaluated them at 224 px with timm's trainer and ImageNet mean/std; its
# README gives no crop, so timm's default eval crop (0.875, bicubic) is assumed.
for _w, _tag in ((1.0, "100"), (1.3, "130"), (1.5, "150"), (2.0, "200")):
    register_model(
        ModelEntry(
            f"rexnet_lite_{_tag}",
            "rexnet_lite",
            dict(width=_w),
            Preprocessing(224, 0.875, "bicubic"),
        )
    )
