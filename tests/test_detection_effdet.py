"""flax_effnet.detection against effdet 0.4.1 itself: anchors, box coding, final detections,
the anchor labeler and the loss, on random inputs at non-square sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effdet_post_ref import import_effdet, patch_effdet_nms
from flax_effnet.detection import (AnchorSpec, decode_boxes, detect, detection_loss,
                                   encode_boxes, label_anchors)

effdet = import_effdet()
import torch  # noqa: E402  (after effdet's import set-up)
from effdet import anchors as ed_anchors  # noqa: E402
from effdet import bench as ed_bench  # noqa: E402
from effdet import loss as ed_loss  # noqa: E402
from effdet.object_detection import BoxList, FasterRcnnBoxCoder  # noqa: E402

SPEC = AnchorSpec()


def effdet_anchors(spec: AnchorSpec, image_size):
    return ed_anchors.Anchors(spec.min_level, spec.max_level, spec.num_scales,
                              list(spec.aspect_ratios), spec.anchor_scale, image_size)


def random_outputs(rng, image_size, num_classes, batch, grow=0.0):
    """Per-level NHWC head outputs (ours) and the same as NCHW torch tensors (effdet's); `grow`
    is added to the log-size codes (big boxes overlap more, so NMS drops more)."""
    cls, box = [], []
    for h, w in SPEC.feat_sizes(image_size):
        cls.append(rng.normal(size=(batch, h, w, SPEC.num_anchors * num_classes)).astype(np.float32))
        codes = 0.3 * rng.normal(size=(batch, h, w, SPEC.num_anchors, 4)) + (0, 0, grow, grow)
        box.append(codes.reshape(batch, h, w, -1).astype(np.float32))
    to_torch = lambda xs: [torch.from_numpy(x.transpose(0, 3, 1, 2).copy()) for x in xs]  # noqa: E731
    return cls, box, to_torch(cls), to_torch(box)


@pytest.mark.parametrize("spec,image_size", [
    (SPEC, (512, 512)),
    (SPEC, (256, 384)),
    (AnchorSpec(min_level=3, max_level=6, num_scales=2, anchor_scale=5.0), (192, 128)),
])
def test_anchors_equal_effdet(spec, image_size):
    ref = effdet_anchors(spec, image_size)
    ours = spec.boxes(image_size)
    assert ours.dtype == np.float32 and ours.shape[0] == ref.boxes.shape[0]
    np.testing.assert_array_equal(ours, ref.boxes.numpy())
    assert spec.feat_sizes(image_size) == ref.feat_sizes[spec.min_level:]


def test_box_coding_equal_effdet():
    rng = np.random.default_rng(0)
    anchors = SPEC.boxes((256, 384))
    codes = (0.5 * rng.normal(size=anchors.shape)).astype(np.float32)
    for xyxy in (False, True):
        ref = ed_anchors.decode_box_outputs(torch.from_numpy(codes), torch.from_numpy(anchors),
                                            output_xyxy=xyxy).numpy()
        ours = np.asarray(decode_boxes(jnp.asarray(codes), jnp.asarray(anchors), xyxy=xyxy))
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-4)
    # Encoding: boxes near the anchors, and empty ones (the eps keeps log finite).
    boxes = anchors + (8 * rng.normal(size=anchors.shape)).astype(np.float32)
    boxes[:10, 2:] = boxes[:10, :2]
    ref = FasterRcnnBoxCoder().encode(BoxList(torch.from_numpy(boxes)),
                                      BoxList(torch.from_numpy(anchors))).numpy()
    ours = np.asarray(encode_boxes(jnp.asarray(boxes), jnp.asarray(anchors)))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def sorted_rows(boxes, scores, classes):
    """Detections as [K, 6] rows sorted by class, then descending score."""
    order = np.lexsort((-scores, classes))
    return np.concatenate([boxes, scores[:, None], classes[:, None]], 1)[order]


@pytest.mark.parametrize("image_size,num_classes,top_k,scaled", [
    ((256, 384), 5, 5000, False),
    # big clipped boxes: fewer than 100 survive NMS, so the padding is compared too
    ((128, 256), 1, 1000, True),
])
def test_detections_equal_effdet(monkeypatch, image_size, num_classes, top_k, scaled):
    patch_effdet_nms(monkeypatch)
    rng = np.random.default_rng(1)
    batch = 2
    cls, box, cls_t, box_t = random_outputs(rng, image_size, num_classes, batch,
                                            grow=1.5 if scaled else 0.0)
    ref_anchors = effdet_anchors(SPEC, image_size).boxes
    img_scale = img_size = None
    if scaled:  # letterboxed originals: scale back and clip as effdet does
        img_scale = np.array([1.5, 0.75], np.float32)
        img_size = np.array([[150, 300], [90, 180]], np.float32)  # (height, width)
    outs = ed_bench._post_process(cls_t, box_t, num_levels=SPEC.num_levels,
                                  num_classes=num_classes, max_detection_points=top_k)
    ref = ed_bench._batch_detection(
        batch, *outs[:2], ref_anchors, *outs[2:],
        None if img_scale is None else torch.from_numpy(img_scale),
        None if img_size is None else torch.from_numpy(img_size[:, ::-1].copy()),  # (w, h)
        max_det_per_image=100).numpy()

    ours = jax.jit(detect, static_argnames="top_k")(
        cls, box, jnp.asarray(SPEC.boxes(image_size)), top_k=top_k, img_scale=img_scale,
        img_size=img_size)
    counts = []
    for i in range(batch):
        n = int(ours.valid[i].sum())
        counts.append(n)
        ref_rows = ref[i][ref[i, :, 4] > 0]
        assert n == len(ref_rows)
        assert not np.asarray(ours.valid[i, n:]).any()  # valid slots come first
        got = sorted_rows(np.asarray(ours.boxes[i, :n]), np.asarray(ours.scores[i, :n]),
                          np.asarray(ours.classes[i, :n]) + 1)  # effdet's 1-based classes
        want = sorted_rows(ref_rows[:, :4], ref_rows[:, 4], ref_rows[:, 5])
        np.testing.assert_array_equal(got[:, 5], want[:, 5])
        np.testing.assert_allclose(got[:, 4], want[:, 4], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got[:, :4], want[:, :4], rtol=1e-6, atol=1e-3)
    assert (max(counts) < 100) == scaled, counts


def random_gt(rng, image_size, num_gt, num_classes):
    h, w = image_size
    yx = rng.uniform(0, 1, size=(num_gt, 2)) * (h, w)
    hw = rng.uniform(4, 0.6 * min(h, w), size=(num_gt, 2))
    boxes = np.concatenate([yx - hw / 2, yx + hw / 2], 1).astype(np.float32)  # some overhang
    classes = rng.integers(0, num_classes, num_gt).astype(np.int32)
    return boxes, classes


def effdet_labels(labeler, boxes, classes):
    """effdet's labels for one image (it takes 1-based classes, -1 padding), flattened."""
    ref_classes = torch.from_numpy(np.where(classes >= 0, classes + 1, -1))
    cls_l, box_l, num_pos = labeler.label_anchors(torch.from_numpy(boxes), ref_classes)
    return (torch.cat([c.reshape(-1) for c in cls_l]).numpy(),
            torch.cat([b.reshape(-1, 4) for b in box_l]).numpy(), float(num_pos))


def test_labeler_equal_effdet():
    image_size, num_classes, num_gt = (256, 384), 7, 12
    rng = np.random.default_rng(2)
    labeler = ed_anchors.AnchorLabeler(effdet_anchors(SPEC, image_size), num_classes, 0.5)
    anchors = jnp.asarray(SPEC.boxes(image_size))
    images = []
    for _ in range(3):
        boxes, classes = random_gt(rng, image_size, num_gt, num_classes)
        images.append((boxes, classes))
    images[1][1][[2, 5, 11]] = -1  # padding rows, also between real ones
    images[2][1][:] = -1  # an image without objects
    boxes = jnp.asarray(np.stack([b for b, _ in images]))
    classes = jnp.asarray(np.stack([c for _, c in images]))
    cls_t, box_t, num_pos = jax.jit(jax.vmap(label_anchors, in_axes=(None, 0, 0)))(
        anchors, boxes, classes)
    for i, (b, c) in enumerate(images):
        ref_cls, ref_box, ref_num = effdet_labels(labeler, b, c)
        np.testing.assert_array_equal(np.asarray(cls_t[i]), ref_cls)
        np.testing.assert_allclose(np.asarray(box_t[i]), ref_box, rtol=0, atol=1e-5)
        assert float(num_pos[i]) == ref_num
    assert float(num_pos[0]) > num_gt and float(num_pos[2]) == 0


def test_loss_equal_effdet():
    image_size, num_classes, batch = (128, 256), 4, 2
    rng = np.random.default_rng(3)
    cls, box, cls_t, box_t = random_outputs(rng, image_size, num_classes, batch)
    anchors = jnp.asarray(SPEC.boxes(image_size))
    gt = [random_gt(rng, image_size, 6, num_classes) for _ in range(batch)]
    cls_targets, box_targets, num_pos = map(np.array, jax.jit(
        jax.vmap(label_anchors, in_axes=(None, 0, 0)))(
            anchors, np.stack([b for b, _ in gt]), np.stack([c for _, c in gt])))
    cls_targets[:, ::7] = -2  # anchors to ignore (the loss masks them)

    # effdet takes per-level targets [B, H, W, A] and [B, H, W, A * 4].
    sizes = [h * w * SPEC.num_anchors for h, w in SPEC.feat_sizes(image_size)]
    splits = np.cumsum(sizes)[:-1]
    shapes = SPEC.feat_sizes(image_size)
    ref_cls_t = [torch.from_numpy(t.reshape(batch, h, w, -1)) for t, (h, w) in
                 zip(np.split(cls_targets.astype(np.int64), splits, axis=1), shapes)]
    ref_box_t = [torch.from_numpy(t.reshape(batch, h, w, -1)) for t, (h, w) in
                 zip(np.split(box_targets, splits, axis=1), shapes)]
    config = effdet.get_efficientdet_config("tf_efficientdet_d0")
    config.num_classes = num_classes
    ref = ed_loss.DetectionLoss(config)(cls_t, box_t, ref_cls_t, ref_box_t,
                                        torch.from_numpy(num_pos))
    ours = jax.jit(detection_loss, static_argnames="num_classes")(
        cls, box, cls_targets, box_targets, num_pos, num_classes=num_classes)
    for got, want in zip(ours, ref):
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    assert float(ours[2]) > 0  # the box term is exercised
