"""PyTorch EfficientNet checkpoints -> flax_effnet (installed as `flax_effnet.convert`).

Six source formats (torchvision, timm, timm tf_, efficientnet_pytorch and the two seed
documents' code), detected from the keys; b0-b7 detected from the shapes. Needs torch to read
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
