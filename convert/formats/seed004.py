"""The PyTorch EfficientNet of seed document 004 (`EfficientNet(b)` with `SamePaddingConv2d`).

Keys: `init_conv.conv.conv` (a `SamePaddingConv2d` wrapping an nn.Conv2d), `init_conv.bn`;
`stages.S.layers.I` with `expand_conv.{conv,bn}` (absent when the ratio is 1),
`dp_conv.conv.conv`/`dp_conv.bn`, `se.dim_reduce`/`se.dim_restore`, `project_conv.{conv,bn}`;
`head_conv.{conv,bn}`, `fc`. TF SAME padding computed for the `in_spatial_shape` the model was
built with (the Flax model computes SAME for any size, equal at that size), BN eps 1e-3 and
torch momentum 0.01, i.e. Flax 0.99. Its SE uses the block's Swish, as all other formats do.

The seed gives no preprocessing; its weight files (`efficientnet-bX-*.pth`) are TF ports, so
the TF cfgs (timm's tf_efficientnet_bX) are assumed.
"""

from __future__ import annotations

from flax_effnet.convert.formats.base import SourceFormat, count_by_stage
from flax_effnet.convert.formats.timm import tf_preprocessing


def _block(spec, _global_index):
    p = f"stages.{spec.stage}.layers.{spec.index}"
    names = {}
    if spec.expanded_channels != spec.in_channels:
        names.update(conv_exp=f"{p}.expand_conv.conv", bn_exp=f"{p}.expand_conv.bn")
    names.update(
        {
            "conv_dw": f"{p}.dp_conv.conv.conv",
            "bn_dw": f"{p}.dp_conv.bn",
            "se/reduce": f"{p}.se.dim_reduce",
            "se/expand": f"{p}.se.dim_restore",
            "conv_pwl": f"{p}.project_conv.conv",
            "bn_pwl": f"{p}.project_conv.bn",
        }
    )
    return names


def _blocks_per_stage(shapes):
    return count_by_stage(shapes, r"stages\.(\d+)\.layers\.(\d+)\.")


FORMAT = SourceFormat(
    name="seed004",
    description="seed document 004's EfficientNet (init_conv, stages.S.layers.I, head_conv, fc)",
    padding="same",
    stem=("init_conv.conv.conv", "init_conv.bn"),
    head=("head_conv.conv", "head_conv.bn"),
    classifier=("fc",),
    block=_block,
    blocks_per_stage=_blocks_per_stage,
    bn_epsilon=lambda variant: 1e-3,
    bn_momentum=lambda variant: 0.99,
    preprocessing=tf_preprocessing,
    reference="seed 004 EfficientNet(b) (not a package)",
)
