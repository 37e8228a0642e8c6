"""Anchor settings of a detector, in effdet's (= TF automl's) terms, and the anchor boxes they
place on an image.

Reference: effdet 0.4.1 `effdet/anchors.py` (`Anchors`, `get_feat_sizes`), itself a port of
google/automl `efficientdet/anchors.py`; the boxes here equal its `Anchors(...).boxes`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorSpec:
    """Where a detector's anchors sit: one set of `num_anchors` per feature-map location.

    The model's head layout depends on it (its outputs have `num_anchors * classes` channels), so
    it is a model field and saved with the weights.

    Attributes:
      min_level, max_level: pyramid levels; level l has stride 2**l.
      num_scales: scale octaves per level, 2**(i / num_scales) for i < num_scales.
      aspect_ratios: (x, y) factors per anchor shape, in effdet's order.
      anchor_scale: anchor size in units of the level's stride.
    """

    min_level: int = 3
    max_level: int = 7
    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
    anchor_scale: float = 4.0

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location."""
        return self.num_scales * len(self.aspect_ratios)

    def feat_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(height, width) of the feature map at each level min_level..max_level.

        Each level halves the previous one rounding up (`(s - 1) // 2 + 1`), as a stride-2 SAME
        conv or pool does; effdet's `get_feat_sizes`.
        """
        h, w = _check_size(image_size)
        sizes = []
        for level in range(1, self.max_level + 1):
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            if level >= self.min_level:
                sizes.append((h, w))
        return sizes

    def boxes(self, image_size: tuple[int, int]) -> np.ndarray:
        """All anchor boxes of an input image, `[N, 4]` float32 `(y1, x1, y2, x2)` in input pixels.

        Order = the model's flattened head outputs: level, then feature-map row, column, then
        anchor (scale octave outer, aspect ratio inner). Computed in float64 and rounded once,
        with effdet's formulas (the stride is image size / feature size, so non-square and
        non-power-of-two sizes match too).
        """
        h, w = _check_size(image_size)
        levels = []
        for fh, fw in self.feat_sizes((h, w)):
            stride_y, stride_x = h / float(fh), w / float(fw)
            # effdet builds the centres with np.arange; the same call gives the same values.
            xv, yv = np.meshgrid(np.arange(stride_x / 2, w, stride_x),
                                 np.arange(stride_y / 2, h, stride_y))
            yv, xv = yv.reshape(-1, 1), xv.reshape(-1, 1)
            half_y, half_x = [], []
            for octave in range(self.num_scales):
                scale = 2 ** (octave / float(self.num_scales))
                for aspect_x, aspect_y in self.aspect_ratios:
                    half_x.append(self.anchor_scale * stride_x * scale * aspect_x / 2.0)
                    half_y.append(self.anchor_scale * stride_y * scale * aspect_y / 2.0)
            half_y, half_x = np.array(half_y)[None], np.array(half_x)[None]
            level = np.stack([yv - half_y, xv - half_x, yv + half_y, xv + half_x], axis=-1)
            levels.append(level.reshape(-1, 4))
        return np.concatenate(levels).astype(np.float32)


def _check_size(image_size) -> tuple[int, int]:
    if len(image_size) != 2 or any(int(s) != s or s < 1 for s in image_size):
        raise ValueError(f"image_size must be (height, width) in pixels, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def flatten_levels(outputs: Sequence[jax.Array], last: int) -> jax.Array:
    """Concatenates per-level NHWC head outputs `[B, H_l, W_l, A * last]` into `[B, N, last]`.

    The row order is the anchor order of `AnchorSpec.boxes` (level, y, x, anchor), because the
    heads lay their channels out anchor-major (channel = anchor * last + j), as effdet's do.
    """
    return jnp.concatenate([o.reshape(o.shape[0], -1, last) for o in outputs], axis=1)


def as_flat(outputs, last: int) -> jax.Array:
    """Head outputs as `[B, N, last]`: a per-level sequence is flattened, an array taken as is."""
    return flatten_levels(outputs, last) if isinstance(outputs, Sequence) else outputs
