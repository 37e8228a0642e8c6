"""Input pipeline: grain loaders over a data source, Inception crops for training, eval crops.

Training: a per-epoch reshuffled global order, each JAX process reading its rows of every
global batch (`samplers.GlobalOrderSampler`), records decoded and augmented in grain worker
processes (random resized crop with area 0.08-1 and aspect 3/4-4/3, as in Szegedy et al.
2015 / torchvision `RandomResizedCrop`; horizontal flip), normalised by mean/std, batched per
process. Batch k is a pure function of k (each record's randomness comes from the sampler's
seed and the record's global position), so it does not depend on the number of workers or
processes, and a run resumed at step N simply starts at batch N.

Eval: `flax_effnet.preprocessing.eval_transform` (resize to size/crop_pct, centre crop), in a
fixed order, padded to whole batches with a `mask` so every process runs the same number of
steps.

Both read through `sources.DecodedSource`: images are decoded by `flax_effnet.images` (the
decoder of predict and evaluate). An unreadable training image is replaced by the next
readable record and reported in the batch's `replaced` field; an unreadable eval image is
masked out and reported in `unreadable`.
"""

from __future__ import annotations

import dataclasses
import gc
import math
from typing import Callable, Iterator

import grain
import jax
import numpy as np
from PIL import Image

from flax_effnet.images import decode_image
from flax_effnet.preprocessing import Preprocessing, eval_transform, normalize, resample
from flax_effnet.train import samplers
from flax_effnet.train.sources import DecodedSource


@dataclasses.dataclass(frozen=True)
class CropSpec:
    """Random resized crop and flip parameters."""

    area: tuple[float, float] = (0.08, 1.0)
    aspect: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip: bool = True


def random_crop_box(width: int, height: int, crop: CropSpec, rng: np.random.Generator):
    """(left, top, right, bottom) of an Inception crop: torchvision's 10 tries, then centre."""
    area = width * height
    log_ratio = (math.log(crop.aspect[0]), math.log(crop.aspect[1]))
    for _ in range(10):
        target = area * rng.uniform(*crop.area)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    # Fallback: the largest centre crop within the aspect range.
    in_ratio = width / height
    if in_ratio < crop.aspect[0]:
        w, h = width, int(round(width / crop.aspect[0]))
    elif in_ratio > crop.aspect[1]:
        w, h = int(round(height * crop.aspect[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class TrainTransform(grain.transforms.RandomMap):
    """Random resized crop, flip, normalise a decoded record:
    {'image': float32 HWC, 'label', 'index', 'replaced'}."""

    def __init__(self, prep: Preprocessing, crop: CropSpec):
        self.prep, self.crop = prep, crop

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        image = decode_image(element["image"])
        box = random_crop_box(*image.size, self.crop, rng)
        size = self.prep.input_size
        image = image.resize((size, size), resample(self.prep.interpolation), box=box)
        if self.crop.hflip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return {
            "image": normalize(np.asarray(image), self.prep),
            "label": np.int32(element["label"]),
            "index": np.int64(element["index"]),
            "replaced": np.int32(element["replaced"]),
        }


class EvalTransform(grain.transforms.Map):
    """`eval_transform` (resize, centre crop, normalise) of a decoded record; an unreadable one
    (`valid` False) becomes a black image, masked out later."""

    def __init__(self, prep: Preprocessing):
        self.prep = prep

    def map(self, element: dict) -> dict:
        return {
            "image": eval_transform(decode_image(element["image"]), self.prep),
            "label": np.int32(element["label"]),
            "index": np.int64(element["index"]),
            "valid": np.bool_(element["valid"]),
        }

    def empty_batch(self) -> dict[str, np.ndarray]:
        """A batch of no rows (what a process past the end of its shard reads)."""
        size = self.prep.input_size
        return {
            "image": np.zeros((0, size, size, 3), np.float32),
            "label": np.zeros((0,), np.int32),
            "index": np.zeros((0,), np.int64),
            "valid": np.zeros((0,), bool),
        }


def _absl_flags_ready() -> None:
    """Grain's worker processes read absl flags; outside `absl.app.run` nobody parsed them,
    so mark them parsed (with their defaults) before starting workers."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def process_batch_size(global_batch_size: int) -> int:
    """This process's share of a global batch."""
    count = jax.process_count()
    if global_batch_size % count:
        raise ValueError(f"batch size {global_batch_size} is not divisible by {count} processes")
    return global_batch_size // count


def _shard_options(drop_remainder: bool) -> grain.sharding.ShardOptions:
    return grain.sharding.ShardOptions(
        shard_index=jax.process_index(), shard_count=jax.process_count(), drop_remainder=drop_remainder
    )


_MIN_SHARED_MEMORY_BYTES = 16 << 20


class TrainBatch(grain.transforms.Map):
    """Batch number k -> this process's rows of global batch k, decoded and augmented.

    Row r is record `sampler[k * b + r]` (b = this process's batch), augmented with that
    record's own generator (`Philox(seed + global position)`, grain's `IndexSampler`), so batch
    k is a pure function of k: the same with any number of workers or processes.
    """

    def __init__(self, source, sampler: samplers.GlobalOrderSampler, local_batch_size: int,
                 transform: grain.transforms.RandomMap):
        self.source = DecodedSource(source, substitute=True)
        self.sampler, self.local = sampler, local_batch_size
        self.transform = transform

    def map(self, k: int) -> dict[str, np.ndarray]:
        rows = []
        for r in range(self.local):
            meta = self.sampler[int(k) * self.local + r]
            rows.append(self.transform.random_map(self.source[meta.record_key], meta.rng))
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def train_loader(
    source,
    *,
    global_batch_size: int,
    prep: Preprocessing | None = None,
    crop: CropSpec | None = None,
    seed: int,
    num_batches: int,
    start: int = 0,
    num_workers: int = 0,
    transform: grain.transforms.RandomMap | None = None,
) -> grain.IterDataset:
    """This process's training batches `start, start + 1, ..., num_batches - 1` (reshuffled
    every epoch), decoded in `num_workers` grain processes (0: in this one).

    Each record goes through `transform` (a grain `RandomMap` of a decoded record), by default
    the classifier's `TrainTransform(prep, crop)`; a detection run passes its own.

    The position in the data is the batch number, which is the train step: a run resumed at
    step N starts here with `start=N` and sees exactly the batches an uninterrupted run would,
    whatever `num_workers` or the number of processes was before. Workers each build whole
    batches (worker w makes batches w, w + W, ...) and grain hands them back in order.
    """
    # Each process reads its rows of every global batch of one global order: the batches do
    # not depend on the number of processes (train/samplers.py).
    sampler = samplers.GlobalOrderSampler(
        len(source), global_batch_size=global_batch_size, seed=seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    batches = grain.MapDataset.range(num_batches).map(
        TrainBatch(source, sampler, process_batch_size(global_batch_size),
                   transform if transform is not None else TrainTransform(prep, crop))
    )[start:]
    loader = batches.to_iter_dataset()
    if num_workers:
        _absl_flags_ready()
        # Arrays under 16 MiB are pickled through a pipe (a few ms), larger ones go through
        # shared memory: see `release_shared_memory`.
        loader = loader.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2))
        loader = grain.experimental.WithOptionsIterDataset(
            loader, grain.experimental.DatasetOptions(min_shm_size=_MIN_SHARED_MEMORY_BYTES))
    return loader


def release_shared_memory() -> None:
    """Wait until grain has freed the shared memory of every batch its workers sent.

    grain unlinks a batch's shared-memory segment on a background thread once the array is
    dropped (`SharedMemoryArray`'s asynchronous delete); at exit, segments still queued there
    are reported by Python's resource tracker as leaked. The pool has one thread and runs in
    order, so a no-op through it means everything before it is done. (grain has no public call
    for this; without the attribute there is nothing to wait for.)
    """
    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

    gc.collect()  # arrays in reference cycles
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:
        pool.apply(int)


def num_eval_batches(num_records: int, global_batch_size: int) -> int:
    """Eval steps every process runs: enough for the largest process shard."""
    per_process = -(-num_records // jax.process_count())
    return max(1, -(-per_process // process_batch_size(global_batch_size)))


def _pad(batch: dict, size: int) -> dict:
    """Pad to `size` rows; `mask` is False for padding and for unreadable images."""
    n = len(batch["index"])
    valid = batch.pop("valid")
    out = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    out["mask"] = np.concatenate([valid, np.zeros(size - n, bool)])
    return out


def eval_batches(
    source, *, global_batch_size: int, prep: Preprocessing, num_workers: int = 0,
    on_unreadable: Callable[[int], None] | None = None, transform: grain.transforms.Map | None = None,
) -> Iterator[dict]:
    """This process's eval batches, each padded to full size with a boolean `mask` that also
    leaves out unreadable images; `on_unreadable(record key)` hears of each of those.
    `transform` (default `EvalTransform(prep)`) prepares a decoded record and names the
    fields of a batch of none (`empty_batch`)."""
    local = process_batch_size(global_batch_size)
    transform = transform if transform is not None else EvalTransform(prep)
    if num_workers:
        _absl_flags_ready()
    loader = grain.DataLoader(
        data_source=DecodedSource(source, substitute=False),
        sampler=grain.samplers.IndexSampler(
            num_records=len(source),
            shard_options=_shard_options(drop_remainder=False),
            shuffle=False,
            num_epochs=1,
        ),
        operations=[transform, grain.transforms.Batch(local, drop_remainder=False)],
        worker_count=num_workers,
    )
    it = iter(loader)
    empty = transform.empty_batch()
    for _ in range(num_eval_batches(len(source), global_batch_size)):
        batch = next(it, empty)
        if on_unreadable is not None:
            for key in batch["index"][~batch["valid"]]:
                on_unreadable(int(key))
        yield _pad(batch, local)


class EvalData:
    """Eval batches, held in memory after the first pass when they are small (<= max_bytes)."""

    def __init__(self, source, *, global_batch_size: int, prep: Preprocessing,
                 num_workers: int = 0, max_bytes: int = 1 << 29,
                 on_unreadable: Callable[[int], None] | None = None,
                 transform: grain.transforms.Map | None = None):
        self.source, self.prep, self.num_workers = source, prep, num_workers
        self.transform = transform
        self.on_unreadable = on_unreadable
        self.global_batch_size = global_batch_size
        local = process_batch_size(global_batch_size)
        nbytes = num_eval_batches(len(source), global_batch_size) * local * prep.input_size**2 * 12
        self._cacheable = nbytes <= max_bytes
        self._cache: list[dict] | None = None

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[dict]:
        if self._cache is not None:
            yield from self._cache
            return
        collected = []
        # A set small enough to cache is decoded once, in-process: not worth starting workers.
        workers = 0 if self._cacheable else self.num_workers
        for batch in eval_batches(self.source, global_batch_size=self.global_batch_size,
                                  prep=self.prep, num_workers=workers, on_unreadable=self.on_unreadable,
                                  transform=self.transform):
            if self._cacheable:
                collected.append(batch)
            yield batch
        if self._cacheable:
            self._cache = collected
