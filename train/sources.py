"""Data sources: random-access record lists that the input pipeline samples from.

A source follows grain's `RandomAccessDataSource` protocol (`__len__`, `__getitem__`) and
returns records `{"image": encoded bytes or HWC uint8 array, "label": int32, "index": int64}`;
`describe(i)` names record i for messages (a path, or `tfds:NAME:SPLIT[i]`). Anything with
that shape plugs into `input_pipeline` unchanged: `ImageFolderSource` here,
`tfds_source.TfdsSource` for a prepared TFDS dataset. `DecodedSource` wraps either: it decodes
with `flax_effnet.images.decode_image` (the decoder predict and evaluate use) and deals with
records that cannot be read.

Sources are picklable (plain lists of paths) so grain can hand them to worker processes.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flax_effnet.images import IMAGE_EXTENSIONS, ImageLoadError, class_folders, decode_image, image_files
from flax_effnet.train import default_dataset

# The train/val split of a single class-folder tree is fixed: it must not move when the
# training seed changes, or "held-out" images would leak into training between runs.
SPLIT_SEED = 20190528


class ImageFolderSource:
    """Encoded image files with integer labels (grain `RandomAccessDataSource` protocol)."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int]):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self._paths = [str(p) for p in paths]
        self._labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, record_key: int) -> dict[str, Any]:
        with open(self._paths[record_key], "rb") as f:
            data = f.read()
        return {"image": data, "label": self._labels[record_key], "index": np.int64(record_key)}

    def describe(self, record_key: int) -> str:
        return self._paths[record_key]

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def __repr__(self) -> str:
        return f"ImageFolderSource({len(self)} images)"


class DecodedSource:
    """A source of encoded records -> records with decoded HWC uint8 RGB images.

    A record that cannot be read (missing file, not an image, truncated, corrupt TFDS record)
    never stops the run:
    - `substitute=True` (training): the next readable record takes its place, and the record
      carries `replaced` = the unreadable record's key (-1 when nothing was replaced), so the
      loop can name the file, count it and stop when too many are bad. Batches keep their size
      and BatchNorm never sees a blank image; the order stays a pure function of the sampler,
      so a resumed run sees the same batches.
    - `substitute=False` (evaluation): the record comes back with `valid=False` and a 1x1 black
      image, to be masked out of the metrics.
    """

    MAX_TRIES = 16  # consecutive unreadable records before giving up on the data

    def __init__(self, source, *, substitute: bool):
        self.source, self.substitute = source, substitute

    def __len__(self) -> int:
        return len(self.source)

    def describe(self, record_key: int) -> str:
        return self.source.describe(record_key)

    def _read(self, key: int) -> dict[str, Any]:
        """The record at `key` with its image decoded; ImageLoadError when it cannot be."""
        try:
            record = self.source[key]
        except OSError as e:  # the file went away or cannot be opened since the folder scan
            raise ImageLoadError(f"cannot read: {e}") from None
        except Exception as e:  # noqa: BLE001 - a corrupt TFDS/ArrayRecord record
            raise ImageLoadError(f"unreadable record: {e}") from None
        image = np.asarray(decode_image(record["image"]))
        # Other fields (a detection record's boxes and classes) pass through.
        extra = {k: v for k, v in record.items() if k not in ("image", "label", "index")}
        labels = {"label": np.int32(record["label"])} if "label" in record else {}
        return {"image": image, **labels, "index": np.int64(record["index"]), **extra}

    def __getitem__(self, record_key: int) -> dict[str, Any]:
        key = int(record_key)
        if not self.substitute:
            try:
                return {**self._read(key), "valid": np.bool_(True)}
            except ImageLoadError:
                return {"image": np.zeros((1, 1, 3), np.uint8), "label": np.int32(0),
                        "index": np.int64(key), "valid": np.bool_(False)}
        for offset in range(self.MAX_TRIES):
            try:
                record = self._read((key + offset) % len(self.source))
            except ImageLoadError:
                continue
            return {**record, "replaced": np.int32(key if offset else -1)}
        raise ImageLoadError(
            f"{self.MAX_TRIES} consecutive records from {self.describe(key)} on cannot be read; "
            "check the data"
        )

    def __repr__(self) -> str:
        return f"DecodedSource({self.source!r})"


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """What the trainer needs from a dataset."""

    train: Any  # RandomAccessDataSource
    val: Any | None
    class_names: tuple[str, ...]
    description: str


def _scan(root: Path, class_names: Sequence[str]) -> tuple[list[Path], list[int]]:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [c for c in class_folders(root) if c not in index]
    if unknown:
        raise ValueError(f"{root} has class folders not in the training classes: {unknown}")
    paths, labels = [], []
    for name in class_folders(root):
        files = image_files(root / name)
        paths += files
        labels += [index[name]] * len(files)
    return paths, labels


def _split(paths: list[Path], labels: list[int], val_fraction: float):
    """Per class, a fixed pseudo-random `val_fraction` (at least one image) goes to val."""
    rng = np.random.default_rng(SPLIT_SEED)
    labels_arr = np.asarray(labels)
    train_idx, val_idx = [], []
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = max(1, round(val_fraction * len(idx))) if len(idx) > 1 else 0
        val_idx += sorted(idx[:n_val].tolist())
        train_idx += sorted(idx[n_val:].tolist())
    pick = lambda ix: ([paths[i] for i in ix], [labels[i] for i in ix])  # noqa: E731
    return pick(train_idx), pick(val_idx)


def open_image_folder(root: str | os.PathLike, val_fraction: float = 0.2) -> DatasetSplits:
    """An image folder in one of the seeds' layouts.

    `root/train/<class>/*` and `root/val/<class>/*` (val optional), or `root/<class>/*` split
    into train and val by `val_fraction` per class with a fixed seed. Class indices are the
    sorted training folder names (torchvision `ImageFolder` order). Folders and files are
    listed by `flax_effnet.images` (recursive, hidden entries skipped), as evaluate lists them.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} is not a directory")
    train_root = root / "train" if (root / "train").is_dir() else root
    class_names = class_folders(train_root)
    if not class_names:
        raise ValueError(f"{train_root} has no class folders (expected {train_root}/<class>/*.jpg)")
    paths, labels = _scan(train_root, class_names)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {train_root}")
    if (root / "val").is_dir():
        val_paths, val_labels = _scan(root / "val", class_names)
        how = f"{root}/val"
    else:
        (paths, labels), (val_paths, val_labels) = _split(paths, labels, val_fraction)
        how = f"{val_fraction:.0%} of each class held out (fixed seed)"
    description = (
        f"image folder {root}: {len(class_names)} classes, {len(paths)} train / "
        f"{len(val_paths)} val images ({how})"
    )
    return DatasetSplits(
        train=ImageFolderSource(paths, labels),
        val=ImageFolderSource(val_paths, val_labels) if val_paths else None,
        class_names=tuple(class_names),
        description=description,
    )


def open_dataset(data_dir: str, val_fraction: float = 0.2, *, dataset: str = "",
                 train_split: str = "train", eval_split: str = "") -> DatasetSplits:
    """The dataset named by the config: an image folder, or the built-in patterns when empty;
    with `dataset="tfds:NAME"`, that TFDS dataset prepared in `data_dir` (`tfds_source`)."""
    if dataset:
        from flax_effnet.train import tfds_source

        return tfds_source.open_tfds(dataset, data_dir, train_split=train_split, eval_split=eval_split)
    if not data_dir:
        splits = open_image_folder(default_dataset.ensure_dataset())
        return dataclasses.replace(splits, description=default_dataset.DESCRIPTION)
    return open_image_folder(data_dir, val_fraction)
