"""TFDS input: a dataset written by TFDS's own builder into ArrayRecord files is read back
record for record, goes through the trainer's train and eval transforms (also in grain worker
processes), takes split expressions, and a dataset that is not prepared is reported with
how to prepare it, without anything being downloaded."""

import numpy as np
import pytest

from flax_effnet.images import decode_image
from flax_effnet.preprocessing import Preprocessing, eval_transform
from flax_effnet.train import config as config_lib
from flax_effnet.train import default_dataset, input_pipeline, sources, tfds_source
from tfds_testutil import build_patterns_tfds

PREP = Preprocessing(input_size=32, crop_pct=0.875)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    build_patterns_tfds(root, train=4, val=2)
    return root


def _open(tfds_dir, **kw):
    return sources.open_dataset(str(tfds_dir), dataset="tfds:patterns_tfds", **kw)


def test_records_are_the_images_written(tfds_dir):
    data = _open(tfds_dir)
    assert data.class_names == default_dataset.CLASSES
    assert len(data.train) == 24 and len(data.val) == 12  # eval split: validation, found by itself
    rendered = {  # (label, pixels) of everything written to the train split
        (label, np.asarray(default_dataset.render(name, np.random.default_rng([0, 0, label, i]))).tobytes())
        for label, name in enumerate(default_dataset.CLASSES) for i in range(4)
    }
    seen = set()
    for k in range(len(data.train)):
        rec = data.train[k]
        assert isinstance(rec["image"], bytes) and rec["index"] == k  # still encoded: decoded by grain
        pixels = np.asarray(decode_image(rec["image"])).tobytes()  # PNG: lossless
        seen.add((int(rec["label"]), pixels))
    assert seen == rendered


def test_batches_use_the_trainer_transforms_in_worker_processes(tfds_dir):
    data = _open(tfds_dir)
    eval_batches = list(input_pipeline.EvalData(data.val, global_batch_size=8, prep=PREP))
    for b in eval_batches:
        for image, index, valid in zip(b["image"], b["index"], b["mask"]):
            if valid:
                want = eval_transform(decode_image(data.val[int(index)]["image"]), PREP)
                np.testing.assert_array_equal(image, want)

    def first_batches(workers):
        return list(input_pipeline.train_loader(data.train, global_batch_size=8, prep=PREP,
                                                crop=input_pipeline.CropSpec(), seed=3, num_batches=2,
                                                num_workers=workers))

    # A grain worker process gets the source pickled and re-opens the split by name.
    in_process, in_worker = first_batches(0), first_batches(1)
    for a, b in zip(in_process, in_worker):
        assert a["image"].shape == (8, 32, 32, 3)
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["image"], b["image"])


def test_split_expressions(tfds_dir):
    data = _open(tfds_dir, train_split="train[:75%]", eval_split="train[75%:]")
    assert (len(data.train), len(data.val)) == (18, 6)
    assert _open(tfds_dir, eval_split="none").val is None


def test_not_prepared_says_how_and_downloads_nothing(tmp_path, monkeypatch):
    tfds = tfds_source._import_tfds()
    calls = []
    real = tfds.data_source

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tfds, "data_source", spy)
    for name in ("no_such_dataset", "imagenet2012"):  # unknown; registered but not prepared
        with pytest.raises(tfds_source.TfdsNotPreparedError,
                           match=rf"'{name}' split 'train' is not prepared .* in {tmp_path}") as err:
            sources.open_dataset(str(tmp_path), dataset=f"tfds:{name}")
        assert f"tfds build {name} --data_dir DIR --file_format array_record" in str(err.value)
    assert calls and all(c["download"] is False for c in calls)
    assert not any(tmp_path.iterdir())  # nothing downloaded or prepared


def test_dataset_flag():
    c = config_lib.parse_args(["--dataset", "tfds:imagenet2012", "--data-dir", "/data/tfds"])
    assert (c.variant, config_lib.image_size(c), c.workdir) == ("b0", 224, "runs/imagenet2012-b0")
    assert (c.train_split, c.eval_split) == ("train", "")
    help_text = config_lib.build_parser().format_help()  # field comments are argparse help
    assert "--dataset" in help_text and "--coordinator-address" in help_text
    with pytest.raises(ValueError, match="tfds:NAME"):
        tfds_source.dataset_name("imagenet2012")
