"""flax_effnet: EfficientNet B0-B7 in JAX/Flax linen, with exact PyTorch weight conversion."""

from flax_effnet.layers import DepthwiseConv, DropPath, SqueezeExcite, pad_amounts
from flax_effnet.pretrained import load_pretrained, save_pretrained
from flax_effnet.preprocessing import Preprocessing
from flax_effnet.model import EfficientNet, MBConv, stage_channels
from flax_effnet.specs import (
    BASE_STAGES,
    VARIANTS,
    BlockSpec,
    StageSpec,
    VariantSpec,
    make_divisible,
    scale_network,
    stage_strides,
)

__all__ = [
    "BASE_STAGES",
    "VARIANTS",
    "BlockSpec",
    "DepthwiseConv",
    "DropPath",
    "EfficientNet",
    "MBConv",
    "Preprocessing",
    "SqueezeExcite",
    "StageSpec",
    "VariantSpec",
    "load_pretrained",
    "make_divisible",
    "pad_amounts",
    "save_pretrained",
    "scale_network",
    "stage_channels",
    "stage_strides",
]
