"""effdet's post-processing, runnable on this CPU torch: its `batched_nms` replaced by a numpy
re-implementation of torchvision's semantics (the compiled `torchvision::nms` kernel does not load
with this torch build), everything else effdet's own code.
"""

from __future__ import annotations

import numpy as np


def import_effdet():
    """effdet, importable here (its import pulls in torchvision)."""
    from flax_effnet.convert.verify import import_torchvision

    import_torchvision()
    import effdet

    return effdet


def numpy_batched_nms(boxes, scores, idxs, iou_threshold: float):
    """torchvision.ops.batched_nms in numpy: per class, greedy in descending score (stable
    sort), dropping boxes with IoU > threshold against a kept one, computed in the boxes' dtype
    as torchvision's CPU kernel does; kept indices returned by descending score."""
    import torch

    b, s, c = boxes.numpy(), scores.numpy(), idxs.numpy()
    keep = []
    for cls in np.unique(c):
        members = np.nonzero(c == cls)[0]
        members = members[np.argsort(-s[members], kind="stable")]
        x1, y1, x2, y2 = (b[members, i] for i in range(4))
        areas = (x2 - x1) * (y2 - y1)
        suppressed = np.zeros(len(members), bool)
        for i in range(len(members)):
            if suppressed[i]:
                continue
            keep.append(members[i])
            iw = np.maximum(np.minimum(x2[i], x2) - np.maximum(x1[i], x1), 0)
            ih = np.maximum(np.minimum(y2[i], y2) - np.maximum(y1[i], y1), 0)
            inter = iw * ih
            with np.errstate(invalid="ignore", divide="ignore"):
                suppressed |= inter / (areas[i] + areas - inter) > iou_threshold
    keep = np.array(keep, np.int64)
    keep = keep[np.argsort(-s[keep], kind="stable")]
    return torch.from_numpy(keep)


def batch_detection(batch_size, class_out, box_out, anchor_boxes, indices, classes,
                    img_scale=None, img_size=None, max_det_per_image: int = 100,
                    soft_nms: bool = False):
    """effdet.bench._batch_detection without TorchScript (whose compiled copy would call the
    missing kernel): the same loop over effdet's `generate_detections`."""
    import torch
    from effdet.anchors import generate_detections

    return torch.stack([
        generate_detections(
            class_out[i], box_out[i], anchor_boxes, indices[i], classes[i],
            None if img_scale is None else img_scale[i], None if img_size is None else img_size[i],
            max_det_per_image=max_det_per_image, soft_nms=soft_nms)
        for i in range(batch_size)])


def patch_effdet_nms(monkeypatch):
    """Route effdet's post-processing (anchors.generate_detections, bench.DetBenchPredict)
    through `numpy_batched_nms`."""
    import effdet.anchors
    import effdet.bench

    monkeypatch.setattr(effdet.anchors, "batched_nms", numpy_batched_nms)
    monkeypatch.setattr(effdet.bench, "_batch_detection", batch_detection)
