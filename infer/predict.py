"""Classify images with a saved checkpoint, using the preprocessing saved beside its weights.

A checkpoint is a directory written by `flax_effnet.save_pretrained` (the converter's output
or the trainer's `WORKDIR/export`). Its `config.json` says how images must be prepared
(input size, crop_pct, interpolation, mean/std) and, for trained models, the class names.

    predictor = Predictor.load("b0_flax")
    result = predictor.predict(["cat.jpg", "photos/"], top_k=5)
    for p in result.predictions:
        print(p.path, p.classes[0].label, p.classes[0].probability)
    for e in result.errors:                      # unreadable / non-image inputs, skipped
        print(e.path, e.message)

The load -> preprocess -> jit forward -> softmax -> top-k path is batched: images are
decoded on a thread pool while the previous batch runs, and batches are padded to a power of
two (at most `batch_size`), so only a handful of shapes are ever compiled.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import importlib.resources
import os
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from flax_effnet.images import IMAGE_EXTENSIONS, ImageLoadError, decode_image, image_files
from flax_effnet.preprocessing import Preprocessing, eval_transform
from flax_effnet.pretrained import (
    CONFIG_FILE,
    VARIABLES_FILE,
    NotAPretrainedDirError,
    Pretrained,
    load_pretrained_full,
)

IMAGENET_NUM_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class ClassScore:
    """One of an image's top-k classes."""

    index: int
    label: str
    probability: float


@dataclasses.dataclass(frozen=True)
class Prediction:
    """An image's top-k classes, most probable first."""

    path: str
    classes: tuple[ClassScore, ...]


@dataclasses.dataclass(frozen=True)
class InputError:
    """An input that was skipped, and why."""

    path: str
    message: str


@dataclasses.dataclass(frozen=True)
class PredictResult:
    """Predictions in input order, and the inputs that could not be read."""

    predictions: list[Prediction]
    errors: list[InputError]

    def to_dict(self) -> dict:
        """JSON-able form (what `predict_efficientnet --json` prints)."""
        return {
            "predictions": [
                {
                    "path": p.path,
                    "top_k": [
                        {"index": c.index, "label": c.label, "probability": round(c.probability, 6)}
                        for c in p.classes
                    ],
                }
                for p in self.predictions
            ],
            "errors": [dataclasses.asdict(e) for e in self.errors],
        }


def resolve_weights_dir(path: str | os.PathLike) -> Path:
    """The weights directory for `path`: itself, or `path/export` for a trainer workdir.

    Raises:
      NotAPretrainedDirError: `path` does not exist or is not a directory.
    """
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise NotAPretrainedDirError(f"{path} {what}; expected a flax_effnet weights directory")
    # A trainer workdir holds its own config.json (the training config) beside export/; only a
    # weights directory holds variables next to its config.
    if not (path / VARIABLES_FILE).exists() and (path / "export" / CONFIG_FILE).exists():
        return path / "export"
    return path


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order, shipped with the package
    (`flax_effnet/data/imagenet_classes.txt`, from torchvision's `_IMAGENET_CATEGORIES`)."""
    text = (importlib.resources.files("flax_effnet") / "data" / "imagenet_classes.txt").read_text()
    names = tuple(line for line in text.splitlines() if line)
    assert len(names) == IMAGENET_NUM_CLASSES, len(names)
    return names


def class_names_for(pretrained: Pretrained) -> tuple[str, ...]:
    """The checkpoint's own class names; ImageNet's for a 1000-class checkpoint without
    any; otherwise `class_0`, `class_1`, ..."""
    n = pretrained.model.num_classes
    if pretrained.class_names:
        return tuple(pretrained.class_names)
    if n == IMAGENET_NUM_CLASSES:
        return imagenet_class_names()
    return tuple(f"class_{i}" for i in range(n))


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully, upright, in RGB: `flax_effnet.images.decode_image`, the
    decoder the trainer uses too.

    Raises:
      ImageLoadError: missing, unreadable, truncated or not an image; the message says which.
    """
    return decode_image(path)


def collect_image_paths(inputs: Iterable[str | os.PathLike]) -> tuple[list[str], list[InputError]]:
    """Expand folders (`flax_effnet.images.image_files`: recursive, sorted, image extensions,
    hidden entries skipped) and keep files as given; a path that does not exist becomes an
    error rather than stopping the others."""
    paths: list[str] = []
    errors: list[InputError] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = [str(f) for f in image_files(p)]
            if not found:
                errors.append(InputError(str(item), "folder holds no image files"))
            paths.extend(found)
        elif p.exists():
            paths.append(str(item))
        else:
            errors.append(InputError(str(item), "no such file or directory"))
    return paths, errors


def _bucket(n: int, batch_size: int) -> int:
    """Smallest power of two >= n, capped at batch_size: few shapes to compile, little padding."""
    return min(batch_size, 1 << max(0, n - 1).bit_length())


@functools.lru_cache(maxsize=8)
def _forward_fns(model):
    """Jitted (top_k, probabilities) for a model config. Variables are arguments, so every
    Predictor of the same architecture shares one compilation cache."""

    @functools.partial(jax.jit, static_argnames="k")
    def top_k(variables, images, k):
        logits = model.apply(variables, images)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        return jax.lax.top_k(probs, k)

    @jax.jit
    def probabilities(variables, images):
        return jax.nn.softmax(model.apply(variables, images).astype(jnp.float32), axis=-1)

    return top_k, probabilities


class Predictor:
    """A loaded checkpoint, ready to classify: preprocessing, class names, jitted top-k.

    Args:
      pretrained: what `load_pretrained_full` returned.
      batch_size: images per forward pass.
      workers: threads that decode and preprocess images (PIL releases the GIL).
    """

    def __init__(self, pretrained: Pretrained, *, batch_size: int = 32, workers: int | None = None):
        if not pretrained.model.num_classes:
            raise ValueError(
                "the checkpoint has no classifier (num_classes is 0); nothing to predict"
            )
        self.pretrained = pretrained
        self.weights_dir: Path | None = None  # set by `load`
        self.model = pretrained.model
        self.variables = jax.device_put(pretrained.variables)
        self.preprocessing: Preprocessing = pretrained.preprocessing
        self.class_names = class_names_for(pretrained)
        self.num_classes: int = self.model.num_classes
        self.batch_size = batch_size
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._top_k, self._probabilities = _forward_fns(self.model)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        **model_overrides: Any,
    ) -> Predictor:
        """Load a weights directory (or a trainer workdir holding `export/`).

        `model_overrides` set compute fields, e.g. `dtype=jnp.bfloat16`.

        Raises:
          NotAPretrainedDirError: the directory was not written by flax_effnet.
        """
        weights_dir = resolve_weights_dir(path)
        predictor = cls(
            load_pretrained_full(weights_dir, **model_overrides),
            batch_size=batch_size,
            workers=workers,
        )
        predictor.weights_dir = weights_dir
        return predictor

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """A PIL image -> the normalised float32 (size, size, 3) array this checkpoint expects."""
        return eval_transform(image, self.preprocessing)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax over all classes for a batch of preprocessed (N, size, size, 3) images."""
        return np.asarray(self._probabilities(self.variables, jnp.asarray(images)))

    def top_k_arrays(self, images: np.ndarray, k: int = 5, *, pad_to: int | None = None):
        """Dispatch a preprocessed batch; returns device arrays (probs, indices), each (N, k).

        The batch is zero-padded to `pad_to` rows (default: the next power of two up to
        `batch_size`) so that few shapes compile; padded rows are cut off again. The call
        returns before the result is computed (JAX dispatch is asynchronous).
        """
        n = images.shape[0]
        k = min(k, self.num_classes)
        rows = max(n, pad_to or _bucket(n, self.batch_size))
        if rows > n:
            pad = np.zeros((rows - n,) + images.shape[1:], images.dtype)
            images = np.concatenate([images, pad])
        # k is static under jit: compile at least top-5 so that any k <= 5 shares one program.
        compiled_k = min(max(k, 5), self.num_classes)
        probs, indices = self._top_k(self.variables, jnp.asarray(images), compiled_k)
        return probs[:n, :k], indices[:n, :k]

    def iter_batches(
        self,
        items: Sequence[Any],
        load: Callable[[Any], np.ndarray],
        *,
        k: int = 5,
        pad_to: int | None = None,
        on_error: Callable[[Any, str], None] | None = None,
    ) -> Iterator[tuple[list[Any], np.ndarray, np.ndarray]]:
        """Load, batch and classify `items`; yields (items, probs, indices) per batch.

        `load(item)` returns a preprocessed image or raises `ImageLoadError`; failed items
        go to `on_error(item, message)` and are left out of the batch. The next batch is
        decoded while the current one runs on the device.
        """
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:

            def safe_load(item):
                try:
                    return load(item)
                except ImageLoadError as e:
                    return e

            pending = None
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                ok, arrays = [], []
                for item, out in zip(chunk, pool.map(safe_load, chunk)):
                    if isinstance(out, ImageLoadError):
                        if on_error:
                            on_error(item, str(out))
                    else:
                        ok.append(item)
                        arrays.append(out)
                if pending is not None:
                    yield pending[0], np.asarray(pending[1]), np.asarray(pending[2])
                    pending = None
                if ok:
                    pending = (ok, *self.top_k_arrays(np.stack(arrays), k, pad_to=pad_to))
            if pending is not None:
                yield pending[0], np.asarray(pending[1]), np.asarray(pending[2])

    def predict(self, inputs: Iterable[str | os.PathLike], top_k: int = 5) -> PredictResult:
        """Top-k classes for image files and folders of images.

        Args:
          inputs: image paths and/or folders (searched recursively for image extensions).
          top_k: classes per image (at most the checkpoint's class count).

        Returns:
          A `PredictResult`: predictions in input order, and the inputs that were skipped
          (missing, unreadable, not an image), each with the reason.
        """
        paths, errors = collect_image_paths(inputs)
        predictions = []
        batches = self.iter_batches(
            paths,
            lambda p: self.preprocess(open_image(p)),
            k=top_k,
            on_error=lambda p, msg: errors.append(InputError(p, msg)),
        )
        for batch_paths, probs, indices in batches:
            for path, p_row, i_row in zip(batch_paths, probs, indices):
                classes = tuple(
                    ClassScore(int(i), self.class_names[int(i)], float(p))
                    for i, p in zip(i_row, p_row)
                )
                predictions.append(Prediction(path, classes))
        return PredictResult(predictions, errors)


def predict(
    weights: str | os.PathLike,
    inputs: Iterable[str | os.PathLike],
    *,
    top_k: int = 5,
    batch_size: int = 32,
) -> PredictResult:
    """One-call form of `Predictor.load(weights).predict(inputs, top_k)`."""
    return Predictor.load(weights, batch_size=batch_size).predict(inputs, top_k=top_k)


__all__ = [
    "IMAGE_EXTENSIONS",
    "ClassScore",
    "ImageLoadError",
    "InputError",
    "NotAPretrainedDirError",
    "PredictResult",
    "Prediction",
    "Predictor",
    "class_names_for",
    "collect_image_paths",
    "imagenet_class_names",
    "open_image",
    "predict",
    "resolve_weights_dir",
]
