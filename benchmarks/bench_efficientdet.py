"""EfficientDet eval throughput: flax_effnet against effdet 0.4.1 with the same weights, in one run.

    python benchmarks/bench_efficientdet.py                          # tf_efficientdet_d0, batch 1, 512 px
    python benchmarks/bench_efficientdet.py --model efficientdet_d0 --batch 4 --size 384 --threads 2

effdet's model is built for the input size (its resampling sizes are fixed at construction),
its BN statistics calibrated on the input (`peers.calibrate_`), its state_dict converted by
`convert_state_dict`, and the float32 outputs of both checked to agree within 1e-4 of their
magnitude. Then the network forward (class and box outputs of every level; no anchors or NMS)
of each runs interleaved repeat by repeat (`bench_throughput`'s helpers, so load from other
processes hits both alike); printed: median images/s, the ratio ours/effdet, and our compile
time. torch flushes denormals to zero here, as XLA:CPU does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Imported first: it restricts the process to --threads cores before JAX or torch start.
from bench_throughput import THREADS, Contestant, calibrate_iters, interleaved, measure_first_call  # noqa: E402
from peers import calibrate_  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from flax_effnet import list_models, model_entry  # noqa: E402
from flax_effnet.convert import convert_state_dict  # noqa: E402
from flax_effnet.convert.verify import import_torchvision  # noqa: E402

GATE = 1e-4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tf_efficientdet_d0", help="an effdet model name")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=None, help="square input size (default: the model's)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per contestant (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds one repeat should last")
    p.add_argument("--threads", type=int, default=None, help="cores for both (default: all)")
    p.add_argument("--depthwise-impl", default="auto", choices=["auto", "conv", "shift"])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.model not in list_models("*efficientdet_*"):
        raise SystemExit(f"--model must be one of {', '.join(list_models('*efficientdet_*'))}")
    size = args.size or model_entry(args.model).preprocessing.input_size
    import_torchvision()
    import effdet
    import torch

    torch.set_num_threads(THREADS)
    # XLA:CPU flushes denormals to zero; torch computes them (slowly) unless told to.
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    peer = effdet.create_model(args.model, pretrained=False, pretrained_backbone=False, image_size=(size, size)).eval()
    x = np.random.RandomState(0).randn(args.batch, 3, size, size).astype(np.float32)
    torch_x = torch.from_numpy(x)
    calibrate_(peer, torch_x)
    model, variables, _ = convert_state_dict(peer.state_dict(), variant=args.model)
    model = model.clone(depthwise_impl=args.depthwise_impl)
    x_nhwc = jax.device_put(x.transpose(0, 2, 3, 1))
    forward = jax.jit(lambda v, x: model.apply(v, x))

    with torch.no_grad():
        theirs = peer(torch_x)
    t0 = time.perf_counter()
    ours = jax.block_until_ready(forward(variables, x_nhwc))
    compile_s = time.perf_counter() - t0
    worst = 0.0
    for a, r in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
        r = r.numpy().transpose(0, 2, 3, 1)
        worst = max(worst, float(np.abs(np.asarray(a) - r).max()) / max(1.0, float(np.abs(r).max())))
    print(f"{args.model} batch {args.batch} {size}px float32 | jax {jax.__version__} "
          f"{jax.default_backend()} | torch {torch.__version__}, {torch.get_num_threads()} threads | "
          f"XLA cores {THREADS} | outputs agree: worst diff / max(1, |output|) {worst:.2e}")
    if worst > GATE:
        raise SystemExit("outputs differ: the conversion or the model is wrong")

    def torch_step():
        with torch.no_grad():
            return peer(torch_x)

    contestants = [
        Contestant("flax_effnet", lambda: forward(variables, x_nhwc), jax.block_until_ready),
        Contestant("effdet", torch_step, lambda out: None),
    ]
    for c in contestants:
        measure_first_call(c)
        calibrate_iters(c, args.warmup, args.min_time)
    interleaved(contestants, args.repeats, args.batch)
    ips = [1.0 / statistics.median(c.times) for c in contestants]
    print(f"  flax_effnet compile + first call {compile_s:.1f} s")
    for c, v in zip(contestants, ips):
        print(f"  {c.name:12s} {v:8.2f} images/s")
    print(f"  ratio flax_effnet / effdet: {ips[0] / ips[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
