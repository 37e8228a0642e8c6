"""From head outputs to final detections: top-k, box decoding, class-aware NMS, under jit.

Reference: effdet 0.4.1 `bench._post_process` (top-k over all anchor x class logits) and
`anchors.generate_detections` (decode, optional clip, sigmoid, `torchvision.ops.batched_nms`,
keep the best `max_det_per_image`, rescale). Everything has a static shape: NMS keeps a fixed
number of slots and says which are filled in `valid`, so `detect` compiles once per input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from flax_effnet.detection.anchors import as_flat, flatten_levels
from flax_effnet.detection.boxes import decode_boxes


class Detections(NamedTuple):
    """Detections of a batch, `K = max_detections` slots per image, best score first.

    Attributes:
      boxes: `[B, K, 4]` float32 `(x1, y1, x2, y2)` in input-image pixels (original-image pixels
        when `detect` is given `img_scale`).
      scores: `[B, K]` sigmoid class probabilities.
      classes: `[B, K]` int32 0-based class ids.
      valid: `[B, K]` bool; unfilled slots have zero boxes and scores and class -1.
    """

    boxes: jax.Array
    scores: jax.Array
    classes: jax.Array
    valid: jax.Array


def nms(boxes: jax.Array, scores: jax.Array, classes: jax.Array, *, iou_threshold: float,
        max_output: int) -> tuple[jax.Array, jax.Array]:
    """Class-aware greedy hard NMS of one image's candidates, torchvision `batched_nms` semantics.

    A box is dropped when a higher-scoring kept box of the same class overlaps it with IoU
    `> iou_threshold` (boxes of different classes never suppress each other). Instead of a
    `K x K` IoU matrix, each of `max_output` steps takes the best remaining box and suppresses
    against it: the same kept boxes in the same order (highest score first; equal scores keep
    the lower index first, as a stable sort does), in `O(max_output * K)`.

    Args:
      boxes: `[K, 4]` xyxy. scores: `[K]`. classes: `[K]` int.
    Returns:
      (indices `[max_output]` int32 into the candidates, valid `[max_output]` bool).
    """
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    positions = jnp.arange(scores.shape[0])

    def step(alive, _):
        best = jnp.argmax(jnp.where(alive, scores, -jnp.inf))
        found = alive[best]
        # torchvision's CPU kernel: inter / (area_kept + area_other - inter); NaN (0/0) never
        # suppresses.
        iw = jnp.maximum(jnp.minimum(x2[best], x2) - jnp.maximum(x1[best], x1), 0)
        ih = jnp.maximum(jnp.minimum(y2[best], y2) - jnp.maximum(y1[best], y1), 0)
        inter = iw * ih
        iou = inter / (areas[best] + areas - inter)
        suppressed = (iou > iou_threshold) & (classes == classes[best])
        alive = alive & ~suppressed & (positions != best)
        return alive, (best.astype(jnp.int32), found)

    _, (indices, valid) = jax.lax.scan(step, jnp.ones(scores.shape, bool), None,
                                       length=max_output)
    return indices, valid


def detect(class_outputs, box_outputs, anchor_boxes, *, max_detections: int = 100,
           iou_threshold: float = 0.5, top_k: int = 5000, img_scale: jax.Array | None = None,
           img_size: jax.Array | None = None) -> Detections:
    """Final detections from EfficientDet's head outputs, effdet's `DetBenchPredict` post-process.

    Per image: the `top_k` largest logits over all (anchor, class) pairs, their boxes decoded
    from the anchors, sigmoid scores, class-aware NMS, the `max_detections` best kept. Jit-able
    (shapes are static); `jax.jit(detect, static_argnames=("max_detections", "iou_threshold",
    "top_k"))`.

    Args:
      class_outputs: per-level NHWC `[B, H_l, W_l, A * C]` (the model's output) or `[B, N, C]`.
      box_outputs: per-level NHWC `[B, H_l, W_l, A * 4]` or `[B, N, 4]`.
      anchor_boxes: `[N, 4]` yxyx from `AnchorSpec.boxes(input size)`.
      max_detections, iou_threshold, top_k: effdet's `max_det_per_image`, NMS IoU,
        `max_detection_points`.
      img_scale: optional `[B]` original / input size ratio of letterboxed images (effdet's
        `img_scale`): boxes come back in original-image pixels.
      img_size: optional `[B, 2]` original (height, width); with `img_scale`, boxes are first
        clipped to the image (in input pixels, `img_size / img_scale`), as effdet does.
    Returns:
      `Detections` with `max_detections` slots per image.
    """
    box = as_flat(box_outputs, 4)
    n = anchor_boxes.shape[0]
    if box.shape[1] != n:
        raise ValueError(f"box outputs have {box.shape[1]} anchors, anchor_boxes {n}")
    if isinstance(class_outputs, Sequence):
        total = sum(o.shape[1] * o.shape[2] * o.shape[3] for o in class_outputs)
        if total % n:
            raise ValueError(f"class outputs ({total} values per image) do not divide into {n} "
                             "anchors")
        class_outputs = flatten_levels(class_outputs, total // n)
    cls = class_outputs
    batch, _, num_classes = cls.shape
    k = min(top_k, n * num_classes)
    clip = img_scale is not None and img_size is not None

    def one(cls_i, box_i, scale_i, size_i):
        logits, flat_idx = jax.lax.top_k(cls_i.reshape(-1), k)
        anchor_idx, class_idx = flat_idx // num_classes, flat_idx % num_classes
        boxes = decode_boxes(box_i[anchor_idx].astype(jnp.float32), anchor_boxes[anchor_idx],
                             xyxy=True)
        if clip:
            limit = jnp.asarray(size_i, jnp.float32)[::-1] / scale_i  # (w, h) for x, y
            boxes = jnp.minimum(jnp.maximum(boxes, 0), jnp.tile(limit, 2))
        scores = jax.nn.sigmoid(logits.astype(jnp.float32))
        keep, valid = nms(boxes, scores, class_idx, iou_threshold=iou_threshold,
                          max_output=max_detections)
        boxes = jnp.where(valid[:, None], boxes[keep], 0.0)
        if scale_i is not None:
            boxes = boxes * scale_i
        return Detections(boxes, jnp.where(valid, scores[keep], 0.0),
                          jnp.where(valid, class_idx[keep], -1).astype(jnp.int32), valid)

    scale = None if img_scale is None else jnp.asarray(img_scale, jnp.float32).reshape(batch)
    return jax.vmap(one)(cls, box, scale, img_size if clip else None)
