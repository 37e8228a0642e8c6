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
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_effnet.blocks import ConvBN, MBConv, block_name, classifier, network_ops, run_backbone
from flax_effnet.layers import DepthwiseImpl, Padding
from flax_effnet.preprocessing import Preprocessing
from flax_effnet.registry import Family, ModelEntry, register_family, register_model
from flax_effnet.specs import VariantSpec, resolve_variant, scale_network, stage_strides

Dtype = Any


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
        In the CPU formulation bf16 rounds only the 1x1 matmuls' operands (AMX) and keeps
        activations float32 (`blocks.activation_dtype` says why).
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

    @property
    def network(self):
        """The scaled block list (`scale_network`), as every family's `network` gives it."""
        return scale_network(self.variant, self.drop_path_rate)

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
        stem = ConvBN(net.stem_channels, 3, 2, self.padding, ops.stem_conv, ops.norm, name="stem")
        blocks = [
            (spec, functools.partial(
                MBConv(spec, self.padding, ops, "silu", name=block_name(spec)),
                train=train))
            for spec in net.blocks
        ]
        x = run_backbone(self, stem, blocks, x, train=train, return_stages=return_stages,
                         depthwise_impl=self.depthwise_impl)
        if return_stages:
            return x

        x = ConvBN(net.head_channels, 1, 1, self.padding, ops.pointwise, ops.norm, name="head")(x)
        x = ops.pool(x)
        if not self.num_classes:
            return x
        rate = resolve_variant(self.variant).dropout if self.dropout_rate is None else self.dropout_rate
        x = nn.Dropout(rate, deterministic=not train)(x)
        return classifier(self.num_classes, self.param_dtype)(x)


def stage_channels(variant: str | VariantSpec) -> tuple[int, ...]:
    """Channels of each stage's output (pair with `stage_strides()` for an FPN)."""
    return tuple({b.stage: b.out_channels for b in scale_network(variant).blocks}.values())


def decode_variant(value: str | dict) -> str | VariantSpec:
    """config.json holds a variant name, or a custom VariantSpec as a dict."""
    return VariantSpec(**value) if isinstance(value, dict) else value


FAMILY = register_family(
    Family(
        "efficientnet",
        EfficientNet,
        ("variant", "num_classes", "padding", "bn_epsilon", "bn_momentum", "dropout_rate", "drop_path_rate"),
        decode={"variant": decode_variant},
    )
)

# timm 1.0.31 `efficientnet.py` default_cfgs: (input_size, crop_pct) of the first
# ImageNet-mean/std tag of each name (efficientnet_b0.ra_in1k, b1.ft_in1k, b2.ra_in1k,
# b3/b4 .ra2_in1k, b5.sw_in12k_ft_in1k, b6/b7/b8/l2 .untrained), all bicubic.
_TIMM_CFGS = {
    "b0": (224, 0.875), "b1": (224, 0.875), "b2": (256, 0.875), "b3": (288, 0.875),
    "b4": (320, 0.875), "b5": (448, 1.0), "b6": (528, 0.942), "b7": (600, 0.949),
    "b8": (672, 0.954), "l2": (800, 0.961),
}  # fmt: skip
# tf_efficientnet_bX.in1k (b0-b5), .aa_in1k (b6, b7), .ra_in1k (b8), .ns_jft_in1k (l2): the
# variant's native resolution and TF's crop_pct; ImageNet mean/std, bicubic.
_TF_CFGS = {
    "b0": (224, 0.875), "b1": (240, 0.882), "b2": (260, 0.890), "b3": (300, 0.904),
    "b4": (380, 0.922), "b5": (456, 0.934), "b6": (528, 0.942), "b7": (600, 0.949),
    "b8": (672, 0.954), "l2": (800, 0.96),
}  # fmt: skip

for _v, (_size, _crop) in _TIMM_CFGS.items():
    # PyTorch-trained: symmetric padding, torch BN defaults (eps 1e-5, momentum 0.1).
    register_model(ModelEntry(
        f"efficientnet_{_v}", "efficientnet",
        dict(variant=_v, padding="symmetric", bn_epsilon=1e-5, bn_momentum=0.9),
        Preprocessing(_size, _crop, "bicubic"),
    ))  # fmt: skip
for _v, (_size, _crop) in _TF_CFGS.items():
    # TF ports: SAME padding and TF's eps 1e-3; timm keeps torch's BN momentum 0.1.
    register_model(ModelEntry(
        f"tf_efficientnet_{_v}", "efficientnet",
        dict(variant=_v, padding="same", bn_epsilon=1e-3, bn_momentum=0.9),
        Preprocessing(_size, _crop, "bicubic"),
    ))  # fmt: skip

__all__ = ["EfficientNet", "MBConv", "ConvBN", "stage_channels", "stage_strides"]
