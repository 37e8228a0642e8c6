"""The built-in detection dataset: procedurally generated shapes with exact boxes (no download).

`shapes-v1` has 3 classes (rectangle, ellipse, triangle). Each image is 96-160 px on a side
(not square, so the letterbox to the model size matters), with a textured background: a
two-colour gradient in a random direction, a low-frequency blotch pattern and pixel noise.
On it lie 1-4 filled shapes, 22-60 % of the shorter side, each in a colour at least 80 apart
in brightness from the background under it, overlapping earlier ones by at most 0.1 IoU, so
every box is a visible object. The box is the shape's exact bounding box: a rectangle fills
it, an ellipse touches its four sides, a triangle has its base on one side and its apex on
the opposite one (pointing up, down, left or right).

Record i of a split is a pure function of (seed, split, i), drawn on demand (a few hundred
microseconds), so the dataset is never written to disk and a resumed run reads the same
images. 2,000 training and 200 validation images by default.

Why shapes: an object's class is its outline alone (colour and size are random), so the
detector must learn both where and what, yet a small model learns it from scratch in a few
CPU minutes. (Seed-family research note, section 6.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

NAME = "shapes-v1"
CLASSES = ("rectangle", "ellipse", "triangle")
SPLITS = {"train": 2000, "val": 200}
_SPLIT_IDS = {"train": 0, "val": 1}
SIZE_RANGE = (96, 160)
MAX_OBJECTS = 4
DESCRIPTION = (
    f"built-in '{NAME}' detection dataset: {len(CLASSES)} procedurally generated shape classes "
    f"({', '.join(CLASSES)}), 1-{MAX_OBJECTS} per image, {SPLITS['train']} train / {SPLITS['val']} "
    f"val images of {SIZE_RANGE[0]}-{SIZE_RANGE[1]} px (no download)"
)


def _luma(c) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xyxy boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Float HWC texture: gradient between two colours, blotches, noise."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / max(width, height)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = a + (b - a) * t[..., None]
    coarse = rng.normal(0, rng.uniform(5, 25), size=(height // 16 + 2, width // 16 + 2, 3))
    blotches = np.asarray(Image.fromarray(coarse.astype(np.float32)[..., 0]).resize(
        (width, height), Image.Resampling.BICUBIC))
    image = image + blotches[..., None]
    return image + rng.normal(0, 6, size=image.shape)


def _draw(draw: ImageDraw.ImageDraw, kind: int, box: np.ndarray, colour: tuple, rng) -> None:
    """Fill shape `kind` whose exact bounding box is the xyxy `box` (pixel edges)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    # PIL treats coordinates as pixel centres with both ends included: the last covered pixel
    # of a box ending at edge x1 is x1 - 1.
    if kind == 0:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif kind == 1:
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
    else:
        direction = int(rng.integers(4))
        xm, ym = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
        points = [[(x0, y1 - 1), (x1 - 1, y1 - 1), (xm, y0)],   # apex up
                  [(x0, y0), (x1 - 1, y0), (xm, y1 - 1)],       # apex down
                  [(x1 - 1, y0), (x1 - 1, y1 - 1), (x0, ym)],   # apex left
                  [(x0, y0), (x0, y1 - 1), (x1 - 1, ym)]][direction]
        draw.polygon(points, fill=colour)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image and its objects: boxes xyxy in image pixels (edges), classes 0-based."""

    image: np.ndarray  # HWC uint8
    boxes: np.ndarray  # [M, 4] float32 xyxy
    classes: np.ndarray  # [M] int32


def render(rng: np.random.Generator) -> Sample:
    """One image, all randomness drawn from `rng`."""
    width, height = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, size=2))
    pixels = _background(rng, width, height)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    boxes, classes = [], []
    short = min(width, height)
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _try in range(20):
            w, h = (int(round(short * f)) for f in rng.uniform(0.22, 0.6, size=2))
            x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
            if all(_iou(box, other) <= 0.1 for other in boxes):
                break
        else:
            continue  # no room for another object
        under = pixels[y0:y0 + h, x0:x0 + w].reshape(-1, 3).mean(0)
        for _ in range(50):
            colour = rng.integers(0, 256, size=3)
            if abs(_luma(colour) - _luma(under)) > 80:
                break
        kind = int(rng.integers(len(CLASSES)))
        _draw(draw, kind, box, tuple(int(c) for c in colour), rng)
        boxes.append(box)
        classes.append(kind)
    return Sample(np.asarray(image), np.stack(boxes).astype(np.float32), np.asarray(classes, np.int32))


class ShapesSource:
    """One split of `shapes-v1` (grain `RandomAccessDataSource` protocol, picklable).

    Records: {"image": HWC uint8, "boxes": [M, 4] float32 xyxy pixels, "classes": [M] int32,
    "index": int64}; M varies per record (the detection transforms pad it).
    """

    class_names = CLASSES

    def __init__(self, split: str, count: int | None = None, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split, self.seed = split, seed
        self.count = SPLITS[split] if count is None else count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, record_key: int) -> dict[str, Any]:
        key = int(record_key)
        if not 0 <= key < self.count:
            raise IndexError(f"record {key} of a {self.count}-image split")
        sample = render(np.random.default_rng([self.seed, _SPLIT_IDS[self.split], key]))
        return {"image": sample.image, "boxes": sample.boxes, "classes": sample.classes,
                "index": np.int64(key)}

    def describe(self, record_key: int) -> str:
        return f"{NAME}:{self.split}[{record_key}]"

    def __repr__(self) -> str:
        return f"ShapesSource({self.split!r}, {self.count} images)"
