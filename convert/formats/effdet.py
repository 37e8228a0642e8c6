"""effdet (rwightman/efficientdet-pytorch 0.4.1) EfficientDet checkpoints: `tf_efficientdet_d0..d7x`
and `efficientdet_d0/d1`, any class count.

Keys (`effdet/efficientdet.py`): `backbone.*` is timm's `tf_efficientnet_bX` / `efficientnet_bX`
without its head (`conv_stem`, `bn1`, `blocks.S.I.*`); `fpn.resample.{i}.conv.{conv,bn}` makes
level i >= 3 (P6) from the one below; `fpn.cell.{c}.fnode.{n}.combine.edge_weights` (fast-attention
fusion only), `...combine.resample.{offset}.conv.{conv,bn}` (cell 0's inputs from the backbone),
`...after_combine.conv.{conv_dw,conv_pw,bn}`; `{class,box}_net.conv_rep.{r}.{conv_dw,conv_pw}`,
`...bn_rep.{r}.{level}.bn`, `...predict.{conv_dw,conv_pw}`. The TF ports give every conv before
a BN a bias (`redundant_bias`); the PyTorch-trained `efficientdet_*` do not. Bench wrappers
(`DetBenchPredict`, `DetBenchTrain`) put the model under `model.`.

The architecture is the registered model whose full key table has the checkpoint's shapes;
`tf_efficientdet_d6` and `_d7` hold identical tensors (D7 differs in anchor scale and input
size), so a name in or beside the file decides between them.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from flax_effnet.blocks import network_ops
from flax_effnet.efficientdet import CLASS_PRIOR, SeparableConv, bifpn_nodes
from flax_effnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from flax_effnet.registry import model_entry
from flax_effnet.specs import scale_network

from flax_effnet.convert import layout
from flax_effnet.convert.formats.base import (
    FamilyFormat,
    Row,
    block_rows,
    bn_rows,
    conv_rows,
    count_by_stage,
    depthwise_rows,
    registered_fields,
)
from flax_effnet.convert.formats.timm import block_names as timm_block_names

CLASS_PREDICT = "class_net.predict"


def _nest(rows: list[Row], torch_prefix: str, flax_prefix: str) -> list[Row]:
    """Rows of a sub-network moved under a torch module prefix and a Flax scope."""
    out = []
    for r in rows:
        collection, path = r.flax_path.split("/", 1)
        out.append(dataclasses.replace(
            r, torch_key=torch_prefix + r.torch_key, flax_path=f"{collection}/{flax_prefix}{path}"
        ))  # fmt: skip
    return out


def _backbone_rows(variant) -> list[Row]:
    """timm EfficientNet features: stem and every block, no head."""
    net = scale_network(variant)
    rows = conv_rows("conv_stem", "stem/conv", 3, 3, net.stem_channels)
    rows += bn_rows("bn1", "stem/bn", net.stem_channels)
    for i, spec in enumerate(net.blocks):
        rows += block_rows(spec, timm_block_names(spec, i))
    return _nest(rows, "backbone.", "backbone/")


def _bias_row(torch: str, flax: str, c: int) -> Row:
    return Row(f"{torch}.bias", f"params/{flax}/bias", layout.identity, (c,))


def _separable_rows(torch: str, flax: str, cin: int, cout: int, bias: bool) -> list[Row]:
    rows = depthwise_rows(f"{torch}.conv_dw", f"{flax}/conv_dw", 3, cin)
    rows += conv_rows(f"{torch}.conv_pw", f"{flax}/conv_pw", 1, cin, cout)
    return rows + ([_bias_row(f"{torch}.conv_pw", f"{flax}/conv_pw", cout)] if bias else [])


def _resample_rows(torch: str, flax: str, cin: int, cout: int, bias: bool) -> list[Row]:
    """`ResampleFeatureMap`: a 1x1 conv + BN only where the width changes."""
    if cin == cout:
        return []
    rows = conv_rows(f"{torch}.conv.conv", f"{flax}/conv", 1, cin, cout)
    rows += [_bias_row(f"{torch}.conv.conv", f"{flax}/conv", cout)] if bias else []
    return rows + bn_rows(f"{torch}.conv.bn", f"{flax}/bn", cout)


def table(model: nn.Module, classifier: str | None, num_classes: int) -> list[Row]:
    """Every tensor of an `EfficientDet`; `classifier` None leaves out the class head's
    prediction conv (the only tensors whose shape depends on the class count)."""
    w, bias, levels = model.fpn_channels, model.redundant_bias, model.anchors.num_levels
    min_level = model.anchors.min_level
    rows = _backbone_rows(model.backbone)
    widths = list(model.backbone_channels)
    for i in range(len(widths), levels):
        rows += _resample_rows(f"fpn.resample.{i}", f"fpn/resample_p{min_level + i}", widths[-1], w, bias)
        widths.append(w)
    for c in range(model.fpn_cell_repeats):
        entries = list(widths) if c == 0 else [w] * levels
        for n, (_, inputs) in enumerate(bifpn_nodes(levels)):
            t, f = f"fpn.cell.{c}.fnode.{n}", f"fpn/cell_{c}/node_{n}"
            if model.fusion == "fastattn":
                rows.append(Row(f"{t}.combine.edge_weights", f"params/{f}/edge_weights", layout.identity, (len(inputs),)))
            for o in inputs:
                rows += _resample_rows(f"{t}.combine.resample.{o}", f"{f}/resample_{o}", entries[o], w, bias)
            rows += _separable_rows(f"{t}.after_combine.conv", f"{f}/conv", w, w, bias)
            rows += bn_rows(f"{t}.after_combine.conv.bn", f"{f}/bn", w)
            entries.append(w)
    anchors = model.anchors.num_anchors
    for head, outputs in (("class_net", num_classes), ("box_net", 4)):
        for r in range(model.box_class_repeats):
            rows += _separable_rows(f"{head}.conv_rep.{r}", f"{head}/conv_rep_{r}", w, w, bias)
            for level in range(levels):
                rows += bn_rows(f"{head}.bn_rep.{r}.{level}.bn", f"{head}/bn_rep_{r}_{level}", w)
        if head == "box_net" or classifier is not None:
            rows += _separable_rows(f"{head}.predict", f"{head}/predict", w, anchors * outputs, True)
    return rows


def checkpoint_classes(model: nn.Module, shapes) -> int | None:
    """The class count the checkpoint's class head predicts, or None if it has none that fits."""
    shape = shapes.get(f"{CLASS_PREDICT}.conv_pw.weight")
    anchors = model.anchors.num_anchors
    if shape is None or len(shape) != 4 or shape[0] % anchors or not shape[0]:
        return None
    return shape[0] // anchors


def new_class_predict(model: nn.Module, num_classes: int) -> dict[str, np.ndarray]:
    """A freshly initialised class prediction conv for `num_classes` (the model's own
    initialisers, class bias at effdet's prior), as flat Flax paths."""
    ops = network_ops(
        train=False, depthwise_impl="conv", bn_momentum=model.bn_momentum,
        bn_epsilon=model.bn_epsilon, dtype=jnp.float32, param_dtype=jnp.float32,
    )  # fmt: skip
    prior = -float(np.log((1 - CLASS_PRIOR) / CLASS_PRIOR))
    conv = SeparableConv(
        model.anchors.num_anchors * num_classes, model.padding, ops, True, nn.initializers.constant(prior)
    )
    params = conv.init(jax.random.key(0), jnp.zeros((1, 3, 3, model.fpn_channels)))["params"]
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    return {f"params/class_net/predict/{k}": np.asarray(v) for k, v in flat.items()}


def twin_names(model: nn.Module, names) -> list[str]:
    """The registered models among `names` whose tensors are the same as `model`'s."""
    from flax_effnet.registry import get_family

    family = get_family("efficientdet")
    mine = [(r.torch_key, r.torch_shape) for r in table(model, CLASS_PREDICT, model.num_classes)]
    out = []
    for name in names:
        other = family.build({}, **{**model_entry(name).fields, "num_classes": model.num_classes})
        if [(r.torch_key, r.torch_shape) for r in table(other, CLASS_PREDICT, model.num_classes)] == mine:
            out.append(name)
    return out


def _observed(shapes) -> str:
    stem = shapes.get("backbone.conv_stem.weight", ("?",))[0]
    blocks = count_by_stage(shapes, r"backbone\.blocks\.(\d+)\.(\d+)\.")
    width = shapes.get("fpn.cell.0.fnode.0.after_combine.conv.conv_pw.weight", ("?",))[0]
    cells = len({m.group(1) for k in shapes if (m := re.match(r"fpn\.cell\.(\d+)\.", k))})
    repeats = len({m.group(1) for k in shapes if (m := re.match(r"box_net\.conv_rep\.(\d+)\.", k))})
    weighted = any(k.endswith(".edge_weights") for k in shapes)
    biased = any(re.match(r"fpn\.cell\.\d+\.fnode\.\d+\.after_combine\.conv\.conv_pw\.bias", k) for k in shapes)
    return (
        f"backbone stem {stem}, blocks per stage {list(blocks)}; BiFPN width {width}, {cells} cells, "
        f"{'weighted' if weighted else 'sum'} fusion, {'with' if biased else 'without'} conv biases; "
        f"{repeats} head repeats"
    )


def _preprocessing(model, name) -> Preprocessing:
    if name is not None:
        return model_entry(name).preprocessing
    return Preprocessing(512, 1.0, "bicubic", IMAGENET_MEAN, IMAGENET_STD)


EFFDET = FamilyFormat(
    name="effdet",
    description="effdet (efficientdet-pytorch) tf_efficientdet_d0..d7x, efficientdet_d0/d1",
    family="efficientdet",
    reference="effdet.create_model('tf_efficientdet_d0')",
    marker=f"{CLASS_PREDICT}.conv_pw.weight",
    signature=r"fpn\.cell\.0\.fnode\.0\.after_combine\.conv\.conv_dw\.weight",
    classifier=(CLASS_PREDICT,),
    settings={},
    candidates=lambda: registered_fields("efficientdet"),
    table=table,
    preprocessing=_preprocessing,
    observed=_observed,
)

FORMATS = (EFFDET,)
