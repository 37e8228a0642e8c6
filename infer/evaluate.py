"""Top-1/top-5 accuracy and throughput of a checkpoint on an image folder or a TFDS split.

    predictor = Predictor.load("b0_flax")
    data = open_eval_data("imagenet/val", predictor)                    # root/<class>/*.jpg
    data = open_eval_data("tfds:imagenet2012:validation", predictor, data_dir="~/tfds")
    result = evaluate(predictor, data, batch_size=64)
    print(result.top1, result.top5, result.images_per_second)

Images go through the checkpoint's own preprocessing (`Predictor.preprocess`), the same path
as prediction. Throughput is end to end (decode, preprocess, forward), timed after the
forward pass has been compiled.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from flax_effnet.images import ImageLoadError, class_folders, decode_image, image_files
from flax_effnet.infer.predict import InputError, Predictor

TFDS_PREFIX = "tfds:"
DEFAULT_TFDS_SPLIT = "validation"


class EvalData(Protocol):
    """A labelled image set: `len()`, `load(i) -> (PIL image, label)`, `describe(i)`."""

    name: str

    def __len__(self) -> int: ...

    def load(self, i: int) -> tuple[Image.Image, int]: ...

    def describe(self, i: int) -> str: ...


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """What `evaluate` measured. `top5` is top-min(5, num_classes)."""

    data: str
    num_images: int
    top1: float
    top5: float
    seconds: float
    images_per_second: float
    errors: tuple[InputError, ...] = ()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["errors"] = [dataclasses.asdict(e) for e in self.errors]
        return d


def map_class_names(
    data_classes: Sequence[str], checkpoint_classes: Sequence[str] | None, num_classes: int
) -> list[int]:
    """Checkpoint class index of each of the data's classes.

    By name when the checkpoint's class names cover the data's (a trainer checkpoint on its
    own folders, in any order); otherwise by sorted position when the counts match (the
    ImageFolder convention: ImageNet synset folders n01440764, ... sort into the standard
    class order, whatever names the checkpoint carries).

    Raises:
      ValueError: neither rule applies; the message names the classes it could not place.
    """
    if checkpoint_classes:
        index = {name: i for i, name in enumerate(checkpoint_classes)}
        known = [c for c in data_classes if c in index]
        if len(known) == len(data_classes):
            return [index[c] for c in data_classes]
        if known:  # partly named like the checkpoint: a mismatch, not a different convention
            unknown = [c for c in data_classes if c not in index]
            raise ValueError(
                f"{len(unknown)} of the data's classes are not classes of the checkpoint: "
                f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}"
            )
    if len(data_classes) == num_classes:
        order = sorted(range(len(data_classes)), key=lambda i: data_classes[i])
        mapping = [0] * len(data_classes)
        for rank, i in enumerate(order):
            mapping[i] = rank
        return mapping
    raise ValueError(
        f"the data has {len(data_classes)} classes and the checkpoint {num_classes}, and their "
        "names do not match; cannot tell which label is which class"
    )


class ImageFolderData:
    """`root/<class>/**/*.jpg` (or the `val/` of a trainer-style `root/{train,val}/<class>`)."""

    def __init__(self, root: str | os.PathLike, predictor: Predictor):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a directory of class folders")
        subdirs = set(class_folders(root))
        if subdirs and subdirs <= {"train", "val", "test"} and "val" in subdirs:
            root = root / "val"  # the trainer's split layout: evaluate on its held-out images
        classes = class_folders(root)
        if not classes:
            raise FileNotFoundError(f"{root} holds no class folders (expected root/<class>/*.jpg)")
        to_index = map_class_names(classes, predictor.class_names, predictor.num_classes)
        self.name = str(root)
        self.items: list[tuple[str, int]] = []
        for cls_name, label in zip(classes, to_index):
            self.items.extend((str(f), label) for f in image_files(root / cls_name))
        if not self.items:
            raise FileNotFoundError(f"no image files under the class folders of {root}")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[Image.Image, int]:
        path, label = self.items[i]
        return decode_image(path), label

    def describe(self, i: int) -> str:
        return self.items[i][0]


class TfdsData:
    """A prepared TFDS split, read with `tfds.data_source` (ArrayRecord; no TensorFlow)."""

    def __init__(
        self,
        name: str,
        predictor: Predictor,
        *,
        split: str = DEFAULT_TFDS_SPLIT,
        data_dir: str | os.PathLike | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ):
        from flax_effnet.train.tfds_source import open_split

        source = open_split(name, split, str(data_dir) if data_dir else None)
        features = source.dataset_info.features
        for key in (image_key, label_key):
            if key not in features:
                raise KeyError(
                    f"TFDS {name!r} has no feature {key!r}; it has {', '.join(features)}"
                )
        label_names = getattr(features[label_key], "names", None)
        if label_names:
            data_to_ckpt = map_class_names(
                list(label_names), predictor.class_names, predictor.num_classes
            )
            # Same classes in the same order (e.g. imagenet2012's synsets): labels pass through.
            self._remap = None if data_to_ckpt == list(range(len(label_names))) else data_to_ckpt
        else:
            self._remap = None
        self.name = f"tfds:{name}:{split}"
        self._source = source
        self._image_key, self._label_key = image_key, label_key

    def __len__(self) -> int:
        return len(self._source)

    def load(self, i: int) -> tuple[Image.Image, int]:
        try:
            example = self._source[i]
        except Exception as e:  # noqa: BLE001 - a corrupt record is skipped like a bad file
            raise ImageLoadError(f"unreadable record: {e}") from None
        image = decode_image(np.asarray(example[self._image_key]))
        label = int(example[self._label_key])
        if self._remap is not None:
            label = self._remap[label]
        return image, label

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"


def open_eval_data(
    spec: str,
    predictor: Predictor,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str | None = None,
    image_key: str = "image",
    label_key: str = "label",
) -> EvalData:
    """`tfds:NAME[:SPLIT]` (with `data_dir`) or an image folder `root/<class>/...`."""
    if spec.startswith(TFDS_PREFIX):
        name, _, spec_split = spec[len(TFDS_PREFIX) :].partition(":")
        return TfdsData(
            name,
            predictor,
            split=split or spec_split or DEFAULT_TFDS_SPLIT,
            data_dir=data_dir,
            image_key=image_key,
            label_key=label_key,
        )
    return ImageFolderData(spec, predictor)


def evaluate(
    predictor: Predictor,
    data: EvalData,
    *,
    limit: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Top-1/top-5 accuracy and images/s of `predictor` on `data`.

    Args:
      predictor: a loaded checkpoint; its `batch_size` is the evaluation batch.
      data: from `open_eval_data` (or anything with `len`, `load(i)`, `describe(i)`).
      limit: evaluate `limit` images spread evenly over the data (folders list their images
        class by class, so the first `limit` would cover only the first classes).
      progress: show a tqdm progress bar on stderr (when tqdm is installed).

    Returns:
      An `EvalResult`; images that cannot be decoded are counted in `errors`, not in accuracy.
    """
    total = len(data)
    n = total if limit is None else min(limit, total)
    if n == 0:
        raise ValueError(f"{data.name} holds no images")
    subset = list(range(total)) if n == total else [i * total // n for i in range(n)]
    k = min(5, predictor.num_classes)
    size = predictor.preprocessing.input_size
    # Compile the one batch shape used below (the last batch is padded to it) before timing.
    zeros = np.zeros((predictor.batch_size, size, size, 3), np.float32)
    for a in predictor.top_k_arrays(zeros, k, pad_to=predictor.batch_size):
        a.block_until_ready()

    labels: dict[int, int] = {}
    errors: list[InputError] = []

    def load(i: int) -> np.ndarray:
        image, labels[i] = data.load(i)
        return predictor.preprocess(image)

    bar = _progress_bar(n, data.name, progress)

    def on_error(i: int, message: str) -> None:
        errors.append(InputError(data.describe(i), message))
        if bar is not None:
            bar.update(1)

    correct1 = correct5 = seen = 0
    start = time.perf_counter()
    try:
        for items, _, indices in predictor.iter_batches(
            subset,
            load,
            k=k,
            pad_to=predictor.batch_size,
            on_error=on_error,
        ):
            truth = np.array([labels.pop(i) for i in items])
            correct1 += int(np.sum(indices[:, 0] == truth))
            correct5 += int(np.sum(np.any(indices == truth[:, None], axis=1)))
            seen += len(items)
            if bar is not None:
                bar.update(len(items))
                bar.set_postfix(top1=f"{correct1 / seen:.4f}", top5=f"{correct5 / seen:.4f}")
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    if seen == 0:
        raise ValueError(f"none of the {n} images in {data.name} could be read")
    return EvalResult(
        data=data.name,
        num_images=seen,
        top1=correct1 / seen,
        top5=correct5 / seen,
        seconds=seconds,
        images_per_second=seen / seconds,
        errors=tuple(errors),
    )


def _progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr, or None when disabled or tqdm is missing."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


__all__ = [
    "EvalData",
    "EvalResult",
    "ImageFolderData",
    "ImageLoadError",
    "TfdsData",
    "evaluate",
    "map_class_names",
    "open_eval_data",
]
