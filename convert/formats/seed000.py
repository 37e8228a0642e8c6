"""The PyTorch EfficientNet of seed document 000 (`model.py` with `efficientnet_b0(num_classes)`).

Keys: `features.stem_conv.{0,1}`, blocks named by stage and letter (`features.1a`, `features.2a`,
`features.2b`, ...) with `block.expand_conv.{0,1}` (absent when the ratio is 1),
`block.dw_conv.{0,1}`, `block.se.fc1`/`fc2`, `block.project_conv.{0,1}`; `features.top.{0,1}`;
the Linear is `classifier.1` after Dropout (the seed assigns `self.clasifier` but calls
`self.classifier`, so a working checkpoint uses one of the two names; both are accepted).
Symmetric padding, BN eps 1e-3, torch momentum 0.1.

The seed never passes `stride` to its depthwise convs, so as printed only the stem downsamples.
The converter maps onto the standard architecture (stride 2 in the depthwise conv of the first
block of stages 2, 3, 4 and 6), as the upstream code it was copied from and torchvision do;
the tensors are the same either way, only the feature-map sizes differ.
"""

from __future__ import annotations

from flax_effnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from flax_effnet.specs import resolve_variant

from flax_effnet.convert.formats.base import SourceFormat, count_by_stage


def _block(spec, _global_index):
    p = f"features.{spec.stage + 1}{chr(ord('a') + spec.index)}.block"
    names = {}
    if spec.expanded_channels != spec.in_channels:
        names.update(conv_exp=f"{p}.expand_conv.0", bn_exp=f"{p}.expand_conv.1")
    names.update(
        {
            "conv_dw": f"{p}.dw_conv.0",
            "bn_dw": f"{p}.dw_conv.1",
            "se/reduce": f"{p}.se.fc1",
            "se/expand": f"{p}.se.fc2",
            "conv_pwl": f"{p}.project_conv.0",
            "bn_pwl": f"{p}.project_conv.1",
        }
    )
    return names


def _blocks_per_stage(shapes):
    return count_by_stage(shapes, r"features\.([1-7])([a-z])\.block\.", offset=1)


def _preprocessing(variant):
    # The seed's predict script: Resize(img_size) (bilinear, torchvision's default), CenterCrop
    # (img_size) with img_size the variant's resolution, ImageNet mean/std: crop_pct 1.0.
    return Preprocessing(resolve_variant(variant).resolution, 1.0, "bilinear", IMAGENET_MEAN, IMAGENET_STD)


FORMAT = SourceFormat(
    name="seed000",
    description="seed document 000's EfficientNet (features.stem_conv, features.1a, ...)",
    padding="symmetric",
    stem=("features.stem_conv.0", "features.stem_conv.1"),
    head=("features.top.0", "features.top.1"),
    classifier=("classifier.1", "clasifier.1"),
    block=_block,
    blocks_per_stage=_blocks_per_stage,
    bn_epsilon=lambda variant: 1e-3,
    bn_momentum=lambda variant: 0.9,
    preprocessing=_preprocessing,
    reference="seed 000 model.py (not a package)",
)
