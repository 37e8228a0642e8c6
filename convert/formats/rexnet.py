"""ReXNet checkpoints: timm `rexnet_*` / `rexnetr_*`, and the clovaai layout of seed 003's
`ReXNetV1` and `ReXNetV1_lite` (= clovaai/rexnet `rexnetv1.py`, `rexnetv1_lite.py`, whose
official weights are plain state_dicts in it).

clovaai / seed 003: every module is an index in a Sequential. `features.0` stem conv,
`features.1` its BN (2 is the activation); block g is `features.{3+g}.out.K`, where K counts
the block's layers, activations included: [expand conv, BN, act] [depthwise conv, BN]
[SE (`fc.0` reduce, `fc.1` BN, `fc.3` expand)] [act] [projection conv, BN]; the head is
`features.{3+n}` conv and `features.{4+n}` BN. ReXNetV1's classifier is `output.1`, a 1x1
*conv* with bias after Dropout; the lite model's `output` is [1x1 conv to 1024 with bias, BN,
ReLU6, Dropout, 1x1 conv classifier], i.e. `output.0`, `output.1`, `output.4`.

timm (timm/models/rexnet.py): `stem.{conv,bn}`, `features.g.{conv_exp,conv_dw,conv_pwl}.{conv,bn}`,
`features.g.se.{fc1,bn,fc2}`, `features.{n}.{conv,bn}` head, `head.fc` (a Linear). timm has no
ReXNet-lite.

All pad symmetrically and keep torch's BN defaults (eps 1e-5, momentum 0.1 = Flax 0.9).
"""

from __future__ import annotations

import re

from flax_effnet.registry import model_entry
from flax_effnet.rexnet_lite import PRE_LOGITS_CHANNELS

from flax_effnet.convert import layout
from flax_effnet.convert.formats.base import (
    TORCH_BN,
    WIDTH_GRID,
    FamilyFormat,
    bn_rows,
    conv_rows,
    dense_rows,
    depthwise_rows,
    registered_fields,
)

# ReXNet widths tried after the registered models: 0.5 ... 3.0 in steps of 0.05.
REXNET_WIDTH_GRID = tuple(round(0.05 * i, 2) for i in range(10, 61))


def block_rows(b, names: dict[str, str]) -> list:
    """Rows of one `LinearBottleneck`, given torch module names for its roles (conv_exp,
    bn_exp, conv_dw, bn_dw, se/reduce, se/bn, se/expand, conv_pwl, bn_pwl)."""
    f = f"blocks_{b.stage}_{b.index}"
    rows = []
    if b.expanded_channels != b.in_channels:
        rows += conv_rows(names["conv_exp"], f"{f}/conv_exp", 1, b.in_channels, b.expanded_channels)
        rows += bn_rows(names["bn_exp"], f"{f}/bn_exp", b.expanded_channels)
    rows += depthwise_rows(names["conv_dw"], f"{f}/conv_dw", 3, b.expanded_channels)
    rows += bn_rows(names["bn_dw"], f"{f}/bn_dw", b.expanded_channels)
    if b.se_channels:
        d, r = b.expanded_channels, b.se_channels
        rows += dense_rows(names["se/reduce"], f"{f}/se/reduce", d, r, layout.pointwise_to_dense)
        rows += bn_rows(names["se/bn"], f"{f}/se/bn", r)
        rows += dense_rows(names["se/expand"], f"{f}/se/expand", r, d, layout.pointwise_to_dense)
    rows += conv_rows(names["conv_pwl"], f"{f}/conv_pwl", 1, b.expanded_channels, b.out_channels)
    rows += bn_rows(names["bn_pwl"], f"{f}/bn_pwl", b.out_channels)
    return rows


def _clovaai_block(b, g):
    """`features.{3+g}.out.K`: K walks the Sequential, activations included."""
    p, k, names = f"features.{3 + g}.out", 0, {}
    if b.expanded_channels != b.in_channels:
        names.update(conv_exp=f"{p}.{k}", bn_exp=f"{p}.{k + 1}")
        k += 3
    names.update(conv_dw=f"{p}.{k}", bn_dw=f"{p}.{k + 1}")
    k += 2
    if b.se_channels:
        names.update(
            {"se/reduce": f"{p}.{k}.fc.0", "se/bn": f"{p}.{k}.fc.1", "se/expand": f"{p}.{k}.fc.3"}
        )
        k += 1
    k += 1  # ReLU6 (ReXNetV1), or the depthwise conv's ReLU6 (lite)
    names.update(conv_pwl=f"{p}.{k}", bn_pwl=f"{p}.{k + 1}")
    return names


def _clovaai_body(net) -> list:
    rows = conv_rows("features.0", "stem/conv", 3, 3, net.stem_channels)
    rows += bn_rows("features.1", "stem/bn", net.stem_channels)
    for g, b in enumerate(net.blocks):
        rows += block_rows(b, _clovaai_block(b, g))
    h = 3 + len(net.blocks)
    rows += conv_rows(
        f"features.{h}", "head/conv", 1, net.blocks[-1].out_channels, net.head_channels
    )
    return rows + bn_rows(f"features.{h + 1}", "head/bn", net.head_channels)


def _seed003_table(model, classifier, num_classes):
    net = model.network
    rows = _clovaai_body(net)
    if classifier is not None:  # a 1x1 conv on the pooled features
        rows += dense_rows(
            classifier, "classifier", net.head_channels, num_classes, layout.pointwise_to_dense
        )
    return rows


def _seed003_lite_table(model, classifier, num_classes):
    net, P = model.network, PRE_LOGITS_CHANNELS
    rows = _clovaai_body(net)
    rows += dense_rows(
        "output.0", "pre_logits/dense", net.head_channels, P, layout.pointwise_to_dense
    )
    rows += bn_rows("output.1", "pre_logits/bn", P)
    if classifier is not None:
        rows += dense_rows(classifier, "classifier", P, num_classes, layout.pointwise_to_dense)
    return rows


def _timm_block(b, g):
    p = f"features.{g}"
    return {
        "conv_exp": f"{p}.conv_exp.conv", "bn_exp": f"{p}.conv_exp.bn",
        "conv_dw": f"{p}.conv_dw.conv", "bn_dw": f"{p}.conv_dw.bn",
        "se/reduce": f"{p}.se.fc1", "se/bn": f"{p}.se.bn", "se/expand": f"{p}.se.fc2",
        "conv_pwl": f"{p}.conv_pwl.conv", "bn_pwl": f"{p}.conv_pwl.bn",
    }  # fmt: skip


def _timm_table(model, classifier, num_classes):
    net = model.network
    rows = conv_rows("stem.conv", "stem/conv", 3, 3, net.stem_channels)
    rows += bn_rows("stem.bn", "stem/bn", net.stem_channels)
    for g, b in enumerate(net.blocks):
        rows += block_rows(b, _timm_block(b, g))
    h = len(net.blocks)
    rows += conv_rows(
        f"features.{h}.conv", "head/conv", 1, net.blocks[-1].out_channels, net.head_channels
    )
    rows += bn_rows(f"features.{h}.bn", "head/bn", net.head_channels)
    if classifier is not None:
        rows += dense_rows(
            classifier, "classifier", net.head_channels, num_classes, layout.linear_kernel
        )
    return rows


def _rexnet_candidates(timm: bool):
    def candidates():
        for fields in registered_fields("rexnet"):
            if timm or fields.get("ch_div", 1) == 1:  # clovaai has no rounded models
                yield fields
        for w in REXNET_WIDTH_GRID:
            yield dict(width=w)

    return candidates


def _lite_candidates():
    yield from registered_fields("rexnet_lite")
    for w in WIDTH_GRID:
        yield dict(width=w)


def _observed(stem_key, block_rx):
    def observed(shapes):
        stem = shapes.get(stem_key, ("?",))[0]
        blocks = {int(m.group(1)) for k in shapes if (m := re.match(block_rx, k))}
        return f"stem {stem}, {len(blocks)} blocks"

    return observed


def _preprocessing(default: str):
    """The registered model's; for other widths, that of `default` (same recipe)."""
    return lambda model, name: model_entry(name or default).preprocessing


_CLOVAAI = dict(
    marker="features.0.weight",
    settings=TORCH_BN,
    reference="seed 003 / clovaai/rexnet (not a package)",
)

SEED003 = FamilyFormat(
    name="seed003",
    description="seed document 003's ReXNetV1 = clovaai/rexnet rexnetv1 (features.N.out.K, output.1)",
    family="rexnet",
    signature=r"features\.\d+\.out\.\d+\.fc\.0\.weight",  # the SE blocks
    classifier=("output.1",),
    candidates=_rexnet_candidates(timm=False),
    table=_seed003_table,
    preprocessing=_preprocessing("rexnet_100"),
    observed=_observed("features.0.weight", r"features\.(\d+)\.out\."),
    **_CLOVAAI,
)

SEED003_LITE = FamilyFormat(
    name="seed003_lite",
    description="seed document 003's ReXNetV1_lite = clovaai/rexnet rexnetv1_lite (output.0/1/4)",
    family="rexnet_lite",
    signature=r"output\.0\.weight",  # the 1024-wide pre-logits conv
    excludes=r"\.fc\.0\.",  # no SE
    classifier=("output.4",),
    candidates=_lite_candidates,
    table=_seed003_lite_table,
    preprocessing=_preprocessing("rexnet_lite_100"),
    observed=_observed("features.0.weight", r"features\.(\d+)\.out\."),
    **_CLOVAAI,
)

TIMM = FamilyFormat(
    name="timm_rexnet",
    description="timm rexnet_100..300, rexnetr_100..300",
    family="rexnet",
    reference="timm.create_model('rexnet_100')",
    marker="stem.conv.weight",
    signature=r"features\.\d+\.conv_dw\.conv\.weight",
    classifier=("head.fc",),
    settings=TORCH_BN,
    candidates=_rexnet_candidates(timm=True),
    table=_timm_table,
    preprocessing=_preprocessing("rexnet_100"),
    observed=_observed("stem.conv.weight", r"features\.(\d+)\.conv_dw\."),
)

FORMATS = (TIMM, SEED003, SEED003_LITE)
