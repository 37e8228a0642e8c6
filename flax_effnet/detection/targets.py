"""Training targets: which ground-truth box each anchor learns, effdet's `AnchorLabeler`.

Reference: effdet 0.4.1 `anchors.AnchorLabeler` with `object_detection/argmax_matcher.py`
(`ArgMaxMatcher(0.5, unmatched_threshold=0.5, negatives_lower_than_unmatched=True,
force_match_for_each_row=True)`), `target_assigner.py` and `box_coder.py`. Ground truth comes
padded to a fixed row count so the labeler runs under jit and vmap over a batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flax_effnet.detection.boxes import box_iou, encode_boxes

BACKGROUND = -1
IGNORE = -2  # never produced here (no ignore band); the loss skips anchors labelled so


def label_anchors(anchor_boxes: jax.Array, gt_boxes: jax.Array, gt_classes: jax.Array, *,
                  match_threshold: float = 0.5):
    """Class and box targets of every anchor for one image.

    An anchor is positive for the ground-truth box it overlaps most if that IoU is
    `>= match_threshold`, else background (no ignore band between the thresholds, as effdet).
    Then every ground-truth box takes its best anchor even below the threshold (first anchor on
    ties; where several boxes claim one anchor, the first box wins), so none goes unlearnt.

    Args:
      anchor_boxes: `[N, 4]` yxyx (`AnchorSpec.boxes`).
      gt_boxes: `[G, 4]` yxyx in input pixels.
      gt_classes: `[G]` int 0-based; negative rows are padding and ignored.
      match_threshold: IoU for a positive anchor.
    Returns:
      (cls_targets `[N]` int32: class id, -1 background; box_targets `[N, 4]` float32 codes
      `(ty, tx, th, tw)`, zero for background; num_positives float32 scalar).
    """
    num_gt = gt_boxes.shape[0]
    valid = gt_classes >= 0
    iou = jnp.where(valid[:, None], box_iou(gt_boxes, anchor_boxes), -1.0)  # [G, N]
    best_iou, best_gt = iou.max(axis=0), iou.argmax(axis=0)
    matches = jnp.where(best_iou >= match_threshold, best_gt, -1)
    # Force match: anchor argmax(iou[g]) goes to g; on a clash the lowest g wins, as effdet's
    # torch.max over the one-hot rows returns the first.
    rows = jnp.where(valid, jnp.arange(num_gt), num_gt)
    forced_gt = jnp.full(anchor_boxes.shape[0], num_gt).at[iou.argmax(axis=1)].min(rows)
    matches = jnp.where(forced_gt < num_gt, forced_gt, matches)
    positive = matches >= 0
    gt = jnp.maximum(matches, 0)
    cls_targets = jnp.where(positive, gt_classes[gt], BACKGROUND).astype(jnp.int32)
    box_targets = jnp.where(positive[:, None], encode_boxes(gt_boxes[gt], anchor_boxes), 0.0)
    return cls_targets, box_targets.astype(jnp.float32), positive.sum().astype(jnp.float32)
