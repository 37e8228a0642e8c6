"""Where XLA:CPU spends a model's eval forward or train step: time per fused kernel.

Runs the jitted function under `jax.profiler.trace` (a Perfetto trace, no TensorBoard
needed), takes each XLA thunk's median duration over the traced calls, and prints the slowest
kernels and the totals per kind of fusion (`ynn_fusion` are YNNPACK matmuls, the loop
fusions are named by XLA after their ops, e.g. `divide_multiply_fusion`). The compiled HLO
is written beside the trace, to look a fusion up by name.

Medians, not means: on a shared 2-core VM a kernel now and then takes 4-10 times its usual
time (b0's 16-to-96-channel expansion: 4.0, 4.1, 17.6 and 41.2 ms in four of five calls),
which made the mean per kernel, and the per-kind totals, overstate the kernels that happened
to be running then. The mean total is printed beside the median one, to show how much that was.

    python benchmarks/profile_fusions.py                         # b0 eval, batch 8, f32
    python benchmarks/profile_fusions.py --model rexnet_100 --mode train --out /tmp/prof
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

from flax_effnet import create_model, model_entry
from flax_effnet.host import keep_freed_memory, set_xla_cpu_flags


def hlo_instruction_names(hlo_text: str) -> set[str]:
    """Names of the compiled module's instructions: the trace's kernel events carry them,
    its other events (the runtime's bookkeeping, Python frames) do not."""
    return set(re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = ", hlo_text, flags=re.M))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--mode", default="eval", choices=["eval", "train"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=None, help="default: the model's input size")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--calls", type=int, default=7, help="traced calls (times are per call)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default="profile_out", help="trace and HLO go here")
    return p.parse_args(argv)


def build(args):
    """(jitted function, its arguments) for the chosen model and mode."""
    model = create_model(args.model, dtype=jnp.dtype(args.dtype))
    size = args.size or model_entry(args.model).preprocessing.input_size
    x = jnp.asarray(np.random.default_rng(0).standard_normal((args.batch, size, size, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    if args.mode == "eval":
        return jax.jit(model.apply), (variables, x)

    def loss(params, batch_stats, x):
        out, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(0), "drop_path": jax.random.key(1)},
        )
        return out.astype(jnp.float32).mean(), updates

    return jax.jit(jax.grad(loss, has_aux=True)), (variables["params"], variables["batch_stats"], x)


def kernel_durations(trace_dir: str, kernels: set[str]) -> dict[str, list[float]]:
    """Each kernel's (an HLO instruction name) event durations in ms, in trace order."""
    # The newest: each run adds a timestamped run directory under trace_dir.
    path = max(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    durations = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e["name"] in kernels:
            durations[e["name"]].append(e["dur"] / 1000)
    return durations


def per_call_ms(
    durations: dict[str, list[float]], calls: int, typical=statistics.median
) -> dict[str, float]:
    """ms per call of each kernel: its `typical` event duration times its events per call."""
    return {k: typical(v) * len(v) / calls for k, v in durations.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    set_xla_cpu_flags()
    keep_freed_memory()
    fn, fn_args = build(args)
    for _ in range(3):
        jax.block_until_ready(fn(*fn_args))
    os.makedirs(args.out, exist_ok=True)
    hlo = fn.lower(*fn_args).compile().as_text()
    with open(os.path.join(args.out, f"hlo_{args.mode}.txt"), "w") as f:
        f.write(hlo)
    trace_dir = os.path.join(args.out, f"trace_{args.mode}")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(args.calls):
            jax.block_until_ready(fn(*fn_args))
    durations = kernel_durations(trace_dir, hlo_instruction_names(hlo))
    per_call = per_call_ms(durations, args.calls)
    mean_total = sum(per_call_ms(durations, args.calls, statistics.fmean).values())
    print(f"{args.model} {args.mode}, batch {args.batch}, {args.dtype}: "
          f"{sum(per_call.values()):.1f} ms of kernels per call, each kernel's median over "
          f"{args.calls} traced calls (means: {mean_total:.1f} ms)")
    for name, ms in sorted(per_call.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {ms:8.2f} ms  {name}")
    kinds = collections.Counter()
    for name, ms in per_call.items():
        kinds[re.sub(r"\.\d+$", "", name)] += ms
    print("by kind:")
    for kind, ms in kinds.most_common():
        print(f"  {ms:8.2f} ms  {kind}")
    print(f"HLO and trace: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
