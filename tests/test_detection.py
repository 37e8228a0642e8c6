"""flax_effnet.detection's own contract: fixed shapes under jit, NMS edge cases, labeler edge
cases, a differentiable loss. (Equality with effdet: test_detection_effdet.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_effnet.detection import (AnchorSpec, decode_boxes, detect, detection_loss,
                                   flatten_levels, label_anchors, nms)

SPEC = AnchorSpec()
IMAGE = (128, 256)
detect_jit = jax.jit(detect, static_argnames=("max_detections", "top_k"))


def head_outputs(rng, num_classes, batch=2, image_size=IMAGE):
    cls = [jnp.asarray(rng.normal(size=(batch, h, w, SPEC.num_anchors * num_classes)), jnp.float32)
           for h, w in SPEC.feat_sizes(image_size)]
    box = [jnp.asarray(0.2 * rng.normal(size=(batch, h, w, SPEC.num_anchors * 4)), jnp.float32)
           for h, w in SPEC.feat_sizes(image_size)]
    return cls, box


def test_detect_jit_fixed_shapes():
    rng = np.random.default_rng(0)
    anchors = jnp.asarray(SPEC.boxes(IMAGE))
    run = jax.jit(detect, static_argnames=("max_detections", "top_k"))
    for _ in range(2):  # new values, same shapes: one compilation
        dets = run(*head_outputs(rng, 3), anchors, max_detections=20, top_k=500)
    assert run._cache_size() == 1
    assert dets.boxes.shape == (2, 20, 4) and dets.scores.shape == (2, 20)
    assert dets.classes.shape == (2, 20) and dets.classes.dtype == jnp.int32
    assert dets.valid.shape == (2, 20) and dets.valid.all()
    scores = np.asarray(dets.scores)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    # Flattened [B, N, C] / [B, N, 4] inputs give the same detections as per-level ones.
    cls, box = head_outputs(np.random.default_rng(1), 3)
    a = run(cls, box, anchors, max_detections=20, top_k=500)
    b = run(flatten_levels(cls, 3), flatten_levels(box, 4), anchors, max_detections=20,
            top_k=500)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_detect_rejects_mismatched_anchors():
    cls, box = head_outputs(np.random.default_rng(0), 3)
    with pytest.raises(ValueError, match="anchors"):
        detect(cls, box, jnp.asarray(SPEC.boxes((256, 256))))


nms_jit = jax.jit(nms, static_argnames=("iou_threshold", "max_output"))


def xyxy(*rows):
    return jnp.asarray(rows, jnp.float32)


def kept(boxes, scores, classes, max_output=5, iou=0.5):
    idx, valid = nms_jit(boxes, jnp.asarray(scores, jnp.float32), jnp.asarray(classes),
                         iou_threshold=iou, max_output=max_output)
    return [int(i) for i, v in zip(idx, valid) if v], np.asarray(valid)


def test_nms_classes_do_not_suppress_each_other():
    boxes = xyxy((0, 0, 10, 10), (0, 0, 10, 10), (1, 0, 11, 10))
    assert kept(boxes, [0.9, 0.8, 0.7], [0, 1, 0])[0] == [0, 1]  # box 2 overlaps box 0 (cls 0)


def test_nms_threshold_is_strict():
    # IoU of (0,0,10,10) and (0,0,10,20) is exactly 0.5: kept (torchvision drops IoU > thr).
    boxes = xyxy((0, 0, 10, 10), (0, 0, 10, 20), (0, 0, 10, 19))
    assert kept(boxes, [0.9, 0.8, 0.7], [0, 0, 0])[0] == [0, 1]  # 2 overlaps 1 by 19/20


def test_nms_ties_keep_the_lower_index():
    boxes = xyxy((0, 0, 10, 10), (0, 0, 10, 10), (50, 50, 60, 60), (50, 50, 60, 60))
    assert kept(boxes, [0.5, 0.5, 0.7, 0.7], [0, 0, 0, 0])[0] == [2, 0]


def test_nms_pads_when_fewer_survive():
    boxes = xyxy((0, 0, 10, 10), (0, 0, 10, 10), (20, 20, 30, 30))
    order, valid = kept(boxes, [0.6, 0.9, 0.3], [2, 2, 2], max_output=5)
    assert order == [1, 2] and valid.tolist() == [True, True, False, False, False]
    # Through detect: 2 anchors x 2 classes = 4 candidates, none overlapping its class's other
    # box; equal logits (-1) in flat (anchor, class) order; padded slots zeroed.
    anchors = xyxy((0, 0, 10, 10), (0, 20, 10, 30))  # yxyx
    logits = jnp.asarray([[[2.0, -1.0], [-1.0, 0.0]]])  # [B=1, N=2, C=2]
    dets = detect_jit(logits, jnp.zeros((1, 2, 4)), anchors, max_detections=6)
    assert dets.valid[0].tolist() == [True, True, True, True, False, False]
    assert dets.classes[0].tolist() == [0, 1, 1, 0, -1, -1]
    np.testing.assert_allclose(dets.boxes[0, 0], [0, 0, 10, 10])  # xyxy of anchor 0
    assert not np.asarray(dets.boxes[0, 4:]).any() and not np.asarray(dets.scores[0, 4:]).any()


def test_detect_scales_back_to_the_original_image():
    anchors = xyxy((0, 0, 40, 40))
    codes = jnp.zeros((1, 1, 4))
    logits = jnp.zeros((1, 1, 1))
    dets = detect_jit(logits, codes, anchors, max_detections=1, img_scale=jnp.asarray([2.0]),
                      img_size=jnp.asarray([[50, 60]]))  # (h, w): in input pixels 25 x 30
    np.testing.assert_allclose(dets.boxes[0, 0], [0, 0, 60, 50])


def test_decode_zero_codes_give_the_anchors():
    anchors = jnp.asarray(SPEC.boxes(IMAGE))
    np.testing.assert_allclose(decode_boxes(jnp.zeros_like(anchors), anchors), anchors,
                               atol=1e-4)


def test_labeler_edge_cases():
    anchors = jnp.asarray(SPEC.boxes(IMAGE))
    # A 3-pixel box overlaps no anchor by 0.5 but still gets its best anchor (force match);
    # a padding row with a box over an anchor is ignored.
    gt = jnp.asarray([[10, 10, 13, 13], [0, 0, 32, 32]], jnp.float32)
    cls, box, num = jax.jit(label_anchors)(anchors, gt, jnp.asarray([4, -1]))
    assert float(num) == 1 and np.asarray(cls).tolist().count(4) == 1
    assert set(np.unique(np.asarray(cls)).tolist()) == {-1, 4}
    assert np.count_nonzero(np.asarray(box).any(axis=1)) == 1
    # Decoding an anchor's target gives its ground-truth box back.
    i = int(np.argmax(np.asarray(cls)))
    np.testing.assert_allclose(decode_boxes(box[i], anchors[i]), gt[0], atol=1e-3)


def test_loss_is_differentiable_and_ignores_ignored_anchors():
    rng = np.random.default_rng(0)
    cls, box = head_outputs(rng, 3, batch=1)
    anchors = jnp.asarray(SPEC.boxes(IMAGE))
    gt = jnp.asarray([[20, 30, 80, 120], [40, 100, 120, 250]], jnp.float32)
    cls_t, box_t, num = jax.jit(label_anchors)(anchors, gt, jnp.asarray([0, 2]))
    cls_t, box_t, num = cls_t[None], box_t[None], num[None]

    def loss(outputs, cls_targets):
        return detection_loss(*outputs, cls_targets, box_t, num, num_classes=3)[0]

    grads = jax.jit(jax.grad(loss))((cls, box), cls_t)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert sum(float(jnp.abs(g).sum()) for g in grads[1]) > 0  # box outputs of positives
    # Marking anchors -2 removes exactly their class loss.
    ignored = cls_t.at[:, :100].set(-2)
    loss_jit = jax.jit(detection_loss, static_argnames="num_classes")
    full = loss_jit(cls, box, cls_t, box_t, num, num_classes=3)
    part = loss_jit(cls, box, ignored, box_t, num, num_classes=3)
    assert float(part[1]) < float(full[1]) and float(part[2]) == float(full[2])
