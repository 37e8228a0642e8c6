"""flax_effnet: efficient vision models in JAX/Flax linen (EfficientNet, MobileNetV1/V2, ReXNet,
the EfficientDet detector), with exact PyTorch weight conversion.

`import flax_effnet` imports every family module, each of which registers itself, so
`create_model(name)` and `list_models()` know every model.
"""

from flax_effnet.layers import DepthwiseConv, DropPath, SqueezeExcite, pad_amounts
from flax_effnet.preprocessing import Preprocessing
from flax_effnet.registry import (
    Family,
    ModelEntry,
    create_model,
    family_of,
    get_family,
    list_models,
    model_entry,
    register_family,
    register_model,
)
from flax_effnet.model import EfficientNet, MBConv, stage_channels
from flax_effnet.efficientdet import EfficientDet
from flax_effnet.mobilenetv1 import MobileNetV1
from flax_effnet.mobilenetv2 import MobileNetV2
from flax_effnet.rexnet import ReXNet
from flax_effnet.rexnet_lite import ReXNetLite
from flax_effnet.pretrained import load_pretrained, save_pretrained
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
    "EfficientDet",
    "EfficientNet",
    "Family",
    "MBConv",
    "MobileNetV1",
    "MobileNetV2",
    "ModelEntry",
    "Preprocessing",
    "ReXNet",
    "ReXNetLite",
    "SqueezeExcite",
    "StageSpec",
    "VariantSpec",
    "create_model",
    "family_of",
    "get_family",
    "list_models",
    "load_pretrained",
    "make_divisible",
    "model_entry",
    "pad_amounts",
    "register_family",
    "register_model",
    "save_pretrained",
    "scale_network",
    "stage_channels",
    "stage_strides",
]
