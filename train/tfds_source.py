"""TFDS input: a prepared tensorflow-datasets dataset read with `tfds.data_source`.

`--dataset tfds:NAME --data-dir DIR` trains on `NAME` (e.g. `imagenet2012`, `tf_flowers`)
prepared in ArrayRecord format under `DIR`. `tfds.data_source` gives random access to the
records without TensorFlow, so the same grain pipeline as for image folders (sharded
sampler, Inception crop or eval crop, worker processes, checkpointable iterator) reads it.

Images are read still encoded (`tfds.decode.SkipDecoding`): the grain workers decode them with
`flax_effnet.images.decode_image` (through `sources.DecodedSource`), exactly as files of an
image folder, so a TFDS dataset and the same images in a folder give the same batches.

Nothing is ever downloaded or prepared here (`download=False`). Preparing a dataset, once:

    tfds build imagenet2012 --data_dir DIR --file_format array_record   # manual_dir: the tars
    tfds build tf_flowers   --data_dir DIR --file_format array_record
    tfds convert_format --root_data_dir DIR --out_file_format array_record  # an existing TFRecord copy

References: https://www.tensorflow.org/datasets/tfless_tfds (random access without TF),
https://www.tensorflow.org/datasets/cli (`tfds build`, `tfds convert_format`).
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from typing import Any

import numpy as np

TFDS_PREFIX = "tfds:"
# Tried in this order when --eval-split is not given.
EVAL_SPLIT_CANDIDATES = ("validation", "test")


class TfdsNotPreparedError(FileNotFoundError):
    """The dataset (or split) is not prepared in ArrayRecord format in the data dir."""


def _import_tfds():
    """tensorflow_datasets, with a clear message when missing.

    tfds 4.9.x imports `importlib_resources` on Python >= 3.9 without declaring the backport;
    the standard library's `importlib.resources` is the same API.
    """
    if "importlib_resources" not in sys.modules:
        try:
            import importlib_resources  # noqa: F401 - the backport, when installed
        except ImportError:
            sys.modules["importlib_resources"] = importlib.resources
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("--dataset tfds:... needs tensorflow-datasets and array-record: "
                          "pip install 'flax-effnet[train]'") from e
    return tfds


def dataset_name(spec: str) -> str:
    """`tfds:NAME` (or `tfds:NAME/CONFIG:VERSION`) -> the name part."""
    if not spec.startswith(TFDS_PREFIX) or not spec[len(TFDS_PREFIX):]:
        raise ValueError(f"--dataset must be '' or tfds:NAME, got {spec!r}")
    return spec[len(TFDS_PREFIX):]


def _where(data_dir: str | None) -> str:
    return data_dir or "the default TFDS data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"


def open_split(name: str, split: str, data_dir: str | None, *, encoded_key: str | None = None):
    """`tfds.data_source` of a prepared split, or `TfdsNotPreparedError` saying how to prepare it.

    The trainer and `evaluate_efficientnet` both read through here. `encoded_key` leaves that
    feature as encoded bytes (the trainer decodes in its own workers); otherwise tfds decodes.
    """
    tfds = _import_tfds()
    decoders = {encoded_key: tfds.decode.SkipDecoding()} if encoded_key else None
    try:
        # download=False: never download or prepare anything from here.
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                                decoders=decoders)
    except Exception as e:  # tfds raises many types here; all mean "not usable as it is"
        said = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TfdsNotPreparedError(
            f"TFDS dataset {name!r} split {split!r} is not prepared in ArrayRecord format in "
            f"{_where(data_dir)} (tfds said: {said}). Nothing is downloaded here; prepare it once "
            f"with `tfds build {name} --data_dir DIR --file_format array_record` (or convert a "
            f"TFRecord copy with `tfds convert_format --root_data_dir DIR --out_file_format "
            f"array_record`) and pass --data-dir DIR."
        ) from e


class TfdsSource:
    """One split of a prepared TFDS dataset as trainer records (grain `RandomAccessDataSource`).

    Records are `{"image": encoded bytes, "label": int32, "index": int64}` like
    `sources.ImageFolderSource`. Picklable by name: a grain worker re-opens the split itself.
    """

    def __init__(self, name: str, split: str, data_dir: str | None = None, *,
                 image_key: str = "image", label_key: str = "label"):
        self.name, self.split = name, split
        self.data_dir = os.path.expanduser(data_dir) if data_dir else None
        self.image_key, self.label_key = image_key, label_key
        self._source = open_split(name, split, self.data_dir, encoded_key=image_key)
        self._len = len(self._source)
        features = self._source.dataset_info.features
        for key in (image_key, label_key):
            if key not in features:
                raise KeyError(f"TFDS {name!r} has no feature {key!r}; it has {', '.join(features)}")
        self.class_names = tuple(getattr(features[label_key], "names", None) or ())
        if not self.class_names:
            raise ValueError(f"TFDS {name!r} feature {label_key!r} is not a ClassLabel with names")

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, record_key: int) -> dict[str, Any]:
        example = self._source[int(record_key)]
        return {"image": example[self.image_key], "label": np.int32(example[self.label_key]),
                "index": np.int64(record_key)}

    def describe(self, record_key: int) -> str:
        return f"tfds:{self.name}:{self.split}[{int(record_key)}]"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._source = open_split(self.name, self.split, self.data_dir, encoded_key=self.image_key)

    def __repr__(self) -> str:
        return f"TfdsSource({self.name}:{self.split}, {len(self)} records)"


def _available_splits(name: str, data_dir: str | None) -> list[str]:
    tfds = _import_tfds()
    try:
        return list(tfds.builder(name, data_dir=data_dir or None).info.splits)
    except Exception:  # noqa: BLE001 - the split open below reports what is wrong
        return []


def open_tfds(spec: str, data_dir: str | None, *, train_split: str = "train", eval_split: str = ""):
    """`sources.DatasetSplits` of a prepared TFDS dataset.

    Args:
      spec: `tfds:NAME`.
      data_dir: the TFDS data dir holding `NAME/VERSION/*.array_record-*` ("" = TFDS's default).
      train_split: any TFDS split expression (`train`, `train[:90%]`).
      eval_split: the held-out split; "" = `validation` or else `test` when the dataset has one,
        else none; "none" = no evaluation.

    Raises:
      TfdsNotPreparedError: the dataset or a split is not prepared in `data_dir`.
    """
    from flax_effnet.train.sources import DatasetSplits

    name = dataset_name(spec)
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    train = TfdsSource(name, train_split, data_dir)
    if not eval_split:
        splits = _available_splits(name, data_dir)
        eval_split = next((s for s in EVAL_SPLIT_CANDIDATES if s in splits), "none")
    val = None if eval_split == "none" else TfdsSource(name, eval_split, data_dir)
    description = (f"TFDS {name} in {_where(data_dir)}: {len(train.class_names)} classes, "
                   f"{len(train)} train ({train_split}) / "
                   + (f"{len(val)} val ({eval_split}) records" if val is not None else "no val records"))
    return DatasetSplits(train=train, val=val, class_names=train.class_names, description=description)


def is_tfds(spec: str) -> bool:
    return spec.startswith(TFDS_PREFIX)

