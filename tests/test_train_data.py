"""Input pipeline: image-folder layouts and splits, Inception crops, deterministic and
resumable loaders, padded eval batches, the deterministic built-in dataset."""

import shutil

import numpy as np
import pytest

from flax_effnet.preprocessing import Preprocessing
from flax_effnet.train import default_dataset, input_pipeline, sources
from train_testutil import small_patterns

PREP = Preprocessing(input_size=32, crop_pct=0.875)


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    return small_patterns(tmp_path_factory.mktemp("data"), train=8, val=3)


def test_train_val_layout(patterns):
    d = sources.open_image_folder(patterns)
    assert d.class_names == tuple(sorted(default_dataset.CLASSES))
    assert len(d.train) == 6 * 8 and len(d.val) == 6 * 3
    rec = d.train[0]
    assert isinstance(rec["image"], bytes) and rec["label"] == 0 and rec["index"] == 0
    assert np.bincount(d.val.labels).tolist() == [3] * 6


def test_single_folder_split_is_fixed_and_disjoint(patterns, tmp_path):
    flat = tmp_path / "flat"
    shutil.copytree(patterns / "train", flat)
    a, b = sources.open_image_folder(flat, 0.25), sources.open_image_folder(flat, 0.25)
    assert a.train._paths == b.train._paths and a.val._paths == b.val._paths
    assert not set(a.train._paths) & set(a.val._paths)
    assert len(a.train) + len(a.val) == 48
    assert np.bincount(a.val.labels).tolist() == [2] * 6


def test_val_with_unknown_class_is_an_error(patterns, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(patterns, root)
    (root / "val" / "hexagon").mkdir()
    with pytest.raises(ValueError, match="hexagon"):
        sources.open_image_folder(root)


def test_random_crop_box_respects_area_and_aspect():
    rng = np.random.default_rng(0)
    crop = input_pipeline.CropSpec()
    for _ in range(200):
        l, t, r, b = input_pipeline.random_crop_box(80, 60, crop, rng)
        assert 0 <= l < r <= 80 and 0 <= t < b <= 60
        w, h = r - l, b - t
        assert 0.06 <= w * h / (80 * 60) <= 1.0
        assert 0.7 <= w / h <= 1.4 or (w, h) == (80, 60)


def _batches(source, n, *, seed=0, start=0, workers=0):
    loader = input_pipeline.train_loader(source, global_batch_size=8, prep=PREP, crop=input_pipeline.CropSpec(),
                                         seed=seed, num_batches=start + n, start=start, num_workers=workers)
    return list(loader)


def test_train_batches_are_deterministic_and_resumable_at_any_step(patterns):
    src = sources.open_image_folder(patterns).train
    first = _batches(src, 10)  # crosses into the second epoch (6 batches per epoch)
    assert first[0]["image"].shape == (8, 32, 32, 3) and first[0]["image"].dtype == np.float32
    assert first[0]["label"].dtype == np.int32 and np.all(first[0]["replaced"] == -1)
    epoch1 = np.concatenate([b["index"] for b in first[:6]])
    assert sorted(epoch1.tolist()) == list(range(48))  # an epoch sees every image once
    np.testing.assert_array_equal(_batches(src, 1)[0]["image"], first[0]["image"])
    # A run resumed at step 3 reads batch 3 next: the position in the data is the step.
    for want, got in zip(first[3:], _batches(src, 7, start=3)):
        np.testing.assert_array_equal(got["index"], want["index"])
        np.testing.assert_array_equal(got["image"], want["image"])
    other = _batches(src, 1, seed=1)[0]
    assert not np.array_equal(other["index"], first[0]["index"])


def test_batches_do_not_depend_on_the_number_of_workers(patterns):
    """So a run may resume with another --num-workers (grain's own iterator state refused it)."""
    src = sources.open_image_folder(patterns).train
    in_process = _batches(src, 5, start=2)
    for workers in (1, 2):
        for want, got in zip(in_process, _batches(src, 5, start=2, workers=workers)):
            np.testing.assert_array_equal(got["index"], want["index"])
            np.testing.assert_array_equal(got["image"], want["image"])


def test_unreadable_training_images_are_replaced_and_reported(patterns, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(patterns, root)
    bad = sorted((root / "train" / "dots").glob("*.jpg"))[2]
    bad.write_bytes(b"not a jpeg")
    src = sources.open_image_folder(root).train
    bad_key = [src.describe(i) for i in range(len(src))].index(str(bad))
    batches = _batches(src, 6)  # one epoch
    replaced = np.concatenate([b["replaced"] for b in batches])
    assert replaced[replaced >= 0].tolist() == [bad_key]
    index = np.concatenate([b["index"] for b in batches])
    assert bad_key not in index.tolist()
    assert index[replaced == bad_key].tolist() == [bad_key + 1]  # the next readable record, same class
    assert all(b["image"].shape == (8, 32, 32, 3) for b in batches)


def test_unreadable_eval_images_are_masked_out(patterns, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(patterns, root)
    sorted((root / "val" / "grid").glob("*.jpg"))[0].write_bytes(b"")
    src = sources.open_image_folder(root).val
    heard = []
    batches = list(input_pipeline.EvalData(src, global_batch_size=8, prep=PREP, on_unreadable=heard.append))
    assert [src.describe(k) for k in heard] == [str(sorted((root / "val" / "grid").glob("*.jpg"))[0])]
    assert sum(int(b["mask"].sum()) for b in batches) == 17


def test_eval_batches_cover_the_set_once_with_a_mask(patterns):
    src = sources.open_image_folder(patterns).val
    data = input_pipeline.EvalData(src, global_batch_size=8, prep=PREP)
    batches = list(data)
    assert len(batches) == 3 and all(b["image"].shape == (8, 32, 32, 3) for b in batches)
    idx = np.concatenate([b["index"][b["mask"]] for b in batches])
    assert sorted(idx.tolist()) == list(range(18))
    cached = list(data)
    np.testing.assert_array_equal(cached[1]["image"], batches[1]["image"])


def test_builtin_dataset_is_deterministic():
    a = default_dataset.render("dots", np.random.default_rng([0, 0, 3, 5]))
    b = default_dataset.render("dots", np.random.default_rng([0, 0, 3, 5]))
    assert np.array_equal(np.asarray(a), np.asarray(b)) and a.size == (80, 80)
