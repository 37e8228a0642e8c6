"""Throughput of flax_effnet against its strongest peers with the same weights, in one run.

For one variant, batch, resolution and dtype this measures eval forward images/s and train-step
images/s (forward + backward + SGD-momentum update) of flax_effnet and of each peer,
interleaved repeat by repeat so that load from other processes hits every contestant alike, and
prints the median of the repeats, the ratio ours/peer, compile (or first-call) time and peak memory.
The peers: a PyTorch model (timm by default; eval and train step) and, for eval on CPU, ONNX
Runtime and OpenVINO running an ONNX export of that same PyTorch model.

    python benchmarks/bench_throughput.py                       # CPU: b0, batch 8, 224 px, fp32
    python benchmarks/bench_throughput.py --dtype bfloat16      # + our f32 eval, OpenVINO bf16
    python benchmarks/bench_throughput.py --isolate 2           # each contestant in its own process
    python benchmarks/bench_throughput.py --model mobilenetv2_100   # any registered model vs timm
    python benchmarks/bench_throughput.py --variant b4 --batch 64 --dtype bfloat16 \
        --peer timm --compile                                    # GPU: AMP + channels_last, eager and compiled

On GPU the torch peers run under `torch.autocast` (bf16/fp16) with channels_last; with
`--compile` each is also run through `torch.compile`. Before timing, the peer's BN statistics are
calibrated on the input (see `peers.calibrate_`), its weights are converted into ours by
`flax_effnet.convert`, and every contestant's eval logits are compared with our float32 ones:
in float32 they must agree within 1e-4; in bf16 the difference is printed.

Engines (`--engines`): ONNX Runtime's CPU provider runs float32 only; OpenVINO runs f32, and
bf16 too with `--dtype bfloat16` where the CPU has avx512_bf16 or AMX. Interleaved, ONNX
Runtime's threads do not spin between calls (they would take the cores from the contestant
after it); OpenMP or TBB pools that spin anyway can still handicap whoever runs next, so
`--isolate ROUNDS` runs each kind of contestant alone in its own process (engines at their
default settings), ROUNDS times in alternating order, and reports the medians.

`--malloc keep` runs the whole process (every contestant) with `flax_effnet.host.
keep_freed_memory()`, as the trainer does; by default glibc's malloc hands large blocks back to
the kernel on free, and each step of either framework page-faults them in again.

Memory: on GPU, torch's `max_memory_allocated` per contestant and JAX's `peak_bytes_in_use`; on
CPU, the growth of the process's peak RSS while a contestant runs (Linux `clear_refs` resets
the peak between contestants), plus XLA's own buffer accounting (`memory_analysis`) for ours.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Callable

# --threads must restrict the process before JAX or torch start their thread pools.
def _early_threads() -> int:
    available = sorted(os.sched_getaffinity(0))
    for i, arg in enumerate(sys.argv):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else (
            sys.argv[i + 1] if arg == "--threads" and i + 1 < len(sys.argv) else None)
        if value is not None and 0 < int(value) < len(available):
            os.sched_setaffinity(0, available[: int(value)])  # XLA:CPU sizes its pool by affinity
            return int(value)
    return len(available)


THREADS = _early_threads()

# The XLA:CPU flags the console scripts set (flax_effnet.host), unless XLA_FLAGS is set: ours
# runs as `train_efficientnet` and `evaluate_efficientnet` run it. `XLA_FLAGS= python ...`
# measures XLA's defaults instead.
from flax_effnet.host import set_xla_cpu_flags  # noqa: E402

set_xla_cpu_flags()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import ENGINES, PEERS, build_engine, build_peer, build_timm_model, calibrate_  # noqa: E402

from flax_effnet import EfficientNet, create_model, list_models, model_entry  # noqa: E402
from flax_effnet.convert import convert_state_dict  # noqa: E402
from flax_effnet.host import keep_freed_memory  # noqa: E402
from flax_effnet.layers import resolve_depthwise_impl  # noqa: E402
from flax_effnet.specs import resolve_variant  # noqa: E402

LOGITS_ATOL = 1e-4


# ----------------------------------------------------------------------------- memory

def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; Linux >= 4.0.

    Free heap memory that malloc keeps from earlier steps is first handed back to the OS
    (`malloc_trim`); otherwise a framework that reuses it would look as if it needed none.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Contestant:
    """One model in one mode: a step function plus what we learned about it."""

    def __init__(self, name: str, step: Callable[[], object], sync: Callable[[object], None],
                 logits: Callable[[], np.ndarray] | None = None):
        self.name, self.step, self.sync = name, step, sync
        self.logits = logits  # eval: float32 numpy logits, for the agreement check
        self.times: list[float] = []  # seconds per image, one per repeat
        self.first_call_s = math.nan
        self.compile_s = math.nan  # AOT compile (ours) - nan where not separable
        self.iters = 1
        self.mem: dict[str, float] = {}

    def run(self, n: int) -> float:
        t0 = time.perf_counter()
        out = None
        for _ in range(n):
            out = self.step()
        self.sync(out)
        return time.perf_counter() - t0


# ----------------------------------------------------------------------------- ours

def _outputs(out) -> np.ndarray:
    """A forward's outputs as one float32 vector: logits, or EfficientDet's ten head outputs."""
    return np.concatenate([np.asarray(a, np.float32).ravel() for a in jax.tree.leaves(out)])


def build_ours(args, peer, x_nhwc, labels, dtype, train: bool = True):
    """Eval and (with `train`) train-step contestants for flax_effnet; the train step is
    None without it (it needs a classifier's logits: EfficientDet runs eval only).

    With a peer, its weights come through `flax_effnet.convert` (the peer names are converter
    format names), which also sets padding and BN epsilon to match it.
    """
    device = jax.devices()[0]
    x = jax.device_put(jnp.asarray(x_nhwc), device)
    y = jax.device_put(jnp.asarray(labels), device)
    if peer is not None:
        # --model: the converter detects the timm format (timm_mobilenetv2, timm_rexnet, ...).
        model, variables, _ = convert_state_dict(
            peer.model.state_dict(), format=None if args.model else peer.name, variant=args.model
        )
        model = model.clone(depthwise_impl=args.depthwise_impl, dtype=dtype)
    elif args.model:
        model = create_model(args.model, depthwise_impl=args.depthwise_impl, dtype=dtype)
        variables = jax.jit(model.init)(jax.random.key(0), x)
    else:  # no peer: our own init
        model = EfficientNet(args.variant, depthwise_impl=args.depthwise_impl, dtype=dtype)
        variables = jax.jit(model.init)(jax.random.key(0), x)
    variables = jax.device_put(variables, device)

    # --- eval forward
    fwd = jax.jit(lambda v, x: model.apply(v, x))
    t0 = time.perf_counter()
    lowered = fwd.lower(variables, x)
    t1 = time.perf_counter()
    fwd_c = lowered.compile()
    t2 = time.perf_counter()
    name = "flax_effnet" + ("" if dtype == jnp.float32 else f" {jnp.dtype(dtype).name}")
    ev = Contestant(name, lambda: fwd_c(variables, x), jax.block_until_ready,
                    lambda: _outputs(fwd_c(variables, x)))
    ev.compile_s = t2 - t0
    ev.mem.update(_xla_memory(fwd_c))
    if not train:
        return ev, None

    # --- train step: value_and_grad + optax SGD with momentum, state donated
    tx = optax.sgd(args.lr, momentum=0.9)
    rng = jax.random.key(1)

    def loss_fn(params, batch_stats, x, y, step):
        r_drop, r_path = jax.random.split(jax.random.fold_in(rng, step))
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True,
            mutable=["batch_stats"], rngs={"dropout": r_drop, "drop_path": r_path},
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updates["batch_stats"]

    def train_step(state, x, y):
        params, batch_stats, opt_state, step = state
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, y, step)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, batch_stats, opt_state, step + 1), loss

    step_fn = jax.jit(train_step, donate_argnums=0)
    copy = jax.tree.map(jnp.copy, variables)  # the donated state must not alias `variables`
    state = [(copy["params"], copy["batch_stats"], tx.init(copy["params"]), jnp.zeros((), jnp.int32))]
    t0 = time.perf_counter()
    train_c = step_fn.lower(state[0], x, y).compile()
    t1 = time.perf_counter()

    def one_train_step():
        state[0], loss = train_c(state[0], x, y)
        return loss

    tr = Contestant(name, one_train_step, jax.block_until_ready)
    tr.compile_s = t1 - t0
    tr.mem.update(_xla_memory(train_c))
    return ev, tr


def _xla_memory(compiled) -> dict[str, float]:
    try:
        m = compiled.memory_analysis()
        return {
            "xla_temp_mb": m.temp_size_in_bytes / 2**20,
            "xla_total_mb": (m.temp_size_in_bytes + m.argument_size_in_bytes
                             + m.output_size_in_bytes - m.alias_size_in_bytes) / 2**20,
        }
    except Exception:  # not every backend implements it
        return {}


# ----------------------------------------------------------------------------- torch peers

def build_torch(args, peer, x_nchw, labels, on_gpu, compiled):
    """Eval and train contestants for a PyTorch peer (optionally torch.compile'd)."""
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda" if on_gpu else "cpu")
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and on_gpu)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = peer.model.to(device).to(memory_format=fmt)
    x = x_nchw.to(device).contiguous(memory_format=fmt)
    y = labels.to(device)
    amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.dtype)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else None
    sync = (lambda _: torch.cuda.synchronize()) if on_gpu else (lambda _: None)
    tag = peer.name + (" +compile" if compiled else "") + (" +cl" if channels_last else "")

    import contextlib
    ctx = autocast or contextlib.nullcontext
    eval_model = torch.compile(model) if compiled else model

    def eval_step():
        with torch.inference_mode(), ctx():
            return eval_model(x)

    # A separate deep copy for training, so eval keeps the calibrated weights.
    import copy as _copy
    train_model = _copy.deepcopy(model).train()
    train_call = torch.compile(train_model) if compiled else train_model
    opt = torch.optim.SGD(train_model.parameters(), lr=args.lr, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if args.dtype == "float16" else None

    def train_step():
        opt.zero_grad(set_to_none=True)
        with ctx():
            loss = F.cross_entropy(train_call(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss

    model.eval()
    logits = lambda: eval_step().float().cpu().numpy()  # noqa: E731
    return Contestant(tag, eval_step, sync, logits), Contestant(tag, train_step, sync)


def build_engines(args, peer, x_nchw, engines, precisions) -> list[Contestant]:
    """Eval contestants for ONNX Runtime and OpenVINO on an ONNX export of the torch peer.

    One per engine and precision that the engine runs here: ONNX Runtime's CPU provider is
    float32 only; OpenVINO runs bf16 where the CPU has avx512_bf16 or AMX.
    """
    import tempfile

    from peers import export_onnx

    out = []
    x = np.ascontiguousarray(x_nchw.numpy())
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(peer.model, x_nchw, os.path.join(tmp, "model.onnx"))
        for name in engines:
            for precision in precisions:
                if name == "onnxruntime" and precision != "f32":
                    continue
                try:
                    t0 = time.perf_counter()
                    run = build_engine(name, path, THREADS, precision, spin=args.only is not None)
                    built_s = time.perf_counter() - t0
                except Exception as e:  # an unusable install should not stop the others
                    print(f"engine {name} {precision}: unavailable ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})")
                    continue
                if run.precision != precision:
                    print(f"engine {name}: asked for {precision}, runs {run.precision}; skipped")
                    continue
                c = Contestant(f"{name} {run.version} {precision}", lambda run=run: run(x),
                               lambda _: None, lambda run=run: np.asarray(run(x), np.float32))
                c.compile_s = built_s
                out.append(c)
    return out


# ----------------------------------------------------------------------------- measuring

def measure_first_call(c: Contestant) -> None:
    t0 = time.perf_counter()
    c.sync(c.step())
    c.first_call_s = time.perf_counter() - t0


def calibrate_iters(c: Contestant, warmup: int, min_time: float) -> None:
    """Warm up, then pick how many steps one repeat runs so that it lasts >= min_time."""
    per_step = min(c.run(1) for _ in range(max(warmup, 1)))
    c.iters = max(1, math.ceil(min_time / max(per_step, 1e-6)))


def measure_memory(c: Contestant, on_gpu: bool) -> None:
    if on_gpu:
        if c.name.startswith("flax_effnet"):
            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                c.mem["jax_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
        else:
            import torch
            torch.cuda.reset_peak_memory_stats()
            c.run(2)
            c.mem["torch_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return
    if _reset_peak_rss():
        before = _proc_status_kib("VmRSS")
        c.run(1)
        peak = _proc_status_kib("VmHWM")
        if before is not None and peak is not None:
            c.mem["rss_growth_mb"] = (peak - before) / 1024


def interleaved(contestants: list[Contestant], repeats: int, batch: int) -> None:
    for r in range(repeats):
        # Rotate the order too, so no contestant always runs right after the same other one.
        for c in contestants[r % len(contestants):] + contestants[: r % len(contestants)]:
            c.times.append(c.run(c.iters) / (c.iters * batch))


def report(mode: str, contestants: list[Contestant], batch: int) -> list[dict]:
    ours = contestants[0]
    ours_ips = 1.0 / statistics.median(ours.times)
    rows = []
    print(f"\n== {mode} ==")
    print(f"{'contestant':34s} {'img/s':>9s} {'min-max img/s':>17s} {'ours/this':>9s} "
          f"{'steps':>5s} {'1st call s':>10s} {'compile s':>9s}  memory")
    for c in contestants:
        ips = 1.0 / statistics.median(c.times)
        lo, hi = 1.0 / max(c.times), 1.0 / min(c.times)
        mem = ", ".join(f"{k}={v:.0f}" for k, v in c.mem.items()) or "-"
        print(f"{c.name:34s} {ips:9.1f} {lo:8.1f}-{hi:<8.1f} {ours_ips / ips:9.2f} "
              f"{c.iters:5d} {c.first_call_s:10.2f} {c.compile_s:9.2f}  {mem}")
        rows.append(dict(mode=mode, name=c.name, img_s=ips, ratio_ours_over=ours_ips / ips,
                         first_call_s=c.first_call_s, compile_s=c.compile_s, **c.mem))
    return rows


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="b0", help="EfficientNet b0..b7")
    p.add_argument("--model", default=None,
                   help="a registered model instead of --variant (mobilenetv2_100, rexnet_100, ...); "
                   "its peer is timm's model of that name")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=None, help="image size (default: the variant's)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype; torch runs it as autocast (AMP), OpenVINO as its "
                   "inference precision; not float32: our float32 eval runs beside it")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per contestant (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first call")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds one repeat should last")
    p.add_argument("--peer", default="timm", choices=[*PEERS, "all", "none"],
                   help="PyTorch peer (eval and train step); the engines run its ONNX export")
    p.add_argument("--engines", default="auto",
                   help="comma-separated inference engines for eval (onnxruntime, openvino), "
                   "'none', or 'auto': both on CPU, none on GPU")
    p.add_argument("--compile", action="store_true", help="also run each torch peer via torch.compile")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--threads", type=int, default=None,
                   help="CPU cores for every framework (default: all this process may use)")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                   help="torch memory format; auto = on for GPU")
    p.add_argument("--depthwise-impl", default="auto", choices=["auto", "conv", "shift"])
    p.add_argument("--malloc", default="default", choices=["default", "keep"],
                   help="keep: flax_effnet.host.keep_freed_memory() for the whole process, so "
                   "every contestant reuses freed memory (as the trainer does); default: glibc's")
    p.add_argument("--modes", default="eval,train")
    p.add_argument("--isolate", type=int, default=0, metavar="ROUNDS",
                   help="run each contestant in its own process instead, ROUNDS alternating "
                   "rounds (for peers whose threads spin after a call); medians over rounds")
    p.add_argument("--only", default=None, choices=["ours", "ours_f32", "torch", *ENGINES],
                   help=argparse.SUPPRESS)  # one kind of contestant in this process (--isolate)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--no-check", action="store_true", help="skip the logits check")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    return p.parse_args(argv)


def check_logits(evals: list[Contestant], reference: np.ndarray, strict: bool, on_gpu: bool) -> dict:
    """max |logits - reference| per contestant; with `strict` (float32 everywhere) a difference
    beyond LOGITS_ATOL means a wrong weight copy or export, and stops the run."""
    diffs = {}
    for c in evals:
        if c.logits is None:
            continue
        diffs[c.name] = float(np.abs(np.ravel(c.logits()) - np.ravel(reference)).max())
        print(f"logits check: max |{c.name} - flax_effnet float32| = {diffs[c.name]:.2e}"
              + (f" (atol {LOGITS_ATOL:g})" if strict else
                 f" (max |logit| {float(np.abs(reference).max()):.2f})"))
        if strict and diffs[c.name] > LOGITS_ATOL:
            if on_gpu:  # cuDNN convs and XLA:GPU dots may run float32 as TF32
                print("warning: logits differ beyond atol on GPU; TF32 can do this, a wrong "
                      "weight copy too: run the check on CPU to tell them apart")
            else:
                raise SystemExit(f"logits of {c.name} differ: the weight copy, export or model is wrong")
    return diffs


ISOLATED_KINDS = ("ours", "ours_f32", "torch", *ENGINES)


def run_isolated(args, argv) -> int:
    """--isolate: each kind of contestant (ours, our float32 beside bf16, the torch peers, each
    engine) alone in a process (`--only KIND`), in rounds that alternate the order."""
    import json
    import subprocess
    import tempfile

    cmd, skip = [], False
    for a in argv if argv is not None else sys.argv[1:]:  # this run's arguments minus ours
        if skip:
            skip = False
        elif a in ("--isolate", "--json", "--only"):
            skip = True
        elif a.split("=", 1)[0] not in ("--isolate", "--json", "--only"):
            cmd.append(a)
    kinds = [k for k in ISOLATED_KINDS
             if (k != "ours_f32" or args.dtype != "float32") and (k not in ENGINES or args.engines == "auto"
                                                                   or k in args.engines.split(","))
             and (k != "torch" or args.peer != "none")]
    rows: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.isolate):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                out = os.path.join(tmp, f"{r}-{kind}.json")
                print(f"--- round {r + 1}/{args.isolate}: {kind} alone", flush=True)
                subprocess.run([sys.executable, os.path.abspath(__file__), *cmd, "--only", kind,
                                "--no-check", "--json", out], check=True)
                with open(out) as f:
                    for row in json.load(f)["rows"]:
                        rows.setdefault((row["mode"], row["name"]), []).append(row)
    load = os.getloadavg()
    print(f"\n== each kind of contestant in its own process, {args.isolate} rounds "
          f"(load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}) ==")
    result = []
    for mode in ("eval forward", "train step"):
        group = [(k[1], v) for k, v in rows.items() if k[0] == mode]
        if not group:
            continue
        ours = statistics.median(r["img_s"] for r in group[0][1])
        print(f"\n{mode}:\n{'contestant':34s} {'img/s per round':>24s} {'ours/this':>9s}")
        for name, rs in group:
            ips = [r["img_s"] for r in rs]
            print(f"{name:34s} {', '.join(f'{v:.1f}' for v in ips):>24s} "
                  f"{ours / statistics.median(ips):9.2f}")
            result.append(dict(mode=mode, name=name, img_s=statistics.median(ips), img_s_rounds=ips,
                               ratio_ours_over=ours / statistics.median(ips)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), threads=THREADS, isolated=True, rows=result,
                           loadavg=load), f, indent=1)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.isolate:
        return run_isolated(args, argv)
    # Before the first computation (jax.default_backend() starts XLA's thread pools).
    kept = args.malloc == "keep" and keep_freed_memory()
    malloc = "keep freed memory" if kept else "glibc default"
    platform = jax.default_backend()
    on_gpu = args.device == "gpu" or (args.device == "auto" and platform == "gpu")
    if on_gpu and platform != "gpu":
        raise SystemExit(f"--device gpu but JAX's backend is {platform}")
    if args.model and args.peer not in ("timm", "none"):
        raise SystemExit(f"--model {args.model}: its only peer is timm, not {args.peer}")
    if args.model and args.model not in list_models():
        raise SystemExit(f"--model {args.model!r} is not registered; known: {', '.join(list_models())}")
    args.engines = ([] if args.engines == "none" or (args.engines == "auto" and on_gpu) else
                    list(ENGINES) if args.engines == "auto" else args.engines.split(","))
    if set(args.engines) - set(ENGINES):
        raise SystemExit(f"--engines: unknown {sorted(set(args.engines) - set(ENGINES))}; "
                         f"known: {', '.join(ENGINES)}")
    label = args.model or args.variant
    size = args.size or (model_entry(args.model).preprocessing.input_size if args.model
                         else resolve_variant(args.variant).resolution)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[args.dtype]

    rs = np.random.RandomState(0)
    x_nhwc = rs.randn(args.batch, size, size, 3).astype(np.float32)
    labels = rs.randint(0, 1000, size=(args.batch,)).astype(np.int32)

    peer_names = [] if args.peer == "none" else (list(PEERS) if args.peer == "all" else [args.peer])
    if not on_gpu and args.peer == "all":
        print("note: timm/torchvision are GPU peers; on CPU they run without AMP or channels_last")
    peers, torch_x, torch_y = [], None, None
    if peer_names:
        import torch
        torch.set_num_threads(THREADS)
        torch.manual_seed(0)
        torch_x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())
        torch_y = torch.from_numpy(labels.astype(np.int64))
        for name in peer_names:
            try:
                peer = build_timm_model(args.model) if args.model else build_peer(name, args.variant, size)
            except Exception as e:  # an unusable install should not stop the other peers
                print(f"peer {name}: unavailable ({type(e).__name__}: {str(e).splitlines()[0]})")
                continue
            calibrate_(peer.model, torch_x)
            peers.append(peer)

    # Our settings follow the first usable peer (padding, BN eps); its weights are copied.
    ref = peers[0] if peers else None
    if len({(p.padding, p.bn_epsilon) for p in peers}) > 1:
        print("note: peers differ in padding/BN eps; ours follows", ref.name,
              "and the logits check runs against it only")
    impl = resolve_depthwise_impl(args.depthwise_impl)
    load = os.getloadavg()
    print(f"flax_effnet {label} batch {args.batch} {size}px {args.dtype} | "
          f"jax {jax.__version__} {platform} ({jax.devices()[0].device_kind}) depthwise={impl} | "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} | malloc: {malloc} | threads: {THREADS} "
          f"cores" + (f", torch {__import__('torch').__version__}" if peers else "")
          + f" | load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    only = args.only  # --isolate: one kind of contestant in this process
    evals, trains = [], []
    if only in (None, "ours"):
        ours_eval, ours_train = build_ours(args, ref, x_nhwc, labels, jdtype, train="train" in modes)
        evals.append(ours_eval)
        trains += [ours_train] if ours_train else []
    if jdtype != jnp.float32 and only in (None, "ours_f32"):
        # The bf16 target is against our own float32 eval, so it runs beside it.
        f32_eval, _ = build_ours(args, ref, x_nhwc, labels, jnp.float32, train=False)
        f32_eval.name = "flax_effnet float32"
        evals.append(f32_eval)
    for peer in peers if only in (None, "torch") else []:
        for compiled in ([False, True] if args.compile else [False]):
            try:
                e, t = build_torch(args, peer, torch_x, torch_y, on_gpu, compiled)
            except Exception as ex:
                print(f"peer {peer.name} (compile={compiled}): failed ({type(ex).__name__}: {ex})")
                continue
            evals.append(e)
            trains.append(t)
    engines = [e for e in args.engines if only in (None, e)]
    if ref is not None and engines and "eval" in modes:
        precisions = ["f32"] + (["bf16"] if args.dtype == "bfloat16" else [])
        evals += build_engines(args, ref, torch_x, engines, precisions)

    if ref is not None and not args.no_check and evals and evals[0].logits is not None:
        f32 = [c for c in evals if c.name == "flax_effnet float32"] or evals[:1]
        check_logits([c for c in evals if c is not f32[0]], f32[0].logits(),
                     strict=args.dtype == "float32", on_gpu=on_gpu)

    rows = []
    for mode, group in (("eval forward", evals), ("train step", trains)):
        if mode.split()[0] not in modes or not group:
            continue
        for c in group:
            if math.isnan(c.first_call_s):
                measure_first_call(c)
            calibrate_iters(c, args.warmup, args.min_time)
        interleaved(group, args.repeats, args.batch)
        for c in group:
            measure_memory(c, on_gpu)
        rows += report(mode, group, args.batch)
    load = os.getloadavg()
    print(f"\nmedian of {args.repeats} interleaved repeats after warm-up; 'ours/this' > 1 means "
          "flax_effnet is faster. 1st call: JAX runs AOT-compiled code, torch includes any "
          "torch.compile; compile s for an engine: building its session; memory in MiB. "
          f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), threads=THREADS, rows=rows, loadavg=load), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
