"""Box coding and overlap, in effdet's conventions: boxes `(y1, x1, y2, x2)`, codes
`(ty, tx, th, tw)` relative to an anchor, no scale factors.

Reference: effdet 0.4.1 `anchors.decode_box_outputs` and `object_detection/box_coder.py`
(`FasterRcnnBoxCoder.encode`), `object_detection/region_similarity_calculator.py` (`iou`). The op
order follows theirs so float32 results agree to rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# FasterRcnnBoxCoder's EPS: added to every height and width before division and log.
ENCODE_EPS = 1e-7


def decode_boxes(codes: jax.Array, anchors: jax.Array, *, xyxy: bool = False) -> jax.Array:
    """Boxes from codes `[..., 4]` relative to anchors `[..., 4]` (yxyx), effdet's
    `decode_box_outputs`.

    No clamp on `exp(th)`, `exp(tw)`, as effdet: a wild code gives a huge (or inf) box rather than
    a silently different one.

    Returns:
      `[..., 4]` boxes, `(y1, x1, y2, x2)`, or `(x1, y1, x2, y2)` with `xyxy=True` (the order NMS
      and most drawing code want).
    """
    ycenter_a = (anchors[..., 0] + anchors[..., 2]) / 2
    xcenter_a = (anchors[..., 1] + anchors[..., 3]) / 2
    ha = anchors[..., 2] - anchors[..., 0]
    wa = anchors[..., 3] - anchors[..., 1]
    ty, tx, th, tw = (codes[..., i] for i in range(4))
    w = jnp.exp(tw) * wa
    h = jnp.exp(th) * ha
    ycenter = ty * ha + ycenter_a
    xcenter = tx * wa + xcenter_a
    ymin, xmin = ycenter - h / 2.0, xcenter - w / 2.0
    ymax, xmax = ycenter + h / 2.0, xcenter + w / 2.0
    order = (xmin, ymin, xmax, ymax) if xyxy else (ymin, xmin, ymax, xmax)
    return jnp.stack(order, axis=-1)


def _centers_and_sizes(boxes: jax.Array):
    """(yc, xc, h, w) as effdet's `BoxList.get_center_coordinates_and_sizes` computes them."""
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + h / 2.0, boxes[..., 1] + w / 2.0, h, w


def encode_boxes(boxes: jax.Array, anchors: jax.Array, eps: float = ENCODE_EPS) -> jax.Array:
    """Codes `[..., 4]` `(ty, tx, th, tw)` of yxyx boxes relative to yxyx anchors (training
    targets), `FasterRcnnBoxCoder.encode` without scale factors; `eps` keeps log and division
    finite for empty boxes."""
    ycenter_a, xcenter_a, ha, wa = _centers_and_sizes(anchors)
    ycenter, xcenter, h, w = _centers_and_sizes(boxes)
    ha, wa, h, w = ha + eps, wa + eps, h + eps, w + eps
    tx = (xcenter - xcenter_a) / wa
    ty = (ycenter - ycenter_a) / ha
    tw = jnp.log(w / wa)
    th = jnp.log(h / ha)
    return jnp.stack([ty, tx, th, tw], axis=-1)


def box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """Pairwise IoU `[N, M]` of yxyx boxes `[N, 4]` and `[M, 4]`; 0 where they do not intersect
    (so two empty boxes give 0, not NaN), as effdet's `iou`."""
    y1a, x1a, y2a, x2a = (boxes1[:, None, i] for i in range(4))
    y1b, x1b, y2b, x2b = (boxes2[None, :, i] for i in range(4))
    ih = jnp.maximum(jnp.minimum(y2a, y2b) - jnp.maximum(y1a, y1b), 0)
    iw = jnp.maximum(jnp.minimum(x2a, x2b) - jnp.maximum(x1a, x1b), 0)
    inter = ih * iw
    area1 = (y2a - y1a) * (x2a - x1a)
    area2 = (y2b - y1b) * (x2b - x1b)
    union = area1 + area2 - inter
    return jnp.where(inter == 0.0, 0.0, inter / jnp.where(inter == 0.0, 1.0, union))
