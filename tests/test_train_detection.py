"""EfficientDet on the classifier's trainer (`--task detection`): a tiny detector on a few
built-in shapes images learns, resumes exactly after SIGTERM, exports weights that
`predict_efficientnet` and `evaluate_efficientnet` read; COCO mAP through pycocotools; bad
flags are usage errors."""

import json
import os
import signal

import numpy as np
import pytest
from PIL import Image

from flax_effnet.detection.coco import ImageBoxes, coco_metrics
from flax_effnet.infer import cli
from flax_effnet.infer.detect import Detector
from flax_effnet.train import config as config_lib, loop, main as train_main, metrics, shapes_dataset
from test_train_loop import _state_tree
from train_testutil import enable_compilation_cache

enable_compilation_cache()


def tiny_detection_config(workdir, **overrides) -> config_lib.Config:
    """The shapes preset shrunk for tests: tiny backbone, BiFPN 16 x 1 cell, 1 head repeat."""
    base = dict(workdir=str(workdir), backbone="tiny", fpn_channels=16, fpn_cell_repeats=1, box_class_repeats=1,
                image_size=128, batch_size=4, num_steps=6, warmup_epochs=0.0, learning_rate=0.128,
                num_workers=0, progress_bar=False, log_every_steps=1, eval_every_steps=1000,
                checkpoint_every_steps=1000, max_instances=4)
    return config_lib.make_config(None, **{"task": "detection", **base, **overrides})


@pytest.fixture
def small_shapes(monkeypatch):
    monkeypatch.setitem(shapes_dataset.SPLITS, "train", 16)
    monkeypatch.setitem(shapes_dataset.SPLITS, "val", 4)


@pytest.mark.slow
def test_detector_learns_resumes_exactly_and_exports_for_predict(small_shapes, tmp_path, capsys):
    def run(workdir, stop_at=None):
        seen = []

        def record(step, batch):
            seen.append((step, batch["index"].tolist(), float(batch["image"].sum()), batch["boxes"].tolist()))
            if step == stop_at:  # preemption arrives while step `stop_at` runs
                os.kill(os.getpid(), signal.SIGTERM)

        return loop.train_and_evaluate(tiny_detection_config(workdir), batch_callback=record), seen

    straight, seen_straight = run(tmp_path / "a")
    losses = [r["train/loss"] for r in metrics.read_metrics(tmp_path / "a") if "train/loss" in r]
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    assert {"eval/map", "eval/map50", "ema/map"} <= set(straight["last"])
    assert 0.0 <= straight["last"]["eval/map50"] <= 1.0 and straight["task"] == "detection"

    first, seen_first = run(tmp_path / "b", stop_at=2)
    assert first["preempted"] and first["steps"] == 3
    second, seen_second = run(tmp_path / "b")
    assert seen_first + seen_second == seen_straight  # same images, flips and boxes, in order
    a, b = _state_tree(tmp_path / "a", 6), _state_tree(tmp_path / "b", 6)
    assert a.keys() == b.keys() and any(k.startswith("ema_params/") for k in a)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert straight["last"]["eval/map"] == second["last"]["eval/map"]

    # The export is a detector directory: predict draws its boxes, evaluate scores it.
    detector = Detector.load(tmp_path / "a")
    assert detector.class_names == shapes_dataset.CLASSES and detector.preprocessing.input_size == 128
    record = shapes_dataset.ShapesSource("val", count=1)[0]
    Image.fromarray(record["image"]).save(tmp_path / "val0.png")
    capsys.readouterr()
    code = cli.predict_main([str(tmp_path / "a"), str(tmp_path / "val0.png"), "--json", "--score-threshold", "0",
                             "--save-plot", str(tmp_path / "plots")])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    boxes = out["predictions"][0]["boxes"]
    assert len(boxes) == 100 and all(b["label"] in shapes_dataset.CLASSES for b in boxes)
    h, w = record["image"].shape[:2]
    assert all(0 <= b["xyxy"][0] <= b["xyxy"][2] <= w and 0 <= b["xyxy"][1] <= b["xyxy"][3] <= h for b in boxes)
    drawn = np.asarray(Image.open(tmp_path / "plots" / "0000_val0.png"))
    assert drawn.shape == record["image"].shape and not np.array_equal(drawn, record["image"])
    assert cli.evaluate_main([str(tmp_path / "a"), "shapes", "--limit", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 4 and 0.0 <= result["metrics"]["map50"] <= 1.0


def test_coco_map_is_one_for_perfect_boxes_and_lower_for_shifted_ones():
    rng = np.random.default_rng(0)
    truth = []
    for _ in range(5):
        xy = rng.uniform(0, 100, size=(3, 2))
        wh = rng.uniform(20, 60, size=(3, 2))
        truth.append(ImageBoxes(np.concatenate([xy, xy + wh], 1), rng.integers(0, 3, size=3)))
    perfect = [ImageBoxes(t.boxes, t.classes, rng.uniform(0.5, 1, size=3)) for t in truth]
    m = coco_metrics(truth, perfect, 3)
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    # Shifted by a third of the smallest box side: still IoU >= 0.5 for some, never >= 0.95.
    shifted = [ImageBoxes(t.boxes + 7.0, t.classes, np.ones(3)) for t in truth]
    s = coco_metrics(truth, shifted, 3)
    assert s["map"] < 0.6 and s["map"] < s["map50"]
    wrong_class = [ImageBoxes(t.boxes, (t.classes + 1) % 3, np.ones(3)) for t in truth]
    assert coco_metrics(truth, wrong_class, 3)["map"] == 0.0
    assert coco_metrics(truth, [ImageBoxes(np.zeros((0, 4)), np.zeros(0), np.zeros(0))] * 5, 3)["map"] == 0.0


@pytest.mark.parametrize("argv, message", [
    (["--image-size", "100"], "multiple of 128"),
    (["--model", "efficientnet_b0"], "--task detection trains an EfficientDet"),
    (["--fpn-channels", "-1"], "--fpn-channels must not be negative"),
    (["--backbone", "b9"], "--backbone must be one of"),
    (["--max-instances", "0"], "--max-instances must be at least 1"),
])
def test_bad_detection_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_main.detection_main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_detector_flags_on_a_classifier_run_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        config_lib.parse_args(["--fpn-channels", "32"])
    assert exit_.value.code == 2 and "apply to --task detection only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config_lib.parse_args(["--model", "tf_efficientdet_d0"])
    assert "is a detector" in capsys.readouterr().err


def test_predict_on_a_missing_detector_dir_is_exit_2(tmp_path, capsys):
    assert cli.predict_main([str(tmp_path / "nothing"), str(tmp_path / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
