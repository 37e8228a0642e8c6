"""Eval throughput of ONNX Runtime on our exported graph beside flax_effnet (XLA) itself.

Both run in one process on the same weights and the same batch, interleaved repeat by repeat
so that load from other processes hits both alike; the median images/s of each, their ratio
(ORT / ours) and the load average before and after (`os.getloadavg`, as `uptime` prints it)
are printed. The graph is what `export_efficientnet --to onnx` writes (NCHW input); ours runs
`jax.jit(model.apply)` with the model's default ('auto') depthwise_impl, on NHWC input.

    python benchmarks/bench_onnx.py                              # b0, batch 8, 224 px
    python benchmarks/bench_onnx.py --model mobilenetv2_100 --batch 1
    python benchmarks/bench_onnx.py --weights b0_flax           # a weights directory
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from flax_effnet import create_model, model_entry
from flax_effnet.pretrained import load_pretrained_full
from flax_effnet.export import to_onnx
from flax_effnet.export.onnx_format import onnx_session, save_onnx


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average: {one:.2f}, {five:.2f}, {fifteen:.2f}"


def _images_per_s(run, batch: int, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        run()
    return batch * iters / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="efficientnet_b0", help="registered model name")
    parser.add_argument("--weights", help="a weights directory instead of random weights")
    parser.add_argument("--size", type=int, help="input size (default: the model's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per repeat and contestant")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its own)")
    args = parser.parse_args(argv)

    print(f"before: {_load()} ({os.cpu_count()} CPUs)", flush=True)
    if args.weights:
        loaded = load_pretrained_full(args.weights)
        model, variables, name = loaded.model, loaded.variables, args.weights
        size = args.size or loaded.preprocessing.input_size
    else:
        model = create_model(args.model)
        size = args.size or model_entry(args.model).preprocessing.input_size
        variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, size, size, 3), np.float32))
        name = args.model
    x = np.random.default_rng(0).standard_normal((args.batch, size, size, 3)).astype(np.float32)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    forward = jax.jit(model.apply)
    start = time.perf_counter()
    ours_out = [np.asarray(a) for a in jax.tree.leaves(forward(variables, x))]  # EfficientDet: 10
    ours_first = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = os.path.join(tmp, "model.onnx")
        save_onnx(to_onnx(model, variables, input_size=size, layout="nchw"), path)
        export_s = time.perf_counter() - start
        session = onnx_session(path, threads=args.threads)
    feed = {session.get_inputs()[0].name: x_nchw}
    ort_out = session.run(None, feed)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ort_out, ours_out))

    def ours():
        jax.block_until_ready(forward(variables, x))

    def ort():
        session.run(None, feed)

    iters = {}
    for label, run in (("ours", ours), ("ort", ort)):
        run()
        start = time.perf_counter()
        run()
        iters[label] = max(1, int(args.min_time / max(time.perf_counter() - start, 1e-6)))
    rates = {"ours": [], "ort": []}
    for _ in range(args.repeats):
        rates["ours"].append(_images_per_s(ours, args.batch, iters["ours"]))
        rates["ort"].append(_images_per_s(ort, args.batch, iters["ort"]))
    ours_med, ort_med = statistics.median(rates["ours"]), statistics.median(rates["ort"])
    print(f"{name}: batch {args.batch}, {size} px, float32, {args.repeats} interleaved repeats")
    print(f"  flax_effnet (XLA:CPU, jit)  {ours_med:8.1f} images/s   (first call {ours_first:.1f} s)")
    print(f"  ONNX Runtime (exported)     {ort_med:8.1f} images/s   (export {export_s:.1f} s)")
    print(f"  ratio ORT / ours            {ort_med / ours_med:8.2f}x   max |output diff| {diff:.2g}")
    print(f"after: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
