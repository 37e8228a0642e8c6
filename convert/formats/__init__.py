"""The supported PyTorch source formats, one module each; `FORMATS` maps `--format` names to them."""

from __future__ import annotations

from flax_effnet.convert.formats import efficientnet_pytorch, seed000, seed004, timm, torchvision
from flax_effnet.convert.formats.base import KNOWN_VARIANTS, Row, SourceFormat, key_table

FORMATS: dict[str, SourceFormat] = {
    f.name: f
    for f in (
        torchvision.FORMAT,
        timm.TIMM,
        timm.TIMM_TF,
        efficientnet_pytorch.FORMAT,
        seed000.FORMAT,
        seed004.FORMAT,
    )
}

__all__ = ["FORMATS", "KNOWN_VARIANTS", "Row", "SourceFormat", "key_table"]
