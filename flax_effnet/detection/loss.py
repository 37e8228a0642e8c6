"""EfficientDet's training loss: focal loss on the classes, Huber loss on the box codes.

Reference: effdet 0.4.1 `loss.py` (`loss_fn` with `new_focal_loss`, `_box_loss`, `huber_loss`)
at effdet's defaults (alpha .25, gamma 1.5, delta .1, box weight 50, no label smoothing), which
follow google/automl's `det_model_fn`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flax_effnet.detection.anchors import as_flat
from flax_effnet.detection.targets import IGNORE


def focal_loss(logits: jax.Array, targets: jax.Array, *, alpha: float, gamma: float) -> jax.Array:
    """Elementwise sigmoid focal loss, effdet's `new_focal_loss` before normalisation."""
    pred_prob = jax.nn.sigmoid(logits)
    p_t = targets * pred_prob + (1.0 - targets) * (1.0 - pred_prob)
    alpha_factor = targets * alpha + (1.0 - targets) * (1.0 - alpha)
    modulating_factor = (1.0 - p_t) ** gamma
    # torch's binary_cross_entropy_with_logits, written out.
    ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return alpha_factor * modulating_factor * ce


def huber_loss(x: jax.Array, target: jax.Array, *, delta: float) -> jax.Array:
    """Elementwise Huber loss, quadratic up to `delta`, then linear (effdet's `huber_loss`)."""
    abs_err = jnp.abs(x - target)
    quadratic = jnp.minimum(abs_err, delta)
    return 0.5 * quadratic**2 + delta * (abs_err - quadratic)


def detection_loss(class_outputs, box_outputs, cls_targets: jax.Array, box_targets: jax.Array,
                   num_positives: jax.Array, *, num_classes: int, alpha: float = 0.25,
                   gamma: float = 1.5, delta: float = 0.1, box_loss_weight: float = 50.0):
    """Total, class and box loss of a batch, effdet's `DetectionLoss`.

    Both terms are divided by the batch's positive-anchor count + 1 (the box term also by 4,
    its codes per anchor); anchors labelled -2 add no class loss, and only nonzero box targets
    (positive anchors) add box loss.

    Args:
      class_outputs: per-level NHWC `[B, H_l, W_l, A * num_classes]` (the model's output) or
        `[B, N, num_classes]`.
      box_outputs: per-level NHWC `[B, H_l, W_l, A * 4]` or `[B, N, 4]`.
      cls_targets: `[B, N]` int, box_targets `[B, N, 4]`, num_positives `[B]`: `label_anchors`
        per image (vmapped).
    Returns:
      (total, class_loss, box_loss) float32 scalars, total = class + box_loss_weight * box.
    """
    logits = as_flat(class_outputs, num_classes).astype(jnp.float32)
    codes = as_flat(box_outputs, 4).astype(jnp.float32)
    normalizer = jnp.sum(num_positives).astype(jnp.float32) + 1.0
    one_hot = (cls_targets[..., None] == jnp.arange(num_classes)).astype(jnp.float32)
    cls_loss = focal_loss(logits, one_hot, alpha=alpha, gamma=gamma)
    cls_loss = jnp.where((cls_targets != IGNORE)[..., None], cls_loss, 0.0)
    class_loss = jnp.sum(cls_loss) / normalizer
    box_loss = huber_loss(codes, box_targets, delta=delta)
    box_loss = jnp.sum(jnp.where(box_targets != 0.0, box_loss, 0.0)) / (4.0 * normalizer)
    return class_loss + box_loss_weight * box_loss, class_loss, box_loss
