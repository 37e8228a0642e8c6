"""`evaluate` counts top-1/top-5 correctly on an image folder and on a prepared TFDS split,
maps the data's class names onto the checkpoint's, skips unreadable images, and says clearly
when a TFDS dataset is not prepared."""

from __future__ import annotations

import importlib.resources
import json
import sys

import numpy as np
import pytest
from infer_helpers import random_image, save_tiny_checkpoint, write_images
from PIL import Image

from flax_effnet.infer.cli import evaluate_main
from flax_effnet.infer.evaluate import evaluate, map_class_names, open_eval_data
from flax_effnet.infer.predict import Predictor

BATCH = 8  # evaluate pads every batch to this: one compiled shape for the whole file
# Trainer checkpoints keep their own class order; the folders below sort differently.
CLASSES = ("fish", "cat", "dog")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    ckpt = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", class_names=CLASSES)
    return Predictor.load(ckpt, batch_size=BATCH)


def expected_accuracy(predictor, images, labels):
    """Top-1/top-3 computed directly from the model's probabilities."""
    x = np.stack([predictor.preprocess(im) for im in images])
    probs = np.concatenate(
        [predictor.probabilities(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    )
    order = np.argsort(-probs, axis=1)
    labels = np.asarray(labels)
    return np.mean(order[:, 0] == labels), np.mean(np.any(order[:, :5] == labels[:, None], axis=1))


def test_map_class_names_by_name_then_by_sorted_position():
    assert map_class_names(["cat", "dog", "fish"], ["fish", "cat", "dog"], 3) == [1, 2, 0]
    # ImageNet synset folders vs a checkpoint with human-readable names: sorted position.
    assert map_class_names(["n02", "n01", "n03"], ["tench", "goldfish", "shark"], 3) == [1, 0, 2]
    assert map_class_names(["b", "a"], None, 2) == [1, 0]
    with pytest.raises(ValueError, match="not classes of the checkpoint: bird"):
        map_class_names(["cat", "bird"], ["fish", "cat", "dog"], 3)
    with pytest.raises(ValueError, match="the data has 2 classes and the checkpoint 3"):
        map_class_names(["x", "y"], ["fish", "cat", "dog"], 3)


def test_image_folder_top1_top5_match_direct_computation(predictor, tmp_path):
    # The trainer's layout root/{train,val}/<class>/: evaluate uses val/.
    root = tmp_path / "flowers"
    images, labels = [], []
    for c, name in enumerate(("cat", "dog", "fish")):
        write_images(root / "train" / name, 1, seed=10 + c)
        for p in write_images(root / "val" / name, 4, seed=c):
            images.append(Image.open(p).convert("RGB"))
            labels.append(CLASSES.index(name))
    (root / "val" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really")

    data = open_eval_data(str(root), predictor)
    assert data.name == str(root / "val")
    result = evaluate(predictor, data, progress=False)

    top1, top5 = expected_accuracy(predictor, images, labels)
    assert result.num_images == 12
    assert result.top1 == pytest.approx(top1) and result.top5 == pytest.approx(top5) == 1.0
    assert 0.0 < result.top1 < 1.0, "degenerate data: every or no prediction right"
    assert [e.path for e in result.errors] == [str(root / "val" / "dog" / "broken.jpg")]
    assert result.images_per_second > 0


def test_cli_evaluate_json_on_a_folder(predictor, tmp_path, capsys):
    root = tmp_path / "data"
    for name in CLASSES:
        write_images(root / name, 2, seed=len(name))
    rc = evaluate_main(
        [
            str(predictor.weights_dir),
            str(root),
            "--json",
            "--no-progress",
            "--batch-size",
            str(BATCH),
            "--limit",
            "5",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["num_images"] == 5 and out["errors"] == []
    assert 0.0 <= out["top1"] <= out["top5"] <= 1.0


def _build_tiny_tfds(data_dir, examples, class_names):
    """Prepare a TFDS dataset in ArrayRecord format without TensorFlow.

    Images are handed to tfds as PIL images, which it PNG-encodes with PIL (encoding numpy
    arrays would need TensorFlow). tfds 4.9.x on Python >= 3.9 also looks up
    `importlib_resources.abc.Traversable` when building, without depending on the backport:
    the standard library's `importlib.resources` is the same API.
    """
    if "importlib_resources" not in sys.modules:
        try:
            import importlib_resources  # noqa: F401 - the backport, when installed
        except ImportError:
            sys.modules["importlib_resources"] = importlib.resources
    import tensorflow_datasets as tfds

    class TinyEvalImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "label": tfds.features.ClassLabel(names=list(class_names)),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"validation": self._generate_examples()}

        def _generate_examples(self):
            for i, (image, label) in enumerate(examples):
                yield i, {"image": image, "label": label}

    TinyEvalImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return "tiny_eval_images"


def test_tfds_split_top1_top5_match_direct_computation(predictor, tmp_path):
    # The dataset's label order (sorted) differs from the checkpoint's: labels are remapped.
    names = sorted(CLASSES)
    examples = [(random_image(40 + 3 * i, 36, 100 + i), i % 3) for i in range(10)]
    name = _build_tiny_tfds(tmp_path / "tfds", examples, names)

    data = open_eval_data(f"tfds:{name}:validation", predictor, data_dir=tmp_path / "tfds")
    assert len(data) == 10
    result = evaluate(predictor, data, progress=False)

    # tfds stores PNG (lossless): the images read back are the ones written.
    labels = [CLASSES.index(names[label]) for _, label in examples]
    top1, top5 = expected_accuracy(predictor, [im for im, _ in examples], labels)
    assert result.num_images == 10 and result.errors == ()
    assert result.top1 == pytest.approx(top1) and result.top5 == pytest.approx(top5)
    assert result.data == f"tfds:{name}:validation"


def test_tfds_dataset_that_is_not_prepared_says_so(predictor, tmp_path, capsys, monkeypatch):
    import tensorflow_datasets as tfds
    calls = []
    real_data_source = tfds.data_source

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_data_source(*args, **kwargs)

    monkeypatch.setattr(tfds, "data_source", spy)
    with pytest.raises(
        FileNotFoundError, match="'no_such_dataset' split 'validation' is not prepared"
    ):
        open_eval_data("tfds:no_such_dataset", predictor, data_dir=tmp_path)
    # A registered dataset that is not prepared: reported, never downloaded or prepared here.
    with pytest.raises(
        FileNotFoundError, match="'imagenet2012' split 'validation' is not prepared"
    ):
        open_eval_data("tfds:imagenet2012", predictor, data_dir=tmp_path)
    assert not (tmp_path / "imagenet2012").exists() and not (tmp_path / "downloads").exists()
    assert calls and all(c.get("download") is False for c in calls)
    rc = evaluate_main(
        [
            str(predictor.weights_dir),
            "tfds:no_such_dataset:test",
            "--data-dir",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "split 'test' is not prepared" in err and "--file_format array_record" in err


def test_limit_takes_images_spread_over_the_data(predictor):
    class ClassByClass:  # like a folder: 12 images, 3 classes in blocks of 4
        name = "fake"

        def __init__(self):
            self.loaded = []

        def __len__(self):
            return 12

        def load(self, i):
            self.loaded.append(i)
            return random_image(36, 36, i), i // 4

        def describe(self, i):
            return f"fake[{i}]"

    data = ClassByClass()
    result = evaluate(predictor, data, limit=4, progress=False)
    assert sorted(data.loaded) == [0, 3, 6, 9] and result.num_images == 4
