"""The built-in default dataset: procedurally generated shapes, written once as an image folder.

`shapes-v1` has 6 classes (circle, square, triangle, star, cross, ring), 240 training and
60 validation JPEGs of 80x80 px each (1440 / 360 in all). Every image draws one shape with a
random colour, size (radius 18-34 % of the side), position and rotation on a random
two-colour gradient background with pixel noise, so the class is the shape alone and colour
tells nothing. Images are a pure function of (seed, split, class, index), rendered with PIL
at 2x and downsampled for anti-aliasing.

It is written to `$FLAX_EFFNET_CACHE/shapes-v1` (default `~/.cache/flax_effnet`) as
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
from PIL import Image, ImageDraw

NAME = "shapes-v1"
CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
IMAGE_SIZE = 80
SPLITS = {"train": 240, "val": 60}
_SPLIT_IDS = {"train": 0, "val": 1}
_SUPERSAMPLE = 2
DESCRIPTION = (
    f"built-in '{NAME}' dataset: {len(CLASSES)} procedurally generated shape classes "
    f"({', '.join(CLASSES)}), {SPLITS['train']} train / {SPLITS['val']} val images per class, "
    f"{IMAGE_SIZE}x{IMAGE_SIZE} JPEG (no download)"
)


def cache_root() -> Path:
    return Path(os.environ.get("FLAX_EFFNET_CACHE", Path.home() / ".cache" / "flax_effnet"))


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    """Vertices at equal angular steps with the given radii, rotated by `angle`."""
    n = len(radii)
    return [
        (cx + r * math.cos(angle + 2 * math.pi * i / n), cy + r * math.sin(angle + 2 * math.pi * i / n))
        for i, r in enumerate(radii)
    ]


def _cross(cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """A plus sign with arms of half-width 0.33 r, as a 12-vertex polygon."""
    a = 0.33 * r
    pts = [(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r),
           (-a, -r), (-a, -a), (-r, -a), (-r, a), (-a, a), (-a, r)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3)


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def render(shape: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """One image of `shape`, all randomness drawn from `rng`."""
    big = size * _SUPERSAMPLE
    # Background: a linear gradient between two random colours in a random direction.
    c0, c1 = _colour(rng), _colour(rng)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:big, 0:big] / big - 0.5
    t = np.clip(0.5 + xx * math.cos(theta) + yy * math.sin(theta), 0, 1)[..., None]
    bg = (1 - t) * c0 + t * c1
    # Foreground colour far enough in brightness from the background's mean to be visible.
    mean_luma = _luma(bg.reshape(-1, 3).mean(0))
    fg = _colour(rng)
    for _ in range(20):
        if abs(_luma(fg) - mean_luma) > 60:
            break
        fg = _colour(rng)
    image = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.18, 0.34) * big
    cx, cy = (0.5 + rng.uniform(-0.15, 0.15, size=2)) * big
    angle = rng.uniform(0, 2 * math.pi)
    fill = tuple(int(v) for v in fg)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, int(0.3 * r)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, [r] * 4, angle), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, [r * 1.15] * 3, angle), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, [r * 1.1, r * 0.45] * 5, angle), fill=fill)
    elif shape == "cross":
        draw.polygon(_cross(cx, cy, r, angle), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    noise = rng.normal(0, 8, size=(size, size, 3))
    pixels = np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def generate(out: Path, seed: int = 0, per_split: dict[str, int] | None = None) -> None:
    """Write the image folder to `out` (which must not exist)."""
    per_split = per_split or SPLITS
    for split, count in per_split.items():
        for label, shape in enumerate(CLASSES):
            folder = out / split / shape
            folder.mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([seed, _SPLIT_IDS[split], label, i])
                render(shape, rng).save(folder / f"{shape}_{i:04d}.jpg", quality=92)
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
