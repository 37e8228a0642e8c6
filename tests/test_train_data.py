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


def _loader(source, seed=0):
    return input_pipeline.train_loader(source, global_batch_size=8, prep=PREP,
                                       crop=input_pipeline.CropSpec(), seed=seed)


def test_train_batches_are_deterministic_and_resumable(patterns):
    src = sources.open_image_folder(patterns).train
    it = iter(_loader(src))
    first = [next(it) for _ in range(3)]
    assert first[0]["image"].shape == (8, 32, 32, 3) and first[0]["image"].dtype == np.float32
    assert first[0]["label"].dtype == np.int32
    state = it.get_state()
    rest = [next(it) for _ in range(7)]  # crosses into the second epoch (6 batches per epoch)
    epoch1 = np.concatenate([b["index"] for b in first + rest[:3]])
    assert sorted(epoch1.tolist()) == list(range(48))  # an epoch sees every image once
    again = iter(_loader(src))
    np.testing.assert_array_equal(next(again)["image"], first[0]["image"])
    resumed = iter(_loader(src))
    resumed.set_state(state)
    for want in rest:
        got = next(resumed)
        np.testing.assert_array_equal(got["index"], want["index"])
        np.testing.assert_array_equal(got["image"], want["image"])
    other = next(iter(_loader(src, seed=1)))
    assert not np.array_equal(other["index"], first[0]["index"])


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
