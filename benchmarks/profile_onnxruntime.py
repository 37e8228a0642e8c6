"""Where ONNX Runtime spends the eval forward of the timm model we race: time per node.

The counterpart of `profile_fusions.py` for the peer that is fastest on CPU. Exports the timm
model (random weights, BatchNorm calibrated, as `bench_throughput.py` does) to ONNX, runs it
with ONNX Runtime's profiler on, and prints each node's median time per call, totals per op
type, and totals per (op type, layer role): the role is the node's first path component
below the block index (`conv_pw`, `conv_dw`, `conv_pwl`, `bn1`, `se`, `conv_stem`, ...), so
the rows line up with our kernels' layer names (`conv_exp`, `conv_dw`, `conv_pwl`, ...).

    python benchmarks/profile_onnxruntime.py                        # efficientnet_b0, batch 8
    python benchmarks/profile_onnxruntime.py --model rexnet_100 --top 10

On a 2-core AVX2 EPYC it showed (b0, batch 8): BatchNorm folded into the convolutions, SiLU
left as a node of its own (`QuickGelu`, 22 of 94 ms), and the 1x1 convolutions on its blocked
(NCHWc) layout 38 ms, about 0.7x the time our YNNPACK matmuls took for the same layers.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys
import tempfile
import time

# Path components that only say where a layer sits: timm's `blocks.3.1`, `features.7`, ...
_POSITION = re.compile(r"^(blocks|features|stages|layers)(\.\d+)*$")
_WARMUP = 3  # calls before the timed ones


def layer_role(node_name: str) -> str:
    """'/blocks/blocks.1/blocks.1.0/conv_pw/Conv_output_0_nchwc' -> 'conv_pw'; '-' for a node
    outside any layer (ONNX Runtime's own layout reorders, 'ReorderOutput_token_302')."""
    parts = [p for p in node_name.strip("/").split("/") if p and not _POSITION.match(p)]
    return parts[0] if len(parts) > 1 else "-"


def node_times(events: list[dict], calls: int) -> dict[tuple[str, str], float]:
    """(node name, op type) -> ms per call: the median of the node's kernel events times their
    count per call (medians, as in `profile_fusions.py`: one stalled call must not dominate)."""
    durations = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            durations[(name, e["args"]["op_name"])].append(e["dur"] / 1000)
    return {k: statistics.median(v) * len(v) / calls for k, v in durations.items()}


def totals(per_node: dict[tuple[str, str], float], key) -> list[tuple[object, float]]:
    """Per-node times summed by `key(name, op)`, largest first."""
    sums = collections.Counter()
    for (name, op), ms in per_node.items():
        sums[key(name, op)] += ms
    return sums.most_common()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_b0", help="a timm model name")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--calls", type=int, default=15, help="profiled calls (times are per call)")
    p.add_argument("--top", type=int, default=20)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from peers import build_engine, build_timm_model, calibrate_, export_onnx

    model = build_timm_model(args.model).model
    x = torch.from_numpy(np.random.RandomState(0).randn(args.batch, 3, args.size, args.size).astype(np.float32))
    calibrate_(model, x)
    with tempfile.TemporaryDirectory() as tmp:
        # The session `bench_throughput.py` races, with the profiler on.
        run = build_engine("onnxruntime", export_onnx(model, x, os.path.join(tmp, "model.onnx")),
                           args.threads, profile_prefix=os.path.join(tmp, "ort"))
        x = x.numpy()
        for _ in range(_WARMUP):
            run(x)
        start = time.perf_counter()
        for _ in range(args.calls):
            run(x)
        wall = (time.perf_counter() - start) / args.calls * 1e3
        with open(run.end_profiling()) as f:
            events = json.load(f)
    per_node = node_times(events, args.calls + _WARMUP)  # the profiler saw the warm-up calls too
    print(f"onnxruntime {run.version} {args.model}, batch {args.batch}, {args.size} px, "
          f"{args.threads} threads: {sum(per_node.values()):.1f} ms of nodes per call, "
          f"{wall:.1f} ms per call (wall clock, profiler on)")
    print("by op type:")
    for op, ms in totals(per_node, lambda name, op: op):
        print(f"  {ms:8.2f} ms  {op}")
    print("by op type and layer role:")
    for (op, role), ms in totals(per_node, lambda name, op: (op, layer_role(name)))[: args.top]:
        print(f"  {ms:8.2f} ms  {op:14s} {role}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
