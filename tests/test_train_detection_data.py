"""The built-in detection data (`shapes-v1`) and the detection transforms: boxes are exact, and
stay on their objects through flip, letterbox and padding."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from flax_effnet.preprocessing import Preprocessing, letterbox
from flax_effnet.train import detection, shapes_dataset


def _ink_box(image: Image.Image) -> tuple[int, int, int, int]:
    """xyxy (pixel edges) of the non-black pixels."""
    ys, xs = np.nonzero(np.asarray(image).max(-1) > 127)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("kind", range(len(shapes_dataset.CLASSES)))
@pytest.mark.parametrize("seed", range(4))  # triangles: each of the four directions is drawn
def test_each_shape_fills_its_box_exactly(kind, seed):
    rng = np.random.default_rng(seed)
    box = np.array([7, 11, 7 + 23 + seed, 11 + 31 - seed], np.float32)
    image = Image.new("RGB", (60, 60))
    shapes_dataset._draw(ImageDraw.Draw(image), kind, box, (255, 255, 255), rng)
    assert _ink_box(image) == tuple(int(v) for v in box)


def test_records_are_deterministic_and_within_the_image():
    source = shapes_dataset.ShapesSource("train", count=20)
    for i in range(20):
        a, b = source[i], source[i]
        np.testing.assert_array_equal(a["image"], b["image"])
        h, w, _ = a["image"].shape
        boxes = a["boxes"]
        assert 1 <= len(boxes) <= shapes_dataset.MAX_OBJECTS and len(boxes) == len(a["classes"])
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
        assert np.all(boxes[:, 2:] > boxes[:, :2])
        assert set(a["classes"].tolist()) <= set(range(len(shapes_dataset.CLASSES)))
    assert not np.array_equal(source[0]["image"][:8, :8], shapes_dataset.ShapesSource("val", count=1)[0]["image"][:8, :8])
    with pytest.raises(IndexError):
        source[20]


def _record(width=90, height=60, box=(10, 20, 40, 50)):
    image = np.zeros((height, width, 3), np.uint8)
    image[box[1]:box[3], box[0]:box[2]] = 255
    return {"image": image, "boxes": np.array([box], np.float32), "classes": np.array([2], np.int32),
            "index": np.int64(0), "replaced": np.int32(-1), "valid": np.bool_(True)}


PREP = Preprocessing(128, 1.0, "nearest", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("flipped", [False, True])
def test_train_transform_boxes_follow_flip_and_letterbox(flipped):
    transform = detection.TrainTransform(PREP, max_instances=5, flip=True)

    class Rng:  # the transform flips when random() < 0.5
        def random(self):
            return 0.0 if flipped else 0.9

    out = transform.random_map(_record(), Rng())
    assert out["image"].shape == (128, 128, 3) and out["boxes"].shape == (5, 4)
    assert out["scale"] == pytest.approx(128 / 90)
    np.testing.assert_array_equal(out["classes"], [2, -1, -1, -1, -1])
    y1, x1, y2, x2 = out["boxes"][0]
    ink = _ink_box(Image.fromarray((out["image"] * 255).astype(np.uint8)))
    np.testing.assert_allclose([x1, y1, x2, y2], ink, atol=1.0)
    expected_x = (90 - 40, 90 - 10) if flipped else (10, 40)
    np.testing.assert_allclose([x1, x2], np.array(expected_x) * 128 / 90, atol=1e-4)
    # The letterbox fills below the image (60 * 128 / 90 = 85 rows) with the mean: 0 here.
    assert np.all(out["image"][86:] == 0)


def test_eval_transform_keeps_every_box_and_the_scale():
    record = _record(width=60, height=120, box=(5, 5, 30, 100))
    out = detection.EvalTransform(PREP).map(record)
    assert out["boxes"].shape == (detection.EVAL_MAX_INSTANCES, 4) and out["scale"] == pytest.approx(128 / 120)
    np.testing.assert_allclose(out["boxes"][0] / out["scale"], [5, 5, 100, 30], atol=1e-4)
    assert out["classes"][0] == 2 and np.all(out["classes"][1:] == -1)
    empty = detection.EvalTransform(PREP).empty_batch()
    assert set(empty) == set(out) and all(len(v) == 0 for v in empty.values())


def test_letterbox_keeps_the_aspect_at_the_top_left():
    image = Image.fromarray(np.full((50, 100, 3), 255, np.uint8))
    pixels, scale = letterbox(image, PREP)
    assert scale == pytest.approx(1.28)
    assert np.all(pixels[:64] == 1.0) and np.all(pixels[64:] == 0.0)


def test_coco_folder_records_map_ids_and_skip_crowds(tmp_path):
    import json

    from flax_effnet.train.coco_source import CocoFolderSource

    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.png"}, {"id": 9, "file_name": "b.png"}],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 90, "bbox": [1, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [3, 4, 0, 5]},
        ]}))
    source = CocoFolderSource(tmp_path)
    assert source.class_names == ("person", "toothbrush") and len(source) == 2
    a, b = source[0], source[1]
    np.testing.assert_array_equal(a["boxes"], [[1, 2, 11, 22]])
    np.testing.assert_array_equal(a["classes"], [1])
    assert b["boxes"].shape == (0, 4) and a["image"][:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="instances.json"):
        CocoFolderSource(tmp_path / "missing")
