"""PyTorch checkpoints -> flax_effnet (installed as `flax_effnet.convert`).

Thirteen source formats, detected from the keys, each belonging to one model family:
EfficientNet (torchvision, timm, timm tf_, efficientnet_pytorch, seed 000/004 code; b0-b7
detected from the shapes), MobileNetV2 (torchvision, timm, seed 002 code), MobileNetV1 (timm),
ReXNet (timm, clovaai = seed 003 code) and ReXNet-lite (clovaai = seed 003 code); the
architecture is found by matching the shapes against candidate models. Needs torch to read
`.pth` files (the `convert` extra); the model package `flax_effnet` never imports this.

    from flax_effnet.convert import convert_file, convert_state_dict
    model, variables, info = convert_file("b0.pth", "b0_flax")
"""

from flax_effnet.convert.api import ConversionInfo, convert_file, convert_state_dict
from flax_effnet.convert.errors import (
    CheckpointReadError,
    ConversionError,
    KeyMismatchError,
    UnknownFormatError,
    UnknownVariantError,
    UnsafeCheckpointError,
)
from flax_effnet.convert.formats import FORMATS

__all__ = [
    "FORMATS",
    "CheckpointReadError",
    "ConversionError",
    "ConversionInfo",
    "KeyMismatchError",
    "UnknownFormatError",
    "UnknownVariantError",
    "UnsafeCheckpointError",
    "convert_file",
    "convert_state_dict",
]
