"""timm `efficientnet_bX` and `tf_efficientnet_bX` (timm/models/efficientnet.py, _efficientnet_blocks.py).

Keys: `conv_stem`, `bn1`, `blocks.S.I.*`, `conv_head`, `bn2`, `classifier`. Stage 0 is built from
`DepthwiseSeparableConv` (`conv_dw`, `bn1`, `se`, `conv_pw`, `bn2`), where `conv_pw` is the
*projection*; the other stages are `InvertedResidual` (`conv_pw` expansion, `bn1`, `conv_dw`,
`bn2`, `se`, `conv_pwl` projection, `bn3`). SE convs are `se.conv_reduce` / `se.conv_expand`.

The two kinds hold identical tensors. `tf_` models are TF ports: `pad_type='same'` (TF SAME)
and `bn_eps=1e-3` (BN_EPS_TF_DEFAULT); the others pad symmetrically with eps 1e-5. Both keep
nn.BatchNorm2d's momentum 0.1 (timm sets only `bn_eps` for `tf_` models), Flax 0.9.
"""

from __future__ import annotations

from flax_effnet.preprocessing import Preprocessing
from flax_effnet.registry import model_entry

from flax_effnet.convert.formats.base import SourceFormat, count_by_stage, variant_name


def block_names(spec, _global_index):
    """timm's `DepthwiseSeparableConv` / `InvertedResidual` names (EfficientNet and MobileNetV2)."""
    p = f"blocks.{spec.stage}.{spec.index}"
    se = {"se/reduce": f"{p}.se.conv_reduce", "se/expand": f"{p}.se.conv_expand"} if spec.se_channels else {}
    if spec.expanded_channels == spec.in_channels:  # DepthwiseSeparableConv
        return {"conv_dw": f"{p}.conv_dw", "bn_dw": f"{p}.bn1", **se, "conv_pwl": f"{p}.conv_pw", "bn_pwl": f"{p}.bn2"}
    return {
        "conv_exp": f"{p}.conv_pw",
        "bn_exp": f"{p}.bn1",
        "conv_dw": f"{p}.conv_dw",
        "bn_dw": f"{p}.bn2",
        **se,
        "conv_pwl": f"{p}.conv_pwl",
        "bn_pwl": f"{p}.bn3",
    }


def _blocks_per_stage(shapes):
    return count_by_stage(shapes, r"blocks\.(\d+)\.(\d+)\.")


def tf_preprocessing(variant) -> Preprocessing:
    """Eval preprocessing of TF-ported EfficientNet weights (timm's tf_efficientnet cfgs)."""
    return model_entry(f"tf_efficientnet_{variant_name(variant)}").preprocessing


def _timm_preprocessing(variant):
    return model_entry(f"efficientnet_{variant_name(variant)}").preprocessing


_COMMON = dict(
    stem=("conv_stem", "bn1"),
    head=("conv_head", "bn2"),
    classifier=("classifier",),
    block=block_names,
    blocks_per_stage=_blocks_per_stage,
    bn_momentum=lambda variant: 0.9,
    # timm's MobileNets share `conv_stem`; only the EfficientNets have squeeze-excite.
    signature=r"blocks\.\d+\.\d+\.se\.conv_reduce\.",
)

TIMM = SourceFormat(
    name="timm",
    description="timm efficientnet_bX (PyTorch-trained: symmetric padding, BN eps 1e-5)",
    padding="symmetric",
    bn_epsilon=lambda variant: 1e-5,
    preprocessing=_timm_preprocessing,
    reference="timm.create_model('efficientnet_bX')",
    **_COMMON,
)

TIMM_TF = SourceFormat(
    name="timm_tf",
    description="timm tf_efficientnet_bX (TF ports: SAME padding, BN eps 1e-3)",
    padding="same",
    bn_epsilon=lambda variant: 1e-3,
    preprocessing=tf_preprocessing,
    reference="timm.create_model('tf_efficientnet_bX')",
    **_COMMON,
)
