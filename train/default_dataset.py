"""The built-in default dataset: procedurally generated patterns, written once as an image folder.

`patterns-v2` has 6 classes (checkerboard, diagonal, dots, grid, horizontal, vertical): 240
training and 60 validation JPEGs of 80x80 px per class (1440 / 360 in all). Every image is a
two-colour periodic pattern with random colours, period (10-20 px), phase, line width, a small
rotation (up to 8 degrees; `diagonal` is either diagonal, since a horizontal flip maps one to
the other), a lighting gradient and pixel noise, so the class is the pattern's geometry alone.
Images are a pure function of (seed, split, class, index), rendered at 2x and downsampled for
anti-aliasing.

Version 2 has longer periods (10-20 px, was 8-16), thinner grid lines and smaller dots: in
v1, dark dots on a light background at the shortest periods looked, 64 px wide, like a grid
with dark lines, and the dots/grid confusion decided whether a run ended at 94 or 98 %.

Why patterns and not, say, shapes: the task should be learnable by a small network from
scratch in a few CPU minutes, through the full augmentation, so that the default run shows a
real learning curve and a real held-out accuracy quickly. (Shapes on random backgrounds took
the same tiny model hundreds of steps to leave chance.)

It is written to `$FLAX_EFFNET_CACHE/patterns-v2` (default `~/.cache/flax_effnet`) as
`train/<class>/*.jpg` and `val/<class>/*.jpg`, the layout of a user's image folder, so the
default run goes through exactly the same input code as a real dataset. Generation takes a
few seconds; the folder is built in a temporary sibling and renamed into place, so an
interrupted run never leaves a partial dataset behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

NAME = "patterns-v2"
CLASSES = ("checkerboard", "diagonal", "dots", "grid", "horizontal", "vertical")
IMAGE_SIZE = 80
SPLITS = {"train": 240, "val": 60}
_SPLIT_IDS = {"train": 0, "val": 1}
_SUPERSAMPLE = 2
DESCRIPTION = (
    f"built-in '{NAME}' dataset: {len(CLASSES)} procedurally generated pattern classes "
    f"({', '.join(CLASSES)}), {SPLITS['train']} train / {SPLITS['val']} val images per class, "
    f"{IMAGE_SIZE}x{IMAGE_SIZE} JPEG (no download)"
)


def cache_root() -> Path:
    return Path(os.environ.get("FLAX_EFFNET_CACHE", Path.home() / ".cache" / "flax_effnet"))


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and foreground colours at least 60 apart in brightness."""
    a = rng.integers(0, 256, size=3)
    for _ in range(50):
        b = rng.integers(0, 256, size=3)
        if abs(_luma(a) - _luma(b)) > 60:
            break
    return a.astype(np.float32), b.astype(np.float32)


def _frac(v: np.ndarray) -> np.ndarray:
    return v - np.floor(v)


def pattern_mask(pattern: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Boolean (size, size) foreground of one pattern, randomness from `rng`."""
    period = rng.uniform(10, 20) * _SUPERSAMPLE
    theta = math.radians(rng.uniform(-8, 8))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx * math.cos(theta) + yy * math.sin(theta)) / period + rng.uniform()
    v = (-xx * math.sin(theta) + yy * math.cos(theta)) / period + rng.uniform()
    width = rng.uniform(0.3, 0.55)
    if pattern == "horizontal":
        return _frac(v) < width
    if pattern == "vertical":
        return _frac(u) < width
    if pattern == "diagonal":
        sign = 1.0 if rng.random() < 0.5 else -1.0
        return _frac((u + sign * v) / math.sqrt(2.0)) < width
    if pattern == "checkerboard":
        return (np.floor(u) + np.floor(v)) % 2 == 0
    if pattern == "grid":
        thin = width * 0.4
        return (_frac(u) < thin) | (_frac(v) < thin)
    if pattern == "dots":
        radius = rng.uniform(0.18, 0.3)
        return (_frac(u) - 0.5) ** 2 + (_frac(v) - 0.5) ** 2 < radius**2
    raise ValueError(f"unknown pattern {pattern!r}")


def render(pattern: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """One image of `pattern`, all randomness drawn from `rng`."""
    big = size * _SUPERSAMPLE
    bg, fg = _two_colours(rng)
    mask = pattern_mask(pattern, rng, big)[..., None]
    pixels = np.where(mask, fg, bg)
    # Lighting: a linear brightness ramp in a random direction.
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:big, 0:big] / big - 0.5
    ramp = 1.0 + rng.uniform(0.0, 0.5) * (xx * math.cos(angle) + yy * math.sin(angle))
    pixels = np.clip(pixels * ramp[..., None], 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
    noise = rng.normal(0, 10, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))


def generate(out: Path, seed: int = 0, per_split: dict[str, int] | None = None) -> None:
    """Write the image folder to `out` (which must not exist)."""
    per_split = per_split or SPLITS
    for split, count in per_split.items():
        for label, pattern in enumerate(CLASSES):
            folder = out / split / pattern
            folder.mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([seed, _SPLIT_IDS[split], label, i])
                render(pattern, rng).save(folder / f"{pattern}_{i:04d}.jpg", quality=92)
    manifest = {"name": NAME, "classes": list(CLASSES), "splits": per_split, "seed": seed,
                "image_size": IMAGE_SIZE}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def ensure_dataset(root: str | os.PathLike | None = None, *, seed: int = 0,
                   per_split: dict[str, int] | None = None) -> Path:
    """The dataset's folder, generated on first use (atomically: temp dir, then rename).

    Args:
      root: where to put it; default `cache_root() / NAME`.
      seed: generation seed (the default run uses 0).
      per_split: images per class and split; default 240 train / 60 val. Tests use fewer.

    Returns:
      The folder, holding `train/<class>/*.jpg`, `val/<class>/*.jpg` and `manifest.json`.
    """
    out = Path(root) if root is not None else cache_root() / NAME
    if (out / "manifest.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        shutil.rmtree(tmp)
        generate(tmp, seed, per_split)
        try:
            os.replace(tmp, out)
        except OSError:
            # Another process finished first (the target is a non-empty directory): use its copy.
            if not (out / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
