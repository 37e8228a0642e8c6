"""The preprocessing a checkpoint was trained with, when the file or its neighbours say.

Each source format has a default (`SourceFormat.preprocessing`: torchvision's transforms,
timm's cfgs, ...), but the same architecture is shipped with different normalisations: timm's
AdvProp weights `tf_efficientnet_bX.ap_in1k` expect mean = std = 0.5, not ImageNet's. Fed
ImageNet-normalised images they lose accuracy silently. So, most trusted first:

1. timm's `pretrained_cfg`: in the `config.json` the Hugging Face hub ships beside
   `model.safetensors` (`{"architecture": ..., "pretrained_cfg": {"input_size": [3, H, W],
   "interpolation", "crop_pct", "mean", "std", ...}}`), or in a checkpoint dict;
2. an AdvProp tag in a name that came with the file (`.ap_in1k`, or timm's older
   `tf_efficientnet_bX_ap`): mean = std = 0.5, the rest from the format's default;
3. the format's default.

`resolve` returns the preprocessing and a sentence saying where it came from, for the
converter's report and the saved `source`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from flax_effnet.preprocessing import INCEPTION_MEAN, INCEPTION_STD, Preprocessing

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
# `.ap_in1k` (timm >= 0.9 tags) or `_ap` at the end of an architecture name (timm < 0.9).
_ADVPROP = re.compile(r"(\.ap(_|\b))|(_ap(\b|[._-]))")


def from_timm_cfg(cfg: Mapping[str, Any], default: Preprocessing) -> tuple[Preprocessing, list[str]]:
    """A timm `pretrained_cfg` dict -> Preprocessing; fields it lacks or that cannot be used
    (a non-square input, 'random' interpolation) keep `default`'s, each with a note."""
    fields, notes = {}, []
    size = cfg.get("input_size")
    if isinstance(size, Sequence) and len(size) == 3 and all(isinstance(v, int) for v in size):
        if size[1] == size[2]:
            fields["input_size"] = int(size[1])
        else:
            notes.append(f"pretrained_cfg input_size {list(size)} is not square; kept {default.input_size}")
    for name in ("mean", "std"):
        value = cfg.get(name)
        if isinstance(value, Sequence) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
            fields[name] = tuple(float(v) for v in value)
    crop = cfg.get("crop_pct")
    if isinstance(crop, (int, float)) and 0 < crop <= 1:
        fields["crop_pct"] = float(crop)
    interpolation = cfg.get("interpolation")
    if interpolation in _INTERPOLATIONS:
        fields["interpolation"] = interpolation
    elif interpolation is not None:
        notes.append(f"pretrained_cfg interpolation {interpolation!r} is not one of "
                     f"{', '.join(_INTERPOLATIONS)}; kept {default.interpolation}")
    if cfg.get("crop_mode") not in (None, "center"):
        notes.append(f"pretrained_cfg crop_mode {cfg['crop_mode']!r}: the predictor centre-crops")
    prep = Preprocessing(**{**default.__dict__, **fields})
    return prep, notes


def advprop_hint(hints: Sequence[str]) -> str | None:
    """The first name that marks AdvProp weights, or None."""
    return next((h for h in hints if _ADVPROP.search(h.split(": ", 1)[-1].lower())), None)


def resolve(
    default: Preprocessing,
    pretrained_cfg: tuple[Mapping[str, Any], str] | None,
    hints: Sequence[str],
    format_name: str,
) -> tuple[Preprocessing, str, list[str]]:
    """(preprocessing, where it came from, notes) for a converted checkpoint.

    Args:
      default: the format's default preprocessing for the variant.
      pretrained_cfg: (timm pretrained_cfg dict, where it was found), if any.
      hints: names that came with the file (arch fields, config.json, the file name).
      format_name: the source format, for the sentence.
    """
    if pretrained_cfg is not None:
        cfg, where = pretrained_cfg
        prep, notes = from_timm_cfg(cfg, default)
        return prep, f"timm pretrained_cfg in {where}", notes
    tagged = advprop_hint(hints)
    if tagged is not None:
        prep = Preprocessing(**{**default.__dict__, "mean": INCEPTION_MEAN, "std": INCEPTION_STD})
        return prep, f"{format_name} default, with AdvProp's mean = std = 0.5 (named in {tagged!r})", []
    return default, f"{format_name} default for this architecture", []
