"""Input-pipeline throughput: images/s of JPEG decoding + augmentation, per CPU core.

Sizes the CPU side of a training host: an accelerator that trains at R images/s needs about
R / (images/s per core) cores of decoding. Runs the trainer's own loaders
(`input_pipeline.train_loader`: decode, Inception crop, resize, flip, normalise, batch; and
`input_pipeline.eval_batches`: decode, resize, centre crop, normalise) over procedurally
generated ImageNet-like JPEGs (default 500x375, quality 90, the typical ImageNet size), with
each number of grain worker processes given.

    python benchmarks/bench_input_pipeline.py                     # 224 px, workers 0,1,2
    python benchmarks/bench_input_pipeline.py --workers 0,4,8 --size 300 --images 1024

Per core: with 0 workers the main process decodes (one core); with W workers,
images/s / min(W, cores). The first batch (worker start-up) is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_jpegs(root: Path, count: int, width: int, height: int, seed: int = 0) -> Path:
    """`count` photo-like JPEGs (gradient, shapes, noise) in root/<class>/ folders (2 classes)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx / width * rng.uniform(0.2, 1) + yy / height * rng.uniform(0.2, 1))[..., None] / 2
        base = (1 - t) * c0 + t * c1 + rng.normal(0, 12, (height, width, 3))
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            r = rng.uniform(10, min(width, height) / 3)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _time(batches, num_batches: int, batch_size: int) -> float:
    """images/s over `num_batches` batches after the first."""
    it = iter(batches)
    next(it)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    return num_batches * batch_size / (time.perf_counter() - start)


def run(args) -> list[dict]:
    # Imported here so that --help is instant.
    from flax_effnet.preprocessing import Preprocessing
    from flax_effnet.train import input_pipeline, sources

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = make_jpegs(Path(tmp) / "jpegs", args.images, args.width, args.height)
        print(f"{args.images} JPEGs of {args.width}x{args.height} written in {time.perf_counter() - t0:.1f} s; "
              f"{_cores()} cores available", flush=True)
        source = sources.open_image_folder(root, val_fraction=0.0).train
        prep = Preprocessing(args.size, args.size / (args.size + 32), args.interpolation)
        results = []
        for workers in args.workers:
            per_epoch = len(source) // args.batch_size
            for kind in ("train", "eval"):
                if kind == "train":
                    n = args.batches
                    batches = input_pipeline.train_loader(
                        source, global_batch_size=args.batch_size, prep=prep,
                        crop=input_pipeline.CropSpec(), seed=0, num_batches=n + 1, num_workers=workers)
                else:  # one pass over the images (eval is a single epoch)
                    batches = input_pipeline.eval_batches(
                        source, global_batch_size=args.batch_size, prep=prep, num_workers=workers)
                    n = min(args.batches, per_epoch - 1)
                rate = _time(batches, n, args.batch_size)
                cores = 1 if workers == 0 else min(workers, _cores())
                row = {"pipeline": kind, "workers": workers, "size": args.size,
                       "images_per_s": round(rate, 1), "images_per_s_per_core": round(rate / cores, 1)}
                results.append(row)
                print(f"{kind:5s} {args.size} px, {workers} workers: {rate:7.1f} images/s, "
                      f"{rate / cores:6.1f} images/s per core", flush=True)
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="0,1,2", help="comma-separated grain worker counts")
    parser.add_argument("--size", type=int, default=224, help="training/eval resolution")
    parser.add_argument("--images", type=int, default=512, help="JPEGs to generate")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    parser.add_argument("--interpolation", default="bicubic")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
