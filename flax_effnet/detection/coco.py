"""COCO box mAP of a set of detections, through pycocotools' `COCOeval` (the figure everybody
quotes), on ground truth and detections held in memory.

Boxes are xyxy in any one pixel frame (the original images' for figures comparable to other
tools: COCO's small/medium/large areas are in those pixels). Class ids are 0-based here and
become COCO category ids 1..num_classes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Sequence

import numpy as np

# COCOeval.stats, in its order.
STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")


@dataclasses.dataclass(frozen=True)
class ImageBoxes:
    """Boxes of one image: xyxy [K, 4], classes [K] (0-based), scores [K] (None for truth)."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray | None = None


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def coco_metrics(ground_truth: Sequence[ImageBoxes], detections: Sequence[ImageBoxes],
                 num_classes: int) -> dict[str, float]:
    """COCOeval bbox statistics: `map` (AP@[.5:.95]), `map50`, `map75`, by area, and AR.

    Args:
      ground_truth: per image, its true boxes and classes.
      detections: per image (same order), predicted boxes, classes and scores.
      num_classes: categories (those without any true box are left out of the mean, as COCO
        does).

    Returns:
      The 12 COCOeval statistics as fractions; -1 where COCO has nothing to average (no true
      box of that size). With no detections at all every AP is 0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} images of ground truth but {len(detections)} of detections")
    images, annotations, results = [], [], []
    for image_id, (gt, det) in enumerate(zip(ground_truth, detections), 1):
        images.append({"id": image_id})
        for box, cls in zip(_xywh(gt.boxes), np.asarray(gt.classes).reshape(-1)):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": 0})
        for box, cls, score in zip(_xywh(det.boxes), np.asarray(det.classes).reshape(-1),
                                   np.asarray(det.scores).reshape(-1)):
            results.append({"image_id": image_id, "category_id": int(cls) + 1, "bbox": box.tolist(),
                            "score": float(score)})
    if not results or not annotations:
        return {name: (0.0 if annotations else -1.0) for name in STAT_NAMES}
    truth = COCO()
    truth.dataset = {"images": images, "annotations": annotations,
                     "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
