"""EfficientNet B0-B7 (and B8, L2) as Flax linen modules.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks" (2019).
The param tree reads like the architecture (after rwightman/efficientnet-jax):

    stem/{conv,bn}
    blocks_{stage}_{index}/{conv_exp,bn_exp,conv_dw,bn_dw,se/{reduce,expand},conv_pwl,bn_pwl}
    head/{conv,bn}
    classifier

`tests/golden/b0_params.json` freezes it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_effnet.layers import (
    BatchNormAct,
    DepthwiseConv,
    DepthwiseImpl,
    DropPath,
    Padding,
    PatchConv,
    PointwiseConv,
    SqueezeExcite,
    conv_init,
    dense_init,
    global_pool,
    resolve_depthwise_impl,
    spatial_padding,
)
from flax_effnet.specs import BlockSpec, VariantSpec, resolve_variant, scale_network, stage_strides

ModuleDef = Callable[..., nn.Module]
Dtype = Any


class ConvBN(nn.Module):
    """Conv -> BatchNorm -> optional SiLU, the stem and head unit."""

    features: int
    kernel_size: int
    stride: int
    padding: Padding
    conv: ModuleDef
    norm: ModuleDef
    act: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        pads = spatial_padding(x.shape, k, self.stride, self.padding)
        x = self.conv(self.features, (k, k), (self.stride, self.stride), pads, name="conv")(x)
        return self.norm(act=self.act, name="bn")(x)


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excite (MobileNetV2 + SE, paper section 4).

    1x1 expand (skipped when the ratio is 1) -> kxk depthwise -> SE -> 1x1 linear projection,
    with an identity shortcut through stochastic depth when stride is 1 and in == out.
    """

    spec: BlockSpec
    padding: Padding
    conv: ModuleDef
    norm: ModuleDef
    depthwise: ModuleDef
    se: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        s = self.spec
        shortcut = x
        if s.expanded_channels != s.in_channels:
            x = self.conv(s.expanded_channels, (1, 1), name="conv_exp")(x)
            x = self.norm(act=True, name="bn_exp")(x)
        x = self.depthwise(s.kernel_size, s.stride, self.padding, name="conv_dw")(x)
        x = self.norm(act=True, name="bn_dw")(x)
        x = self.se(s.se_channels, name="se")(x)
        x = self.conv(s.out_channels, (1, 1), name="conv_pwl")(x)
        x = self.norm(name="bn_pwl")(x)
        if s.has_residual:
            x = DropPath(s.drop_path_rate, name="drop_path")(x, deterministic=not train)
            x = x + shortcut
        return x


class EfficientNet(nn.Module):
    """EfficientNet classifier or backbone.

    Attributes:
      variant: 'b0'..'b7', 'b8', 'l2', or a `VariantSpec` of one's own multipliers.
      num_classes: classifier outputs; 0 or None returns the pooled features instead.
      padding: 'same' (TF SAME, native) or 'symmetric' (PyTorch `(k-1)//2`, for weights trained
        in PyTorch with symmetric padding, e.g. torchvision and timm's non-`tf_` models).
      bn_epsilon: 1e-3 for TF-trained weights, 1e-5 for most PyTorch-trained ones.
      bn_momentum: Flax momentum (running = m * running + (1-m) * batch); PyTorch's 0.1 is 0.9.
      dropout_rate: head dropout; None takes the variant's (0.2 for b0 ... 0.5 for b7).
      drop_path_rate: stochastic depth at the last block; rises linearly from 0 at the first.
      depthwise_impl: 'auto' (per backend), 'conv' (XLA grouped conv) or 'shift' (fused
        multiply-adds; the CPU formulation, which also runs the stem conv as a patch matmul
        and takes 1x1 weight and BatchNorm + SiLU gradients by hand). Params are identical;
        only speed differs. 'shift' has hand-written gradients, so forward-mode autodiff
        (jax.jvp) needs 'conv'.
      dtype: compute dtype (e.g. jnp.bfloat16); params stay `param_dtype`, logits are float32.
    """

    variant: str | VariantSpec = "b0"
    num_classes: int | None = 1000
    padding: Padding = "same"
    bn_epsilon: float = 1e-3
    bn_momentum: float = 0.99
    dropout_rate: float | None = None
    drop_path_rate: float = 0.2
    depthwise_impl: DepthwiseImpl = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, return_stages: bool = False
    ) -> jax.Array | tuple[jax.Array, ...]:
        """Run the network on NHWC images that are already normalised.

        Args:
          x: (N, H, W, 3) images; any H and W.
          train: batch statistics for BatchNorm (pass `mutable=['batch_stats']`), head dropout
            (RNG 'dropout') and stochastic depth (RNG 'drop_path').
          return_stages: return the output of each of the 7 stages instead of logits, for
            detection/segmentation backbones; their strides are `stage_strides()`
            (2, 4, 8, 16, 16, 32, 32): stages 0, 1, 2, 4, 6 give the usual C1-C5 pyramid.

        Returns:
          float32 logits (N, num_classes), pooled float32 features (N, head_channels) when
          num_classes is 0/None, or the tuple of stage outputs.
        """
        net = scale_network(self.variant, self.drop_path_rate)
        # 'shift' is the CPU formulation: besides the depthwise conv, it takes 1x1 weight
        # gradients as 2-D matmuls, BatchNorm + SiLU gradients by hand, and runs the
        # 3-channel stem conv as a patch matmul.
        cpu_formulation = resolve_depthwise_impl(self.depthwise_impl) == "shift"
        norm = functools.partial(
            BatchNormAct,
            fused_grad=cpu_formulation,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        # Every 1x1 conv (expand, project, head) is a matmul; same params as nn.Conv.
        pointwise = functools.partial(
            PointwiseConv,
            kernel_init=conv_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            flat_weight_grad=cpu_formulation,
        )
        depthwise = functools.partial(
            DepthwiseConv, impl=self.depthwise_impl, dtype=self.dtype, param_dtype=self.param_dtype
        )
        se = functools.partial(SqueezeExcite, dtype=self.dtype, param_dtype=self.param_dtype)
        stem_conv = functools.partial(
            PatchConv if cpu_formulation else nn.Conv,
            use_bias=False,
            kernel_init=conv_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

        x = x.astype(self.dtype)
        x = ConvBN(net.stem_channels, 3, 2, self.padding, stem_conv, norm, name="stem")(x)
        stage_outputs = {}  # stage -> output of its last block
        for spec in net.blocks:
            name = f"blocks_{spec.stage}_{spec.index}"
            x = MBConv(spec, self.padding, pointwise, norm, depthwise, se, name=name)(x, train=train)
            stage_outputs[spec.stage] = x
        if return_stages:
            return tuple(stage_outputs.values())

        x = ConvBN(net.head_channels, 1, 1, self.padding, pointwise, norm, name="head")(x)
        x = global_pool(x)
        if not self.num_classes:
            return x
        rate = resolve_variant(self.variant).dropout if self.dropout_rate is None else self.dropout_rate
        x = nn.Dropout(rate, deterministic=not train)(x)
        return nn.Dense(
            self.num_classes,
            kernel_init=dense_init,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            name="classifier",
        )(x)


def stage_channels(variant: str | VariantSpec) -> tuple[int, ...]:
    """Channels of each stage's output (pair with `stage_strides()` for an FPN)."""
    return tuple({b.stage: b.out_channels for b in scale_network(variant).blocks}.values())


__all__ = ["EfficientNet", "MBConv", "ConvBN", "stage_channels", "stage_strides"]
