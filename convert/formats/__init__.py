"""The supported PyTorch source formats, one module per family's sources; `FORMATS` maps
`--format` names to them."""

from __future__ import annotations

from flax_effnet.convert.formats import (
    effdet,
    efficientnet_pytorch,
    mobilenet,
    rexnet,
    seed000,
    seed004,
    timm,
    torchvision,
)
from flax_effnet.convert.formats.base import KNOWN_VARIANTS, FamilyFormat, Layout, Row, SourceFormat, key_table

FORMATS: dict[str, SourceFormat | FamilyFormat] = {
    f.name: f
    for f in (
        torchvision.FORMAT,
        timm.TIMM,
        timm.TIMM_TF,
        efficientnet_pytorch.FORMAT,
        seed000.FORMAT,
        seed004.FORMAT,
        *mobilenet.FORMATS,
        *rexnet.FORMATS,
        *effdet.FORMATS,
    )
}
EFFICIENTNET_FORMATS = {n: f for n, f in FORMATS.items() if f.family == "efficientnet"}

__all__ = [
    "EFFICIENTNET_FORMATS",
    "FORMATS",
    "KNOWN_VARIANTS",
    "FamilyFormat",
    "Layout",
    "Row",
    "SourceFormat",
    "key_table",
]
