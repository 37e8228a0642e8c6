"""A change to flax_effnet against a git revision, in one process: same model, input, weights.

    python benchmarks/ab_commits.py --base HEAD~1                  # b0 train step, batch 8
    python benchmarks/ab_commits.py --base e5bd6cc --mode eval --model mobilenetv2_100

Prints the outputs' difference (eval: the logits' largest; train: the loss and the gradients'
global relative difference), then the time of each executable in short rounds, alternating
which runs first, and the median and quartiles of the per-round ratio working tree / base.

Why one process: a 2-core VM's speed drifts by up to a fifth between runs and single kernels
now and then take 4-10 times as long, while the changes left to measure gain 2-10%.
Interleaved rounds let the drift hit both executables alike, and the spread of the ratios says
whether a change is real; `bench_throughput.py`'s 2-3 timed train steps per repeat cannot.

How: `git archive` puts the base revision's `flax_effnet/` in a temporary directory, which is
imported as `flax_effnet` to build the model and compile the function; then every
`flax_effnet` module is dropped from `sys.modules` and the working tree's package is imported
for the second compile (a compiled executable no longer needs the modules that traced it).
Both use the base's initial variables, BatchNorm statistics randomised, so the param trees
must match.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "flax_effnet"


def export_package(rev: str, dest: str) -> None:
    """Write revision `rev`'s flax_effnet/ under `dest` (raises ValueError for a bad `rev`)."""
    archive = subprocess.run(
        ["git", "-C", REPO, "archive", "--format=tar", rev, PACKAGE], capture_output=True
    )
    if archive.returncode != 0:
        raise ValueError(f"git archive {rev} {PACKAGE}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", dest], input=archive.stdout, check=True)


def _drop_package() -> None:
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


@contextlib.contextmanager
def package_from(root: str):
    """`flax_effnet` imported from directory `root`; the modules are dropped again on exit."""
    _drop_package()
    sys.path.insert(0, root)
    try:
        module = importlib.import_module(PACKAGE)
        # An editable install's finder could take precedence over sys.path: make sure not.
        if not os.path.abspath(module.__file__).startswith(os.path.join(os.path.abspath(root), "")):
            raise RuntimeError(f"imported {PACKAGE} from {module.__file__}, not from {root}")
        yield module
    finally:
        sys.path.remove(root)
        _drop_package()


def randomised_stats(variables, seed: int = 0):
    """`variables` with BatchNorm means ~ N(0, 0.1) and variances ~ U(0.5, 1.5), so that eval
    outputs depend on every statistic (at init they are 0 and 1)."""
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)

    def one(path, v):
        key = jax.tree_util.keystr(path)
        if "'batch_stats'" not in key:
            return v
        if key.endswith("['mean']"):
            return jax.numpy.asarray(rng.normal(0, 0.1, v.shape), v.dtype)
        return jax.numpy.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype)

    return jax.tree_util.tree_map_with_path(one, variables)


def compile_step(fe, args, variables=None):
    """(compiled function, its arguments, variables) for package `fe`'s model and `args.mode`.

    The function is a fresh closure per call: `jax.jit` of one function object keeps one trace
    cache, and a second compile would reuse the first package's trace without a word."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    if fe.model_entry(args.model).family == "efficientdet":
        raise ValueError(f"{args.model} is a detector; this script times classifiers")
    model = fe.create_model(args.model)
    size = args.size or fe.model_entry(args.model).preprocessing.input_size
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((args.batch, size, size, 3)), jnp.float32)
    if variables is None:
        variables = randomised_stats(jax.jit(model.init)(jax.random.key(0), x[:1]))
    if args.mode == "eval":
        fn_args = (variables, x)
        fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
        return fn.lower(*fn_args).compile(), fn_args, variables

    labels = jnp.asarray(rng.integers(0, 10, args.batch))
    rngs = {"dropout": jax.random.key(2), "drop_path": jax.random.key(3)}

    def loss(params, stats, x, labels):
        logits, updates = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"],
            rngs=rngs,
        )
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return ce.mean(), updates

    fn = jax.jit(lambda *a: jax.value_and_grad(loss, has_aux=True)(*a))
    fn_args = (variables["params"], variables["batch_stats"], x, labels)
    return fn.lower(*fn_args).compile(), fn_args, variables


def output_difference(mode: str, base_out, new_out) -> str:
    """What the two executables' outputs differ by, as one line."""
    import jax
    import numpy as np

    if mode == "eval":
        a, b = np.asarray(base_out), np.asarray(new_out)
        return (f"logits: max |new - base| {np.abs(a - b).max():.3g} "
                f"(max |logit| {np.abs(a).max():.3g})")
    (loss_a, _), grads_a = base_out
    (loss_b, _), grads_b = new_out
    pairs = list(zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)))
    num = sum(float(np.sum((np.asarray(b) - np.asarray(a)) ** 2)) for a, b in pairs)
    den = sum(float(np.sum(np.asarray(a) ** 2)) for a, _ in pairs)
    return (f"loss: base {float(loss_a):.7g}, new {float(loss_b):.7g}; gradients: "
            f"||new - base|| / ||base|| {np.sqrt(num / den):.3g}")


def images_per_s(fn, fn_args, batch: int, seconds: float) -> float:
    """Images per second of back-to-back calls for `seconds`, after one untimed call."""
    import jax

    jax.block_until_ready(fn(*fn_args))
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        jax.block_until_ready(fn(*fn_args))
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def interleaved_ratios(base, new, batch: int, rounds: int, seconds: float) -> list[float]:
    """new / base throughput per round; every second round runs new first."""
    ratios = []
    for r in range(rounds):
        order = (new, base) if r % 2 else (base, new)
        rates = {id(c): images_per_s(*c, batch, seconds) for c in order}
        ratios.append(rates[id(new)] / rates[id(base)])
        print(f"round {r + 1}: base {rates[id(base)]:.2f}, new {rates[id(new)]:.2f} img/s, "
              f"new/base {ratios[-1]:.3f}", flush=True)
    return ratios


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base", default="HEAD", help="git revision to compare the working tree with")
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--mode", default="train", choices=["eval", "train"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=None, help="default: the model's input size")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--round-s", type=float, default=None,
                   help="seconds per executable per round (default: 1.0 eval, 1.5 train)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with package_from(REPO):  # the host settings must precede JAX's first computation
        host = importlib.import_module(PACKAGE + ".host")
        host.set_xla_cpu_flags()
        host.keep_freed_memory()
    from flax.errors import FlaxError

    with tempfile.TemporaryDirectory() as tmp:
        try:
            export_package(args.base, tmp)
            with package_from(tmp) as fe:
                base = compile_step(fe, args)
            with package_from(REPO) as fe:
                new = compile_step(fe, args, variables=base[2])
        except (FlaxError, KeyError, ValueError, TypeError) as e:
            # A bad revision or model name, or a working tree whose model does not take the
            # base's variables.
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    print(f"{args.model} {args.mode}, batch {args.batch}: working tree vs {args.base}")
    print(output_difference(args.mode, base[0](*base[1]), new[0](*new[1])))
    seconds = args.round_s or (1.0 if args.mode == "eval" else 1.5)
    ratios = interleaved_ratios(base[:2], new[:2], args.batch, args.rounds, seconds)
    if len(ratios) >= 2:
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        print(f"new/base: median {statistics.median(ratios):.3f}, IQR {q1:.3f}-{q3:.3f} "
              f"({len(ratios)} rounds of {seconds} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
