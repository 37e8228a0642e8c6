"""XLA:CPU compiler options for flax_effnet's eval forward and train step, in one process.

XLA reads its debug options per compilation as well as from `XLA_FLAGS`: JAX passes
`lowered.compile(compiler_options={...})` through to them. So every option set below compiles
its own executable of the same function in this one process, and the executables run
interleaved repeat by repeat, as `bench_throughput.py` does for its contestants; load from
other processes then hits every option set alike. Before timing, each option set's logits
(eval) and loss and gradients (one train step's `value_and_grad`) are compared with the
default compilation's, on timm weights with calibrated BN (as in `bench_throughput.py`).

    python benchmarks/bench_xla_flags.py                        # b0, batch 8, 224 px, f32
    python benchmarks/bench_xla_flags.py --dtype bfloat16 --sets default,vw512
    python benchmarks/bench_xla_flags.py --list

An option set that XLA rejects (an unknown enum value on this jaxlib) is reported and skipped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import build_peer, build_timm_model, calibrate_  # noqa: E402

from flax_effnet.convert import convert_state_dict  # noqa: E402
from flax_effnet.host import keep_freed_memory  # noqa: E402

# Name -> XLA debug options. The names of the values are those jaxlib 0.10.2 accepts
# (`XLA_FLAGS=--help`, and the enum names in its shared objects).
OPTION_SETS: dict[str, dict[str, object]] = {
    "default": {},
    "vw512": {"xla_cpu_prefer_vector_width": 512},
    "fast_math": {"xla_cpu_enable_fast_math": True},
    "vw512+fast_math": {"xla_cpu_prefer_vector_width": 512, "xla_cpu_enable_fast_math": True},
    "onednn": {"xla_cpu_use_onednn": True},
    "onednn_dot": {"xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "onednn_custom_call": {"xla_cpu_experimental_onednn_custom_call": True},
    "no_xnnpack": {"xla_cpu_use_xnnpack": False},
    "xnn_greedy": {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
    "xnn_dot": {"xla_cpu_experimental_xnn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "ynn_dot": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "ynn_eltwise": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_ELTWISE"},
    "ynn_reduce": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"},
    "ynn_conv": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"},
    "fast_runtime": {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_RUNTIME"},
    "sched_memory": {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"},
    "sched_concurrency": {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"},
    "tiling_propagation": {"xla_cpu_experimental_enable_tiling_propagation": True},
    "no_fusion_emitters": {"xla_cpu_use_fusion_emitters": False},
}


def build(args):
    """Our model with a calibrated timm peer's weights, an input batch and labels."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    rs = np.random.RandomState(0)
    peer = build_timm_model(args.model) if args.model else build_peer("timm", args.variant, 0)
    from flax_effnet import model_entry
    from flax_effnet.specs import resolve_variant

    size = args.size or (model_entry(args.model).preprocessing.input_size if args.model
                         else resolve_variant(args.variant).resolution)
    x = rs.randn(args.batch, size, size, 3).astype(np.float32)
    import torch

    calibrate_(peer.model, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    model, variables, _ = convert_state_dict(
        peer.model.state_dict(), format=None if args.model else "timm", variant=args.model)
    model = model.clone(dtype=dtype)
    y = rs.randint(0, 1000, size=(args.batch,)).astype(np.int32)
    return model, variables, jnp.asarray(x), jnp.asarray(y), size


def functions(model, lr: float = 0.01):
    """(eval forward, loss+gradients, donated train step, optimizer) of `model`."""
    tx = optax.sgd(lr, momentum=0.9)

    def forward(v, x):
        return model.apply(v, x)

    def loss_fn(params, batch_stats, x, y):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=True, mutable=["batch_stats"],
                                      rngs={"dropout": jax.random.key(0),
                                            "drop_path": jax.random.key(1)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    grads = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, x, y):
        params, batch_stats, opt_state = state
        (loss, upd), g = grads(params, batch_stats, x, y)
        updates, opt_state = tx.update(g, opt_state, params)
        return (optax.apply_updates(params, updates), upd["batch_stats"], opt_state), loss

    return jax.jit(forward), jax.jit(grads), jax.jit(train_step, donate_argnums=0), tx


def rel_err(a, b) -> float:
    """max |a - b| / max |b| over a pytree's leaves (the worst leaf)."""
    errs = jax.tree.map(lambda u, v: float(np.abs(np.asarray(u, np.float32) - np.asarray(v, np.float32)).max()
                                           / max(float(np.abs(np.asarray(v, np.float32)).max()), 1e-30)), a, b)
    return max(jax.tree.leaves(errs))


def global_rel_err(a, b) -> float:
    """||a - b|| / ||b|| over all of a pytree's leaves together. For gradients: a BatchNorm
    bias feeding another BatchNorm (through a linear conv) has a gradient that is zero up to
    round-off, so the worst leaf's relative difference (`rel_err`) is noise, 1.7 for b0."""
    sq = lambda t: sum(float(np.sum(np.square(np.asarray(u, np.float64)))) for u in jax.tree.leaves(t))
    return (sq(jax.tree.map(lambda u, v: np.asarray(u, np.float64) - np.asarray(v, np.float64), a, b))
            / max(sq(b), 1e-300)) ** 0.5


def time_interleaved(calls: dict, repeats: int, batch: int, min_time: float):
    """Images/s per repeat for every named zero-argument call, interleaved and rotated: by
    wall clock, and by the process's CPU time (all threads; less sensitive to other processes
    taking the cores, as long as the option sets use the threads alike)."""
    iters = {}
    for k, f in calls.items():
        jax.block_until_ready(f())
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        iters[k] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6) + 0.999))
    names = list(calls)
    wall, cpu = {k: [] for k in names}, {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(iters[k]):
                res = calls[k]()
            jax.block_until_ready(res)
            wall[k].append(iters[k] * batch / (time.perf_counter() - t0))
            cpu[k].append(iters[k] * batch / (time.process_time() - c0))
    return wall, cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="b0")
    p.add_argument("--model", default=None, help="a registered model instead of --variant")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--sets", default="default,vw512,fast_math,onednn,onednn_dot,xnn_greedy,ynn_dot",
                   help="comma-separated option-set names (--list); 'default' is always first")
    p.add_argument("--modes", default="eval,train")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--malloc", default="keep", choices=["default", "keep"])
    p.add_argument("--list", action="store_true", help="print the option sets and exit")
    args = p.parse_args(argv)
    if args.list:
        for k, v in OPTION_SETS.items():
            print(f"{k:20s} {v}")
        return 0
    names = ["default"] + [s for s in args.sets.split(",") if s and s != "default"]
    unknown = [s for s in names if s not in OPTION_SETS]
    if unknown:
        print(f"unknown option sets: {unknown}; known: {', '.join(OPTION_SETS)}", file=sys.stderr)
        return 2
    if args.malloc == "keep":
        keep_freed_memory()
    model, variables, x, y, size = build(args)
    modes = args.modes.split(",")
    print(f"{args.model or args.variant} batch {args.batch} {size}px {args.dtype} | jax "
          f"{jax.__version__} | XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} | "
          f"load average {os.getloadavg()[0]:.2f}")
    fwd, grads, step, tx = functions(model)
    params, stats = variables["params"], variables["batch_stats"]
    compiled: dict[str, dict] = {}
    for name in names:
        opts = OPTION_SETS[name]
        try:
            c = {}
            t0 = time.perf_counter()
            if "eval" in modes:
                c["eval"] = fwd.lower(variables, x).compile(compiler_options=opts)
            t1 = time.perf_counter()
            if "train" in modes:
                c["grads"] = grads.lower(params, stats, x, y).compile(compiler_options=opts)
                state = (params, stats, tx.init(params))
                c["train"] = step.lower(state, x, y).compile(compiler_options=opts)
            t2 = time.perf_counter()
        except Exception as e:  # XLA rejects an option value this jaxlib does not know
            print(f"{name}: rejected ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
            continue
        c["compile"] = (t1 - t0, t2 - t1)
        compiled[name] = c

    ref = compiled["default"]
    checks = {}
    for name, c in compiled.items():
        row = {}
        if "eval" in c:
            row["logits_rel"] = rel_err(c["eval"](variables, x), ref["eval"](variables, x))
        if "grads" in c:
            row["grads_rel"] = global_rel_err(c["grads"](params, stats, x, y), ref["grads"](params, stats, x, y))
        checks[name] = row

    results = {}
    if "eval" in modes:
        results["eval"] = time_interleaved(
            {k: (lambda c=c: c["eval"](variables, x)) for k, c in compiled.items()},
            args.repeats, args.batch, args.min_time)
    if "train" in modes:
        states = {k: [jax.tree.map(jnp.copy, (params, stats, tx.init(params)))] for k in compiled}

        def train_call(k):
            def f():
                states[k][0], loss = compiled[k]["train"](states[k][0], x, y)
                return loss
            return f

        results["train"] = time_interleaved({k: train_call(k) for k in compiled},
                                            args.repeats, args.batch, args.min_time)
    print(f"load average after timing {os.getloadavg()[0]:.2f}")
    header = "| option set | " + " | ".join(
        f"{m} img/s (x default) | {m} img/CPU-s (x default)" for m in results) + \
        " | logits rel. diff (worst leaf) | grads rel. diff (norm) | compile s (eval, train) |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for k in compiled:
        cells = []
        for res in results.values():
            for per in res:  # wall, cpu
                med = statistics.median(per[k])
                cells.append(f"{med:.1f} ({med / statistics.median(per['default']):.2f})")
        ch = checks[k]
        print(f"| {k} | " + " | ".join(cells) + f" | {ch.get('logits_rel', float('nan')):.1e} | "
              f"{ch.get('grads_rel', float('nan')):.1e} | "
              f"{compiled[k]['compile'][0]:.1f}, {compiled[k]['compile'][1]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
