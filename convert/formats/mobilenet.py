"""MobileNetV2 and MobileNetV1 checkpoints: torchvision `mobilenet_v2`, seed 002's MobileNetV2,
timm `mobilenetv2_*` and `mobilenetv1_*`.

torchvision (torchvision/models/mobilenetv2.py) and seed 002 (a copy of it): `features.0.{0,1}`
stem conv/bn; block g is `features.{g+1}.conv.*`: with expansion `conv.0.{0,1}` expand conv/bn,
`conv.1.{0,1}` depthwise conv/bn, `conv.2` projection, `conv.3` its BN; without (the first
block) `conv.0.{0,1}` depthwise, `conv.1` projection, `conv.2` BN; `features.{n+1}.{0,1}` head;
`classifier.1` the Linear (after Dropout). The two differ only in the head width below width
1: torchvision keeps 1280, the seed scales it (`_make_divisible(1280 * alpha)`). They are the
same architecture at width >= 1, and such a file is read as torchvision's.

timm (`_gen_mobilenet_v2` / `_gen_mobilenet_v1` in timm/models/efficientnet.py): `conv_stem`,
`bn1`, `blocks.S.I.*`, `conv_head`, `bn2`, `classifier`. MobileNetV2 blocks are timm's
EfficientNet blocks without SE (`DepthwiseSeparableConv` in stage 0, `InvertedResidual`
after); MobileNetV1 blocks are `DepthwiseSeparableConv(pw_act=True)`: `conv_dw`, `bn1`,
`conv_pw`, `bn2`; `conv_head`/`bn2` only in `mobilenetv1_100h`.

All pad symmetrically and keep torch's BN defaults (eps 1e-5, momentum 0.1 = Flax 0.9).
"""

from __future__ import annotations

import re

from flax_effnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from flax_effnet.registry import model_entry

from flax_effnet.convert import layout
from flax_effnet.convert.formats.base import (
    TORCH_BN,
    WIDTH_GRID,
    FamilyFormat,
    Layout,
    bn_rows,
    conv_rows,
    count_by_stage,
    dense_rows,
    depthwise_rows,
    key_table,
    registered_fields,
)
from flax_effnet.convert.formats.timm import block_names as timm_block_names


def _classifier_rows(classifier, features, num_classes, transform=layout.linear_kernel):
    return (
        []
        if classifier is None
        else dense_rows(classifier, "classifier", features, num_classes, transform)
    )


# ------------------------------------------------------------------------------ MobileNetV2


def _torchvision_block(spec, g):
    p = f"features.{g + 1}.conv"
    if spec.expanded_channels != spec.in_channels:
        return {
            "conv_exp": f"{p}.0.0", "bn_exp": f"{p}.0.1", "conv_dw": f"{p}.1.0", "bn_dw": f"{p}.1.1",
            "conv_pwl": f"{p}.2", "bn_pwl": f"{p}.3",
        }  # fmt: skip
    return {"conv_dw": f"{p}.0.0", "bn_dw": f"{p}.0.1", "conv_pwl": f"{p}.1", "bn_pwl": f"{p}.2"}


def _torchvision_table(model, classifier, num_classes):
    net = model.network
    h = len(net.blocks) + 1  # the head follows the blocks in `features`
    names = Layout(
        ("features.0.0", "features.0.1"), (f"features.{h}.0", f"features.{h}.1"), _torchvision_block
    )
    return key_table(names, net, classifier, num_classes)


_TIMM_V2 = Layout(("conv_stem", "bn1"), ("conv_head", "bn2"), timm_block_names)


def _timm_v2_table(model, classifier, num_classes):
    return key_table(_TIMM_V2, model.network, classifier, num_classes)


def _v2_candidates(scale_head: bool):
    def candidates():
        if not scale_head:
            yield from registered_fields("mobilenetv2")
        for w in WIDTH_GRID:
            yield dict(width=w, scale_head=scale_head)

    return candidates


def _observed_torchvision(shapes):
    stem = shapes.get("features.0.0.weight", ("?",))[0]
    blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"features\.(\d+)\.conv\.", k))}
    head = shapes.get(f"features.{len(blocks) + 1}.0.weight", ("none",))[0]
    return f"stem {stem}, {len(blocks)} blocks, head {head}"


def _observed_timm(shapes):
    stem = shapes.get("conv_stem.weight", ("?",))[0]
    blocks = count_by_stage(shapes, r"blocks\.(\d+)\.(\d+)\.")
    head = shapes.get("conv_head.weight", ("none",))[0]
    return f"stem {stem}, blocks per stage {list(blocks)}, head {head}"


def _torchvision_preprocessing(model, name):
    # IMAGENET1K_V1 (`mobilenet_v2-b0353104.pth`, the file seed 002 fine-tunes): Resize(256) +
    # CenterCrop(224), bilinear. (IMAGENET1K_V2 was evaluated with resize 232.)
    return Preprocessing(224, 224 / 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD)


def _timm_preprocessing(model, name):
    """The registered model's (timm's pretrained cfg); timm's default cfg for other widths."""
    if name is not None:
        return model_entry(name).preprocessing
    return Preprocessing(224, 0.875, "bicubic", IMAGENET_MEAN, IMAGENET_STD)


TORCHVISION_V2 = FamilyFormat(
    name="torchvision_mobilenet_v2",
    description="torchvision.models.mobilenet_v2 (head at least 1280 wide)",
    family="mobilenetv2",
    reference="torchvision.models.mobilenet_v2(width_mult=...)",
    marker="features.0.0.weight",
    signature=r"features\.\d+\.conv\.0\.0\.weight",
    classifier=("classifier.1",),
    settings=TORCH_BN,
    candidates=_v2_candidates(scale_head=False),
    table=_torchvision_table,
    preprocessing=_torchvision_preprocessing,
    observed=_observed_torchvision,
)

SEED002 = FamilyFormat(
    name="seed002",
    description="seed document 002's MobileNetV2 (torchvision's keys, head 1280 * alpha)",
    family="mobilenetv2",
    reference="seed 002 model.py MobileNetV2(num_classes, alpha) (not a package)",
    marker="features.0.0.weight",
    signature=r"features\.\d+\.conv\.0\.0\.weight",
    classifier=("classifier.1",),
    settings=TORCH_BN,
    candidates=_v2_candidates(scale_head=True),
    table=_torchvision_table,
    # Its predict.py: Resize(256), CenterCrop(224) (bilinear), ImageNet mean/std.
    preprocessing=_torchvision_preprocessing,
    observed=_observed_torchvision,
)

TIMM_V2 = FamilyFormat(
    name="timm_mobilenetv2",
    description="timm mobilenetv2_035..140, _110d, _120d",
    family="mobilenetv2",
    reference="timm.create_model('mobilenetv2_100')",
    marker="conv_stem.weight",
    signature=r"blocks\.\d+\.\d+\.conv_pwl\.weight",
    excludes=r"\.se\.",  # timm's EfficientNets have the same block keys plus SE
    classifier=("classifier",),
    settings=TORCH_BN,
    candidates=_v2_candidates(scale_head=False),
    table=_timm_v2_table,
    preprocessing=_timm_preprocessing,
    observed=_observed_timm,
)


# ------------------------------------------------------------------------------ MobileNetV1


def _timm_v1_table(model, classifier, num_classes):
    net = model.network
    rows = conv_rows("conv_stem", "stem/conv", 3, 3, net.stem_channels)
    rows += bn_rows("bn1", "stem/bn", net.stem_channels)
    for b in net.blocks:
        p, f = f"blocks.{b.stage}.{b.index}", f"blocks_{b.stage}_{b.index}"
        rows += depthwise_rows(f"{p}.conv_dw", f"{f}/conv_dw", 3, b.in_channels)
        rows += bn_rows(f"{p}.bn1", f"{f}/bn_dw", b.in_channels)
        rows += conv_rows(f"{p}.conv_pw", f"{f}/conv_pw", 1, b.in_channels, b.out_channels)
        rows += bn_rows(f"{p}.bn2", f"{f}/bn_pw", b.out_channels)
    features = net.blocks[-1].out_channels
    if net.head_channels:
        rows += conv_rows("conv_head", "head/conv", 1, features, net.head_channels)
        rows += bn_rows("bn2", "head/bn", net.head_channels)
        features = net.head_channels
    return rows + _classifier_rows(classifier, features, num_classes)


def _v1_candidates():
    yield from registered_fields("mobilenetv1")
    for head_conv in (False, True):
        for w in WIDTH_GRID:
            yield dict(width=w, head_conv=head_conv)


TIMM_V1 = FamilyFormat(
    name="timm_mobilenetv1",
    description="timm mobilenetv1_100, _100h, _125",
    family="mobilenetv1",
    reference="timm.create_model('mobilenetv1_100')",
    marker="conv_stem.weight",
    signature=r"blocks\.\d+\.\d+\.conv_pw\.weight",
    excludes=r"\.se\.|conv_pwl",  # MobileNetV2 / EfficientNet blocks
    classifier=("classifier",),
    settings=TORCH_BN,
    candidates=_v1_candidates,
    table=_timm_v1_table,
    # timm's default cfg for widths it has no name for would say ImageNet mean/std, but the
    # only MobileNetV1 weights (ra4) use 0.5/0.5: keep those for every width.
    preprocessing=lambda model, name: model_entry(name or "mobilenetv1_100").preprocessing,
    observed=_observed_timm,
)

FORMATS = (TORCHVISION_V2, SEED002, TIMM_V2, TIMM_V1)
