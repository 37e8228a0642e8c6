"""Image files: which files count as images, and the one decoder that every reader uses.

The trainer, `predict_efficientnet` and `evaluate_efficientnet` all decode through
`decode_image`, so a model sees in prediction exactly the pixels it was trained on. It returns
an upright, fully decoded 8-bit RGB PIL image whatever the file holds:

- EXIF orientation is applied (a phone photo taken upright comes out upright). Malformed EXIF
  metadata is ignored and the pixels are used as stored: PIL raises struct.error,
  AttributeError or TypeError on some of it, which must not cost an image that decodes fine.
- Palette images become RGB; grayscale is replicated to three channels; CMYK is converted.
- Transparency (RGBA, LA, palette with a transparent colour) is composited over `BACKGROUND`,
  opaque white, as an image viewer on a white page shows it. Dropping the alpha channel instead
  would show whatever colour the file stores under transparent pixels, often black.
- 16-bit images (PNG/TIFF mode `I;16`, or PIL's 32-bit `I`, which holds 16-bit PNGs) are
  scaled by 255/65535; converted by PIL they would clip to nearly white. 16-bit RGB(A) PNGs are
  already reduced to 8 bits by PIL. Float images (mode `F`) are taken to be in [0, 1] and
  scaled by 255; PIL would otherwise truncate them to 0 and 1, nearly black.
- Animated GIF/WebP and multi-page TIFF: the first frame.

Folders: `image_files` lists a folder's images recursively, sorted, skipping hidden files and
folders (`.ipynb_checkpoints` holds copies of a notebook's images); `class_folders` lists the
non-hidden subfolders. The trainer's folder reader and evaluate's both use them.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

# torchvision's ImageFolder list, plus .webp and .jfif.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jfif", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif",
)  # fmt: skip
BACKGROUND = (255, 255, 255)

ImageSource = Union[str, os.PathLike, bytes, bytearray, np.ndarray, Image.Image]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageLoadError(ValueError):
    """An input could not be read as an image; the message says why."""


def _scaled_to_8bit(values: np.ndarray, full_scale: float) -> Image.Image:
    """A single-channel array with values in [0, full_scale] -> 8-bit grayscale image."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=full_scale, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8), "L")


def _over_background(image: Image.Image) -> Image.Image:
    """Composite a transparent image over opaque `BACKGROUND`."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, with the rules in the module docstring."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        return _scaled_to_8bit(np.asarray(image), 65535.0).convert("RGB")
    if mode == "F":
        return _scaled_to_8bit(np.asarray(image), 1.0).convert("RGB")
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        return _over_background(image)
    return image.convert("RGB")


def _upright(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation; keep the stored pixels when the EXIF data is malformed."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - struct.error, AttributeError, TypeError, ... from bad EXIF
        return image


def array_to_image(array: np.ndarray) -> Image.Image:
    """An HW, HW1, HW3 or HW4 array (uint8, uint16 or float in [0, 1], e.g. a TFDS record) ->
    8-bit RGB image."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"an image array must be HxW or HxWx1/3/4, got shape {a.shape}")
    if a.dtype == np.uint8:
        image = Image.fromarray(a)
    elif a.dtype == np.uint16 or np.issubdtype(a.dtype, np.floating):
        full_scale = 65535.0 if a.dtype == np.uint16 else 1.0
        scaled = np.clip(np.rint(np.nan_to_num(a.astype(np.float64)) * (255.0 / full_scale)), 0, 255)
        image = Image.fromarray(scaled.astype(np.uint8))
    else:
        raise ImageLoadError(f"image arrays must be uint8, uint16 or float, got {a.dtype}")
    return to_rgb(image)


def decode_image(source: ImageSource) -> Image.Image:
    """Decode a file path, encoded bytes, an array or a PIL image to an upright RGB image.

    Raises:
      ImageLoadError: missing, unreadable, truncated or not an image; the message says which.
    """
    if isinstance(source, Image.Image):
        return to_rgb(_upright(source))
    if isinstance(source, np.ndarray):
        return array_to_image(source)
    file = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with Image.open(file) as image:
            image.load()  # PIL decodes lazily; truncated files only fail here
            return to_rgb(_upright(image))
    except FileNotFoundError:
        raise ImageLoadError("no such file") from None
    except IsADirectoryError:
        raise ImageLoadError("is a directory") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError("not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"unreadable image: {e}") from None


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def class_folders(root: str | os.PathLike) -> list[str]:
    """Names of the non-hidden subfolders of `root`, sorted (ImageFolder's class order)."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and _visible(p))


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder`, recursively, sorted; hidden files and folders are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [
            Path(dirpath, f) for f in filenames
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        ]  # fmt: skip
    return sorted(found)
