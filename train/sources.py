"""Data sources: random-access record lists that the input pipeline samples from.

A source follows grain's `RandomAccessDataSource` protocol (`__len__`, `__getitem__`) and
returns records `{"image": encoded bytes or HWC uint8 array, "label": int32, "index": int64}`.
Anything with that shape plugs into `input_pipeline` unchanged: `ImageFolderSource` here,
`tfds_source.TfdsSource` for a prepared TFDS dataset.

Sources are picklable (plain lists of paths) so grain can hand them to worker processes.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flax_effnet.train import default_dataset

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
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

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def __repr__(self) -> str:
        return f"ImageFolderSource({len(self)} images)"


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """What the trainer needs from a dataset."""

    train: Any  # RandomAccessDataSource
    val: Any | None
    class_names: tuple[str, ...]
    description: str


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(root: Path, class_names: Sequence[str]) -> tuple[list[Path], list[int]]:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [c for c in _class_folders(root) if c not in index]
    if unknown:
        raise ValueError(f"{root} has class folders not in the training classes: {unknown}")
    paths, labels = [], []
    for name in _class_folders(root):
        files = _images_in(root / name)
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
    sorted training folder names (torchvision `ImageFolder` order).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} is not a directory")
    train_root = root / "train" if (root / "train").is_dir() else root
    class_names = _class_folders(train_root)
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
