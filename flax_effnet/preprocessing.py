"""Image preprocessing that travels with weights: input size, crop_pct, interpolation, mean/std.

Eval preprocessing is timm's: resize the shorter side to `input_size / crop_pct` with the
named interpolation, centre-crop `input_size`, scale to [0, 1], normalise by mean/std.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet weights (timm tf_*, efficientnet_pytorch) scale to [-1, 1] per channel.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a set of weights."""

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


def resample(name: str) -> Image.Resampling:
    """PIL resampling filter for an interpolation name."""
    return _INTERPOLATIONS[name]


def normalize(image: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 HWC -> float32 HWC, scaled to [0, 1] then normalised by mean/std."""
    x = image.astype(np.float32) / 255.0
    return (x - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)


def resize_center_crop(image: Image.Image, prep: Preprocessing) -> Image.Image:
    """Resize the shorter side to input_size/crop_pct, then centre-crop input_size square."""
    size = prep.input_size
    scale_size = math.floor(size / prep.crop_pct)
    w, h = image.size
    # Pixel-exact with timm's eval transform (torchvision Resize(int) + CenterCrop on PIL):
    # the longer side is truncated, not rounded (`_compute_resized_output_size`), and the crop
    # offset is `int(round(d / 2))` with Python's half-to-even rounding. Rounding the long side
    # instead changes it by a pixel for about half of all aspect ratios.
    if w <= h:
        new_w, new_h = scale_size, max(1, int(scale_size * h / w))
    else:
        new_w, new_h = max(1, int(scale_size * w / h)), scale_size
    image = image.resize((new_w, new_h), resample(prep.interpolation))
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def eval_transform(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """A PIL image -> the normalised float32 (size, size, 3) array the model expects."""
    image = resize_center_crop(image.convert("RGB"), prep)
    return normalize(np.asarray(image), prep)


def letterbox(image: Image.Image, prep: Preprocessing) -> tuple[np.ndarray, float]:
    """A PIL image -> (normalised float32 (size, size, 3) array, scale), detectors' input.

    effdet's `ResizePad`: the image is resized by `scale = min(size / h, size / w)` (aspect kept,
    sides truncated to whole pixels) with the named interpolation, placed at the top-left, and
    the rest filled with the mean colour (0 after normalisation). Input pixel coordinates are
    image coordinates times `scale`, so boxes map back by dividing by it.
    """
    image = image.convert("RGB")
    size = prep.input_size
    w, h = image.size
    scale = min(size / w, size / h)
    new_w, new_h = max(1, min(size, int(w * scale))), max(1, min(size, int(h * scale)))
    resized = normalize(np.asarray(image.resize((new_w, new_h), resample(prep.interpolation))), prep)
    out = np.zeros((size, size, 3), np.float32)
    out[:new_h, :new_w] = resized
    return out, float(scale)
