"""lukemelas/EfficientNet-PyTorch (`efficientnet_pytorch`, `EfficientNet.from_name('efficientnet-b0')`).

Keys: `_conv_stem`, `_bn0`, a flat list `_blocks.N` over all stages with `_expand_conv`/`_bn0`
(absent when the expansion ratio is 1), `_depthwise_conv`/`_bn1`, `_se_reduce`/`_se_expand`,
`_project_conv`/`_bn2`; then `_conv_head`, `_bn1`, `_fc`. The weights are ports of the TF
checkpoints: TF SAME padding (`Conv2dStaticSamePadding`, frozen at the `image_size` the model
was built for; the Flax model computes SAME for any size, equal at that size), BN eps 1e-3
and torch momentum 0.01 (`1 - batch_norm_momentum` with TF's 0.99), i.e. Flax 0.99.
"""

from __future__ import annotations

from flax_effnet.convert.formats.base import SourceFormat
from flax_effnet.convert.formats.timm import tf_preprocessing


def _block(spec, global_index):
    p = f"_blocks.{global_index}"
    names = {}
    if spec.expanded_channels != spec.in_channels:
        names.update(conv_exp=f"{p}._expand_conv", bn_exp=f"{p}._bn0")
    names.update(
        {
            "conv_dw": f"{p}._depthwise_conv",
            "bn_dw": f"{p}._bn1",
            "se/reduce": f"{p}._se_reduce",
            "se/expand": f"{p}._se_expand",
            "conv_pwl": f"{p}._project_conv",
            "bn_pwl": f"{p}._bn2",
        }
    )
    return names


def _blocks_per_stage(shapes):
    # The block list is flat; every stage has its own output width (16, 24, 40, ... scaled),
    # so consecutive blocks with the same projection width form a stage.
    widths = []
    i = 0
    while f"_blocks.{i}._project_conv.weight" in shapes:
        widths.append(shapes[f"_blocks.{i}._project_conv.weight"][0])
        i += 1
    counts: list[int] = []
    for j, w in enumerate(widths):
        if j and w == widths[j - 1]:
            counts[-1] += 1
        else:
            counts.append(1)
    return tuple(counts)


FORMAT = SourceFormat(
    name="efficientnet_pytorch",
    description="efficientnet_pytorch EfficientNet.from_name('efficientnet-bX') (TF ports)",
    padding="same",
    stem=("_conv_stem", "_bn0"),
    head=("_conv_head", "_bn1"),
    classifier=("_fc",),
    block=_block,
    blocks_per_stage=_blocks_per_stage,
    bn_epsilon=lambda variant: 1e-3,
    bn_momentum=lambda variant: 0.99,
    preprocessing=tf_preprocessing,
    reference="efficientnet_pytorch.EfficientNet.from_name('efficientnet-bX', image_size=...)",
)
