"""EfficientDet D0-D7, D7x as a Flax linen module, on flax_effnet's EfficientNet backbone.

Tan, Pang & Le, "EfficientDet: Scalable and Efficient Object Detection" (2020,
arXiv:1911.09070); seed document 001. The structure, op order and parameters are those of
rwightman's `effdet` 0.4.1 (`effdet/efficientdet.py`, `config/model_config.py`,
`config/fpn_config.py`), so an effdet checkpoint converts tensor for tensor:

- P3-P5 are the backbone's stages 2, 4 and 6 (timm `features_only`, `out_indices=(2, 3, 4)`);
  P6 (and P7, P8 ...) come from the level below by a 1x1 conv + BN where the width changes,
  then a 3x3/2 max-pool (TF SAME with -inf padding, or PyTorch symmetric padding).
- BiFPN cells of `2 * (levels - 1)` nodes in effdet's order (`bifpn_nodes`); each input of a
  node is resampled to the node's size (1x1 conv + BN where its width is not the FPN width,
  which happens only for the raw backbone levels in cell 0, then nearest upsampling or
  max-pooling), fused (`relu(w)`-normalised weights, or a plain sum for D6+), then
  SiLU -> depthwise 3x3 -> pointwise 1x1 (+ bias in the TF ports) -> BN.
- Class and box heads: per repeat one separable conv shared by all levels, then one BN per
  (repeat, level), then SiLU; a separable prediction conv with bias.

Param tree:

    backbone/...                                   (EfficientNet's stem, blocks_{s}_{i})
    fpn/resample_p{6,7,..}/{conv,bn}               (P6: conv + bn; higher levels pool only)
    fpn/cell_{c}/node_{n}/{edge_weights, resample_{offset}/{conv,bn}, conv/{conv_dw,conv_pw}, bn}
    {class,box}_net/{conv_rep_{r}/{conv_dw,conv_pw}, bn_rep_{r}_{level}, predict/{conv_dw,conv_pw}}

`tests/golden/tf_efficientdet_d0_params.json` freezes it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from flax_effnet.blocks import Ops, network_ops
from flax_effnet.detection.anchors import AnchorSpec
from flax_effnet.layers import DepthwiseImpl, Padding, pad_amounts
from flax_effnet.model import EfficientNet, decode_variant, stage_channels
from flax_effnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from flax_effnet.registry import Family, ModelEntry, register_family, register_model
from flax_effnet.specs import VariantSpec, scale_network

Dtype = Any
Fusion = Literal["fastattn", "sum"]
FUSIONS = ("fastattn", "sum")
# The backbone stages that give P3, P4, P5 (strides 8, 16, 32).
BACKBONE_STAGES = (2, 4, 6)
# effdet `_init_weight`: class logits start at the prior probability 0.01.
CLASS_PRIOR = 0.01
# effdet `FpnCombine` 'fastattn': sum_i x_i * w_i / (sum_j w_j + 1e-4).
FUSION_EPSILON = 1e-4


def bifpn_nodes(num_levels: int) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """(level, input offsets) of each node of a BiFPN cell over `num_levels` levels.

    Offsets index the running list [level 0, ..., level L-1, node 0, node 1, ...]: a top-down
    path from level L-2 to 0 (each fusing its level with the node above), then a bottom-up
    path from level 1 to L-1 (each fusing every earlier entry of its level with the node
    below). effdet's `bifpn_config` (= TF automl `fpn_configs.bifpn_config`); for P3-P7:
    (3,4) (2,5) (1,6) (0,7) (1,7,8) (2,6,9) (3,5,10) (4,11). The cell's outputs are the last
    L entries, levels 0 .. L-1 in order.
    """
    ids = {level: [level] for level in range(num_levels)}
    nodes, next_id = [], num_levels
    for level in range(num_levels - 2, -1, -1):
        nodes.append((level, (ids[level][-1], ids[level + 1][-1])))
        ids[level].append(next_id)
        next_id += 1
    for level in range(1, num_levels):
        nodes.append((level, (*ids[level], ids[level - 1][-1])))
        ids[level].append(next_id)
        next_id += 1
    return tuple(nodes)


def _pool_padding(size: int, kernel: int, stride: int, padding: Padding) -> tuple[int, int]:
    """Padding of a max-pool: TF SAME (`MaxPool2dSame`), or timm's symmetric `get_padding`,
    `((stride - 1) + (kernel - 1)) // 2` per side (not the conv rule `(k - 1) // 2`; they agree
    for the 3x3/2 pool every configuration here uses)."""
    if padding == "same":
        return pad_amounts(size, kernel, stride, "same")
    p = ((stride - 1) + (kernel - 1)) // 2
    return p, p


def max_pool_to(x: jax.Array, size: tuple[int, int], padding: Padding) -> jax.Array:
    """Max-pool NHWC `x` down to `size`, as effdet's `ResampleFeatureMap`: per axis stride
    `s = (in - 1) // out + 1` and kernel `s + 1`; padding counts as -inf (flax's pool pads with
    the reduction's identity, like `MaxPool2dSame` and `nn.MaxPool2d`)."""
    strides = tuple((n - 1) // m + 1 for n, m in zip(x.shape[1:3], size))
    kernel = tuple(s + 1 for s in strides)
    pads = tuple(_pool_padding(n, k, s, padding) for n, k, s in zip(x.shape[1:3], kernel, strides))
    # Padded here rather than by the pool: the same -inf window XLA fuses either way, and an
    # explicit Pad exports to ONNX (jax2onnx 0.17.1 miscomputes a MaxPool's explicit pads).
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    return nn.max_pool(x, window_shape=kernel, strides=strides, padding="VALID")


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source rows of torch's 'nearest' interpolation: `min(floor(i * (in / out)), in - 1)`
    with the scale in float32 (ATen `nearest_idx`). `jax.image.resize` samples at half-pixel
    centres instead, which picks other rows for ratios that are not integers (3 -> 5)."""
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def upsample_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest upsampling of NHWC `x` to `size` with torch's index rule (`nearest_indices`);
    integer ratios (every level of a 128-multiple input) are plain repeats."""
    for axis, n_out in zip((1, 2), size):
        n_in = x.shape[axis]
        if n_out == n_in:
            continue
        if n_out % n_in == 0:
            x = jnp.repeat(x, n_out // n_in, axis=axis)
        else:
            x = jnp.take(x, jnp.asarray(nearest_indices(n_in, n_out)), axis=axis)
    return x


class SeparableConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1 (params `conv_dw`, `conv_pw`), effdet's
    `SeparableConv2d` without its norm; `use_bias` puts a bias on the pointwise conv."""

    features: int
    padding: Padding
    ops: Ops
    use_bias: bool = False
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ops.depthwise(3, 1, self.padding, name="conv_dw")(x)
        return self.ops.pointwise(
            self.features, use_bias=self.use_bias, bias_init=self.bias_init, name="conv_pw"
        )(x)


class Resample(nn.Module):
    """effdet's `ResampleFeatureMap`: a 1x1 conv (+ bias when `use_bias`) and BN (params
    `conv`, `bn`) where the input's width is not `features`, then max-pool down or nearest
    upsample to `size`. The conv runs before the pooling (TF `conv_after_downsample=False`)."""

    features: int
    padding: Padding
    ops: Ops
    use_bias: bool

    @nn.compact
    def __call__(self, x: jax.Array, size: tuple[int, int]) -> jax.Array:
        if x.shape[-1] != self.features:
            x = self.ops.pointwise(self.features, use_bias=self.use_bias, name="conv")(x)
            x = self.ops.norm(name="bn")(x)
        h, w = x.shape[1:3]
        if h > size[0] and w > size[1]:
            return max_pool_to(x, size, self.padding)
        if h < size[0] or w < size[1]:
            return upsample_nearest(x, size)
        return x


class FpnNode(nn.Module):
    """One BiFPN node: resample each input to the node's level, fuse, SiLU, separable conv,
    BN (effdet `Fnode`: `combine`, then `after_combine` = act, conv)."""

    inputs: tuple[int, ...]
    features: int
    fusion: Fusion
    padding: Padding
    ops: Ops
    redundant_bias: bool
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, entries: Sequence[jax.Array], size: tuple[int, int]) -> jax.Array:
        xs = [
            Resample(self.features, self.padding, self.ops, self.redundant_bias, name=f"resample_{o}")(
                entries[o], size
            )
            for o in self.inputs
        ]
        if self.fusion == "fastattn":
            w = self.param("edge_weights", nn.initializers.ones, (len(xs),), self.param_dtype)
            w = nn.relu(w.astype(xs[0].dtype))
            denom = jnp.sum(w) + FUSION_EPSILON
            # effdet's order of operations: scale each input, divide, then add.
            terms = [(x * w[i]) / denom for i, x in enumerate(xs)]
        elif self.fusion == "sum":
            terms = xs
        else:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        x = terms[0]
        for t in terms[1:]:
            x = x + t
        x = nn.silu(x)
        x = SeparableConv(self.features, self.padding, self.ops, self.redundant_bias, name="conv")(x)
        return self.ops.norm(name="bn")(x)


class BiFpnCell(nn.Module):
    """One BiFPN cell: `bifpn_nodes` in order; returns the last `num_levels` entries."""

    features: int
    fusion: Fusion
    padding: Padding
    ops: Ops
    redundant_bias: bool
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array]) -> list[jax.Array]:
        sizes = [f.shape[1:3] for f in feats]
        entries = list(feats)
        for n, (level, inputs) in enumerate(bifpn_nodes(len(feats))):
            node = FpnNode(
                inputs, self.features, self.fusion, self.padding, self.ops, self.redundant_bias,
                self.param_dtype, name=f"node_{n}",
            )  # fmt: skip
            entries.append(node(entries, sizes[level]))
        return entries[-len(feats):]


class BiFpn(nn.Module):
    """The extra levels above the backbone's (`resample_p{level}`), then the cells."""

    num_levels: int
    min_level: int
    features: int
    cell_repeats: int
    fusion: Fusion
    padding: Padding
    ops: Ops
    redundant_bias: bool
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array]) -> list[jax.Array]:
        feats = list(feats)
        while len(feats) < self.num_levels:
            prev = feats[-1]
            size = tuple((n - 1) // 2 + 1 for n in prev.shape[1:3])  # effdet `get_feat_sizes`
            level = self.min_level + len(feats)
            resample = Resample(
                self.features, self.padding, self.ops, self.redundant_bias, name=f"resample_p{level}"
            )
            feats.append(resample(prev, size))
        for c in range(self.cell_repeats):
            feats = BiFpnCell(
                self.features, self.fusion, self.padding, self.ops, self.redundant_bias,
                self.param_dtype, name=f"cell_{c}",
            )(feats)  # fmt: skip
        return feats


class HeadNet(nn.Module):
    """effdet's `HeadNet`: per repeat a separable conv shared by every level, then that
    level's own BN (`bn_rep_{repeat}_{level}`, level 0 = the lowest) and SiLU; then a
    separable prediction conv with bias, `num_outputs` channels."""

    num_outputs: int
    features: int
    repeats: int
    padding: Padding
    ops: Ops
    redundant_bias: bool
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
        convs = [
            SeparableConv(self.features, self.padding, self.ops, self.redundant_bias, name=f"conv_rep_{r}")
            for r in range(self.repeats)
        ]
        predict = SeparableConv(
            self.num_outputs, self.padding, self.ops, True, self.bias_init, name="predict"
        )
        outputs = []
        for level, x in enumerate(feats):
            for r, conv in enumerate(convs):
                x = self.ops.norm(act="silu", name=f"bn_rep_{r}_{level}")(conv(x))
            outputs.append(predict(x).astype(jnp.float32))
        return tuple(outputs)


class EfficientDet(nn.Module):
    """EfficientDet: EfficientNet backbone, BiFPN, shared class and box heads.

    Attributes:
      num_classes: classes of the class head (COCO: 90, effdet's ids).
      backbone: EfficientNet variant ('b0'..'b7') or a `VariantSpec`.
      fpn_channels: BiFPN and head width (D0: 64 ... D6+: 384).
      fpn_cell_repeats: BiFPN cells (D0: 3 ... D6+: 8).
      box_class_repeats: separable convs of each head before its prediction (D0: 3 ... D6+: 5).
      fusion: 'fastattn' (`relu(w)`-normalised weights, D0-D5) or 'sum' (D6, D7, D7x).
      anchors: levels and anchors per location (`AnchorSpec`); the heads have
        `anchors.num_anchors * classes` and `num_anchors * 4` channels, and the pyramid runs
        from `anchors.min_level` (must be 3: P3-P5 come from the backbone) to
        `anchors.max_level` (7; 8 for D7x).
      padding: 'same' (TF ports: the backbone's convs and every max-pool pad TF SAME) or
        'symmetric' (effdet's PyTorch-trained `efficientdet_d0/d1`).
      redundant_bias: bias on the convs followed by BN (TF ports have them; effdet's
        PyTorch-trained models not).
      bn_epsilon, bn_momentum: BiFPN and head BN (effdet: eps 1e-3, torch momentum 0.01).
      backbone_bn_epsilon, backbone_bn_momentum: the backbone's BN (timm: TF ports eps 1e-3,
        PyTorch-trained 1e-5; momentum 0.1 = Flax 0.9).
      drop_path_rate: the backbone's stochastic depth (effdet `backbone_args`).
      depthwise_impl, dtype, param_dtype: as in `EfficientNet`; outputs are float32.
    """

    num_classes: int = 90
    backbone: str | VariantSpec = "b0"
    fpn_channels: int = 64
    fpn_cell_repeats: int = 3
    box_class_repeats: int = 3
    fusion: Fusion = "fastattn"
    anchors: AnchorSpec = AnchorSpec()
    padding: Padding = "same"
    redundant_bias: bool = True
    bn_epsilon: float = 1e-3
    bn_momentum: float = 0.99
    backbone_bn_epsilon: float = 1e-3
    backbone_bn_momentum: float = 0.9
    drop_path_rate: float = 0.2
    depthwise_impl: DepthwiseImpl = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def network(self):
        """The backbone's scaled block list (checks the variant; as every family has it)."""
        return scale_network(self.backbone, self.drop_path_rate)

    @property
    def backbone_channels(self) -> tuple[int, ...]:
        """Widths of P3, P4, P5."""
        channels = stage_channels(self.backbone)
        return tuple(channels[s] for s in BACKBONE_STAGES)

    def _check(self) -> None:
        a = self.anchors
        if a.min_level != 3 or a.max_level < 5:
            raise ValueError(
                "EfficientDet's pyramid starts at P3 (the backbone gives P3-P5) and reaches at "
                f"least P5; got anchors min_level={a.min_level}, max_level={a.max_level}"
            )
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False
    ) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        """Run the detector on normalised NHWC images.

        Args:
          x: (N, H, W, 3); H and W multiples of 2**anchors.max_level (128 for P7) so that the
            anchors tile every level exactly. Other sizes run as effdet runs them (ceil-halved
            levels, torch's nearest index rule).
          train: batch statistics for BatchNorm (pass `mutable=['batch_stats']`) and the
            backbone's stochastic depth (RNG 'drop_path').

        Returns:
          (class_outputs, box_outputs): per level min_level..max_level, float32 NHWC arrays
          with `num_anchors * num_classes` and `num_anchors * 4` channels, anchor-major
          (channel = anchor * C + class), as effdet's.
        """
        self._check()
        stages = EfficientNet(
            variant=self.backbone,
            num_classes=None,
            padding=self.padding,
            bn_epsilon=self.backbone_bn_epsilon,
            bn_momentum=self.backbone_bn_momentum,
            drop_path_rate=self.drop_path_rate,
            depthwise_impl=self.depthwise_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="backbone",
        )(x, train=train, return_stages=True)
        ops = network_ops(
            train=train,
            depthwise_impl=self.depthwise_impl,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        feats = BiFpn(
            self.anchors.num_levels, self.anchors.min_level, self.fpn_channels,
            self.fpn_cell_repeats, self.fusion, self.padding, ops, self.redundant_bias,
            self.param_dtype, name="fpn",
        )([stages[s] for s in BACKBONE_STAGES])  # fmt: skip
        head = dict(
            features=self.fpn_channels,
            repeats=self.box_class_repeats,
            padding=self.padding,
            ops=ops,
            redundant_bias=self.redundant_bias,
        )
        num_anchors = self.anchors.num_anchors
        prior = -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR)
        class_outputs = HeadNet(
            num_anchors * self.num_classes, bias_init=nn.initializers.constant(prior),
            name="class_net", **head,
        )(feats)  # fmt: skip
        box_outputs = HeadNet(num_anchors * 4, name="box_net", **head)(feats)
        return class_outputs, box_outputs


def _decode_anchors(value: dict | AnchorSpec) -> AnchorSpec:
    """config.json holds the AnchorSpec as a dict (its aspect ratios as lists)."""
    if isinstance(value, AnchorSpec):
        return value
    value = dict(value)
    value["aspect_ratios"] = tuple(tuple(r) for r in value["aspect_ratios"])
    return AnchorSpec(**value)


FAMILY = register_family(
    Family(
        "efficientdet",
        EfficientDet,
        (
            "num_classes", "backbone", "fpn_channels", "fpn_cell_repeats", "box_class_repeats",
            "fusion", "anchors", "padding", "redundant_bias", "bn_epsilon", "bn_momentum",
            "backbone_bn_epsilon", "backbone_bn_momentum", "drop_path_rate",
        ),
        decode={"backbone": decode_variant, "anchors": _decode_anchors},
    )
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Variant:
    """One row of effdet's `efficientdet_model_param_dict` (fields that differ by variant)."""

    backbone: str
    size: int
    fpn_channels: int
    fpn_cell_repeats: int
    box_class_repeats: int
    fusion: Fusion = "fastattn"
    anchors: AnchorSpec = AnchorSpec()


# effdet 0.4.1 `config/model_config.py` (`tf_efficientdet_*`): TF SAME, redundant biases,
# BN eps 1e-3 everywhere; D6+ use 'bifpn_sum', D7 anchor scale 5, D7x levels P3-P8.
TF_VARIANTS = {
    "d0": _Variant("b0", 512, 64, 3, 3),
    "d1": _Variant("b1", 640, 88, 4, 3),
    "d2": _Variant("b2", 768, 112, 5, 3),
    "d3": _Variant("b3", 896, 160, 6, 4),
    "d4": _Variant("b4", 1024, 224, 7, 4),
    "d5": _Variant("b5", 1280, 288, 7, 4),
    "d6": _Variant("b6", 1280, 384, 8, 5, "sum"),
    "d7": _Variant("b6", 1536, 384, 8, 5, "sum", AnchorSpec(anchor_scale=5.0)),
    "d7x": _Variant("b7", 1536, 384, 8, 5, "sum", AnchorSpec(max_level=8)),
}
# effdet's PyTorch-trained `efficientdet_d0/d1`: symmetric padding, no redundant biases, timm
# `efficientnet_bX` backbones (BN eps 1e-5); drop_path 0.1 / 0.2 (`backbone_args`).
PT_VARIANTS = {
    "d0": (_Variant("b0", 512, 64, 3, 3), 0.1),
    "d1": (_Variant("b1", 640, 88, 4, 3), 0.2),
}


def _fields(v: _Variant) -> dict:
    return dict(
        backbone=v.backbone, fpn_channels=v.fpn_channels, fpn_cell_repeats=v.fpn_cell_repeats,
        box_class_repeats=v.box_class_repeats, fusion=v.fusion, anchors=v.anchors,
    )  # fmt: skip


def _preprocessing(size: int) -> Preprocessing:
    """effdet's eval input: the model size, ImageNet mean/std, bicubic (`resolve_input_config`'s
    default, what its validate.py scores with); the image is letterboxed whole, not cropped
    (crop_pct 1)."""
    return Preprocessing(size, 1.0, "bicubic", IMAGENET_MEAN, IMAGENET_STD)


for _name, _v in TF_VARIANTS.items():
    register_model(ModelEntry(
        f"tf_efficientdet_{_name}", "efficientdet",
        dict(_fields(_v), padding="same", redundant_bias=True, backbone_bn_epsilon=1e-3),
        _preprocessing(_v.size),
    ))  # fmt: skip
for _name, (_v, _dpr) in PT_VARIANTS.items():
    register_model(ModelEntry(
        f"efficientdet_{_name}", "efficientdet",
        dict(_fields(_v), padding="symmetric", redundant_bias=False, backbone_bn_epsilon=1e-5,
             drop_path_rate=_dpr),
        _preprocessing(_v.size),
    ))  # fmt: skip

__all__ = ["EfficientDet", "bifpn_nodes", "max_pool_to", "nearest_indices", "upsample_nearest"]
