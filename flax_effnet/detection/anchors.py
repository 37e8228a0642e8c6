"""Anchor settings of a detector, in effdet's (= TF automl's) terms."""

from __future__ import annotations

import dataclasses


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
