"""Time of EfficientDet's post-processing and training targets, on random head outputs.

`detect` (top-k over all anchor x class logits, decode, class-aware NMS) and `label_anchors` +
`detection_loss`, jitted, at an EfficientDet size (default D0: 512 px, 49,104 anchors x 90
classes). Prints the median of the repeats in ms per batch and per image, and compile time.

    python benchmarks/bench_detect.py                       # D0, batch 1 and 8
    python benchmarks/bench_detect.py --size 1024 --batch 4 --classes 20
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from flax_effnet.detection import AnchorSpec, detect, detection_loss, label_anchors


def timed(fn, args, repeats: int):
    """(compile + first call seconds, median seconds of `repeats` further calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs="+", default=[512], help="input H [W] in pixels")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--classes", type=int, default=90)
    p.add_argument("--gt", type=int, default=100, help="padded ground-truth rows per image")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    size = tuple(args.size * 2)[:2] if len(args.size) == 1 else tuple(args.size)
    spec = AnchorSpec()
    anchors = jnp.asarray(spec.boxes(size))
    rng = np.random.default_rng(0)
    run_detect = jax.jit(detect)
    targets = jax.jit(jax.vmap(label_anchors, in_axes=(None, 0, 0)))
    loss = jax.jit(detection_loss, static_argnames="num_classes")
    for batch in args.batch:
        cls = [jnp.asarray(rng.normal(size=(batch, h, w, spec.num_anchors * args.classes)) - 4,
                           jnp.float32) for h, w in spec.feat_sizes(size)]
        box = [jnp.asarray(0.2 * rng.normal(size=(batch, h, w, spec.num_anchors * 4)), jnp.float32)
               for h, w in spec.feat_sizes(size)]
        yx = rng.uniform(0, 1, (batch, args.gt, 2)) * size
        hw = rng.uniform(8, min(size) / 2, (batch, args.gt, 2))
        gt = jnp.asarray(np.concatenate([yx - hw / 2, yx + hw / 2], -1), jnp.float32)
        gt_cls = jnp.asarray(rng.integers(-1, args.classes, (batch, args.gt)), jnp.int32)
        row = {"size": list(size), "batch": batch, "anchors": int(anchors.shape[0]),
               "classes": args.classes}
        first, median = timed(run_detect, (cls, box, anchors), args.repeats)
        row |= {"detect_ms": round(1e3 * median, 2),
                "detect_ms_per_image": round(1e3 * median / batch, 2),
                "detect_compile_s": round(first, 2)}
        cls_t, box_t, num = targets(anchors, gt, gt_cls)
        first, median = timed(targets, (anchors, gt, gt_cls), args.repeats)
        row |= {"targets_ms": round(1e3 * median, 2)}
        first, median = timed(lambda *a: loss(*a, num_classes=args.classes),
                              (cls, box, cls_t, box_t, num), args.repeats)
        row |= {"loss_ms": round(1e3 * median, 2)}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
