"""torchvision `efficientnet_b0` .. `efficientnet_b7` (torchvision/models/efficientnet.py).

Keys: `features.0.{0,1}` stem conv/bn, `features.{S+1}.{I}.block.{k}` for block I of stage S,
`features.8.{0,1}` head, `classifier.1` the Linear (after Dropout). Inside a block `k` counts
the block's sub-modules, so it shifts by one when there is no expansion conv:
expand (k=0), depthwise (1), squeeze-excite (2, `fc1`/`fc2`), projection (3).
Padding is torch's symmetric `(k-1)//2`.
"""

from __future__ import annotations

from flax_effnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

from flax_effnet.convert.formats.base import SourceFormat, count_by_stage, variant_name


def _block(spec, _global_index):
    p = f"features.{spec.stage + 1}.{spec.index}.block"
    names, k = {}, 0
    if spec.expanded_channels != spec.in_channels:
        names.update(conv_exp=f"{p}.0.0", bn_exp=f"{p}.0.1")
        k = 1
    names.update(
        {
            "conv_dw": f"{p}.{k}.0",
            "bn_dw": f"{p}.{k}.1",
            "se/reduce": f"{p}.{k + 1}.fc1",
            "se/expand": f"{p}.{k + 1}.fc2",
            "conv_pwl": f"{p}.{k + 2}.0",
            "bn_pwl": f"{p}.{k + 2}.1",
        }
    )
    return names


def _blocks_per_stage(shapes):
    # features.1 .. features.7 are the seven stages.
    return count_by_stage(shapes, r"features\.([1-7])\.(\d+)\.block\.", offset=1)


def _bn_epsilon(variant):
    # efficientnet_b5/b6/b7 pass `partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)`; b0-b4 use
    # nn.BatchNorm2d's defaults (eps 1e-5, momentum 0.1).
    return 1e-3 if variant_name(variant) in ("b5", "b6", "b7") else 1e-5


def _bn_momentum(variant):
    return 0.99 if variant_name(variant) in ("b5", "b6", "b7") else 0.9


# The DEFAULT weights' `transforms` in torchvision 0.28 models/efficientnet.py:
# ImageClassification(crop_size, resize_size, interpolation); crop_pct = crop / resize.
# b1's DEFAULT is IMAGENET1K_V2 (resize 255, bilinear); the rest are bicubic.
_TRANSFORMS = {
    "b0": (224, 256, "bicubic"),
    "b1": (240, 255, "bilinear"),
    "b2": (288, 288, "bicubic"),
    "b3": (300, 320, "bicubic"),
    "b4": (380, 384, "bicubic"),
    "b5": (456, 456, "bicubic"),
    "b6": (528, 528, "bicubic"),
    "b7": (600, 600, "bicubic"),
}


def _preprocessing(variant):
    crop, resize, interpolation = _TRANSFORMS[variant_name(variant)]
    return Preprocessing(crop, crop / resize, interpolation, IMAGENET_MEAN, IMAGENET_STD)


FORMAT = SourceFormat(
    name="torchvision",
    description="torchvision.models.efficientnet_b0..b7",
    padding="symmetric",
    stem=("features.0.0", "features.0.1"),
    head=("features.8.0", "features.8.1"),
    classifier=("classifier.1",),
    block=_block,
    blocks_per_stage=_blocks_per_stage,
    bn_epsilon=_bn_epsilon,
    bn_momentum=_bn_momentum,
    preprocessing=_preprocessing,
    reference="torchvision.models.efficientnet_bX()",
    signature=r"features\.\d+\.\d+\.block\.",  # torchvision's MobileNetV2 shares the stem key
)
