"""`predict` on real-world input: unreadable files are named and skipped, the rest predicted;
a directory that is not a flax_effnet checkpoint says so; batching does not mix images up;
output formats (table, JSON, plot) and class names."""

from __future__ import annotations

import json

import numpy as np
import pytest
from infer_helpers import save_tiny_checkpoint, write_images, write_truncated_jpeg
from PIL import Image

from flax_effnet.infer.cli import predict_main
from flax_effnet.infer.predict import (
    NotAPretrainedDirError,
    Predictor,
    class_names_for,
    imagenet_class_names,
    resolve_weights_dir,
)
from flax_effnet.pretrained import Pretrained

BATCH = 4  # with 5 good images: one batch of 4 and one of 1 -> two compiled shapes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.load(checkpoint, batch_size=BATCH)


@pytest.fixture
def mixed_folder(tmp_path):
    """5 good images, a text file named .jpg, a truncated JPEG, an empty .png, and notes.txt."""
    folder = tmp_path / "photos"
    good = write_images(folder, 5)
    (folder / "fake.jpg").write_text("this is not a JPEG")
    write_truncated_jpeg(folder / "truncated.jpg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("no extension match: not searched for in a folder")
    return folder, good


def test_unreadable_files_are_reported_by_name_and_the_others_predicted(
    predictor, mixed_folder, tmp_path
):
    folder, good = mixed_folder
    missing = tmp_path / "missing.jpg"
    named_text = folder / "notes.txt"  # named explicitly, so it is tried and reported
    result = predictor.predict([folder, missing, named_text], top_k=2)

    assert [p.path for p in result.predictions] == [str(p) for p in good]
    for p in result.predictions:
        assert len(p.classes) == 2
        assert p.classes[0].probability >= p.classes[1].probability
        assert {c.label for c in p.classes} <= {"cat", "dog", "fish"}
    errors = {e.path: e.message for e in result.errors}
    assert set(errors) == {
        str(missing), str(named_text), str(folder / "fake.jpg"),
        str(folder / "truncated.jpg"), str(folder / "empty.png"),
    }  # fmt: skip
    assert "no such file" in errors[str(missing)]
    assert "not an image" in errors[str(folder / "fake.jpg")]
    assert "truncated" in errors[str(folder / "truncated.jpg")].lower()


def test_batched_predictions_equal_one_image_at_a_time(predictor, mixed_folder):
    _, good = mixed_folder
    batched = predictor.predict(good, top_k=3).predictions  # batches of 4 and 1 (padded)
    images = np.stack([predictor.preprocess(Image.open(p).convert("RGB")) for p in good])
    probs = np.concatenate([predictor.probabilities(images[i : i + 1]) for i in range(len(good))])
    for pred, row in zip(batched, probs):
        assert [c.index for c in pred.classes] == list(np.argsort(-row)[:3])
        np.testing.assert_allclose(
            [c.probability for c in pred.classes], np.sort(row)[::-1][:3], rtol=1e-5, atol=1e-6
        )
    # The images' outputs differ by far more than the tolerance, so a row mix-up would show.
    assert np.ptp(probs, axis=0).max() > 1e-3


def test_cli_json_lists_predictions_and_skipped_files(checkpoint, mixed_folder, capsys):
    folder, good = mixed_folder
    rc = predict_main(
        [str(checkpoint), str(folder), "--json", "--top-k", "3", "--batch-size", str(BATCH)]
    )
    out, err = capsys.readouterr()
    assert rc == 1  # some inputs skipped
    data = json.loads(out)
    assert [p["path"] for p in data["predictions"]] == [str(p) for p in good]
    assert all(len(p["top_k"]) == 3 for p in data["predictions"])
    assert {e["path"] for e in data["errors"]} == {
        str(folder / n) for n in ("fake.jpg", "truncated.jpg", "empty.png")
    }
    for name in ("fake.jpg", "truncated.jpg", "empty.png"):
        assert f"skipped {folder / name}" in err


def test_cli_table_shows_each_image_with_ranked_class_names(checkpoint, mixed_folder, capsys):
    _, good = mixed_folder
    rc = predict_main(
        [str(checkpoint), str(good[0]), str(good[1]), "--top-k", "2", "--batch-size", str(BATCH)]
    )
    out, _ = capsys.readouterr()
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["image", "rank", "prob", "class"]
    assert len(lines) == 1 + 2 * 2
    assert lines[1].startswith(str(good[0])) and lines[3].startswith(str(good[1]))
    assert all(any(n in line for n in ("cat (0)", "dog (1)", "fish (2)")) for line in lines[1:])


def test_cli_save_plot_writes_a_png_per_image(checkpoint, mixed_folder, tmp_path, capsys):
    _, good = mixed_folder
    plots = tmp_path / "plots"
    rc = predict_main(
        [
            str(checkpoint),
            str(good[0]),
            str(good[1]),
            "--save-plot",
            str(plots),
            "--batch-size",
            str(BATCH),
        ]
    )
    assert rc == 0
    files = sorted(plots.glob("*.png"))
    assert [f.name for f in files] == ["0000_img0.png", "0001_img1.png"]
    with Image.open(files[0]) as im:
        assert im.size == (1000, 400)


@pytest.mark.parametrize(
    "config, message",
    [
        (None, "not a flax_effnet weights directory"),
        ('{"architectures": ["EfficientNetForImageClassification"]}', "not written by flax_effnet"),
        ("{not json", "not valid JSON"),
    ],
    ids=["no-config", "foreign-config", "broken-json"],
)
def test_a_directory_that_is_not_ours_says_so(tmp_path, mixed_folder, capsys, config, message):
    weights = tmp_path / "someone_elses_model"
    weights.mkdir()
    if config is not None:
        (weights / "config.json").write_text(config)
    with pytest.raises(NotAPretrainedDirError, match=message):
        Predictor.load(weights)
    _, good = mixed_folder
    assert predict_main([str(weights), str(good[0])]) == 2
    assert message in capsys.readouterr().err


def test_missing_weights_path_is_an_error_not_a_traceback(tmp_path, capsys):
    assert predict_main([str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_trainer_workdir_resolves_to_its_export(checkpoint, tmp_path):
    workdir = tmp_path / "workdir"
    (workdir / "export").mkdir(parents=True)
    for f in checkpoint.iterdir():
        (workdir / "export" / f.name).write_bytes(f.read_bytes())
    # the trainer keeps its resolved training config beside export/
    (workdir / "config.json").write_text('{"variant": "tiny", "batch_size": 64}')
    assert resolve_weights_dir(workdir) == workdir / "export"
    assert resolve_weights_dir(checkpoint) == checkpoint
    assert Predictor.load(workdir).class_names == ("cat", "dog", "fish")


def test_class_names_come_from_checkpoint_else_imagenet_else_indices(predictor):
    names = imagenet_class_names()
    assert len(names) == len(set(names)) == 1000
    assert (names[0], names[1], names[999]) == ("tench", "goldfish", "toilet tissue")

    def fake(num_classes, class_names):
        model = predictor.model.clone(num_classes=num_classes)
        return Pretrained(model, {}, predictor.preprocessing, class_names, {})

    assert class_names_for(fake(1000, None)) == names
    assert class_names_for(fake(2, ("a", "b"))) == ("a", "b")
    assert class_names_for(fake(2, None)) == ("class_0", "class_1")


def _damaged_copy(checkpoint, tmp_path, damage: str):
    """A copy of the tiny checkpoint with one kind of damage."""
    import json
    import shutil

    from flax_effnet.pretrained import VARIABLES_FILE

    weights = tmp_path / damage
    shutil.copytree(checkpoint, weights)
    config_path = weights / "config.json"
    config = json.loads(config_path.read_text())
    if damage == "backbone-only":
        config["model"]["num_classes"] = 0
        config["class_names"] = None
    elif damage == "truncated-variables":
        data = (weights / VARIABLES_FILE).read_bytes()
        (weights / VARIABLES_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "garbage-variables":
        (weights / VARIABLES_FILE).write_bytes(b"\x00" * 64)
    elif damage == "variables-of-another-model":
        config["model"]["num_classes"] = 5
        config["class_names"] = list("abcde")
    elif damage == "unknown-variant":
        config["model"]["variant"] = "b99"
    elif damage == "bad-model-field":
        config["model"]["paddding"] = "same"
    config_path.write_text(json.dumps(config))
    return weights


@pytest.mark.parametrize(
    "damage, message",
    [
        ("backbone-only", "no classifier"),
        ("truncated-variables", "corrupt or truncated"),
        ("garbage-variables", "corrupt or truncated"),
        ("variables-of-another-model", "params/classifier/kernel: expected (320, 5), found (320, 3)"),
        ("unknown-variant", "model description is not valid: unknown EfficientNet variant 'b99'"),
        ("bad-model-field", "model description is not valid"),
    ],
)
def test_damaged_weights_directory_is_a_named_error(checkpoint, tmp_path, mixed_folder, capsys, damage, message):
    """Each used to end in a traceback; now a message naming the problem, and exit status 2."""
    weights = _damaged_copy(checkpoint, tmp_path, damage)
    _, good = mixed_folder
    assert predict_main([str(weights), str(good[0])]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_image_with_malformed_exif_is_predicted(predictor, tmp_path, capsys, checkpoint):
    """PIL's exif_transpose raises struct.error on this EXIF; the image itself is fine."""
    from test_images import _asymmetric, _malformed_exif

    path = tmp_path / "phone.jpg"
    Image.fromarray(_asymmetric(64, 48)).save(path, exif=_malformed_exif())
    result = predictor.predict([path], top_k=1)
    assert not result.errors and len(result.predictions) == 1
    assert predict_main([str(checkpoint), str(path)]) == 0
