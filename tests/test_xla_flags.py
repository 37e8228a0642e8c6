"""The XLA:CPU flags flax_effnet sets for the user (flax_effnet.host): which CPUs get them,
that a user's own XLA_FLAGS win, and that outputs and gradients under them match XLA's
defaults."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from flax_effnet import host

AMD_AVX512 = ("AuthenticAMD", frozenset({"avx2", "avx512f", "avx512_bf16"}))


@pytest.mark.parametrize(
    "cpu, want",
    [
        (AMD_AVX512, ["--xla_cpu_prefer_vector_width=512"]),
        (("AuthenticAMD", frozenset({"avx2"})), []),  # Zen 3: no AVX-512
        (("GenuineIntel", frozenset({"avx2", "avx512f", "amx_tile"})), []),  # measured: 1.04x eval, not worth it
        (("", frozenset()), []),  # no /proc/cpuinfo (macOS) or not x86
    ],
)
def test_recommended_flags_per_cpu(cpu, want):
    assert host.recommended_xla_cpu_flags(cpu) == want


def test_set_flags_only_where_the_user_has_not(monkeypatch):
    monkeypatch.setattr(host, "recommended_xla_cpu_flags", lambda: ["--xla_cpu_prefer_vector_width=512"])
    monkeypatch.setattr(host, "_jax_backends_started", lambda: False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert host.set_xla_cpu_flags() == ["--xla_cpu_prefer_vector_width=512"]
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_prefer_vector_width=512"
    monkeypatch.setenv("XLA_FLAGS", "")  # the user's, even empty, is kept
    assert host.set_xla_cpu_flags() == [] and os.environ["XLA_FLAGS"] == ""


def test_no_flags_once_jax_has_started(monkeypatch):
    """In a process whose backend already read its flags, setting XLA_FLAGS would only leak
    into child processes."""
    import jax

    jax.numpy.zeros(1).block_until_ready()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert host.set_xla_cpu_flags() == [] and "XLA_FLAGS" not in os.environ


# In a process started with the chosen flags in XLA_FLAGS (as the console scripts start JAX),
# b0's eval logits and train-mode loss gradients are computed under those flags and compiled
# with XLA's defaults for them (per-compilation `compiler_options` override XLA_FLAGS), and,
# with the defaults, once more for the input moved by one float32 ulp: how far round-off alone
# moves them. Train-mode BN over a few pixels amplifies round-off by orders of magnitude, so
# the flags may move results by a few times that, not by a fixed tolerance. Odd, non-square
# images; random BN running statistics for eval.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax_effnet import EfficientNet
    defaults = json.loads(sys.argv[1])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 35, 29, 3)).astype(np.float32)
    x_ulp = np.nextafter(x, np.float32(np.inf))
    model = EfficientNet("b0", num_classes=10, drop_path_rate=0.0, dropout_rate=0.0)
    v = jax.jit(model.init)(jax.random.key(0), x)
    stats = jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.asarray(rng.uniform(0.5, 2.0, a.shape) if path[-1].key == "var"
                                    else rng.normal(0, 0.3, a.shape), a.dtype), v["batch_stats"])
    v = {"params": v["params"], "batch_stats": stats}
    y = jnp.asarray([3, 7])
    def loss(params, x):
        logits, _ = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                mutable=["batch_stats"])
        return -jax.nn.log_softmax(logits)[jnp.arange(2), y].mean()
    fwd = jax.jit(lambda v, x: model.apply(v, x)).lower(v, x)
    grad = jax.jit(jax.grad(loss)).lower(v["params"], x)
    out = {}
    for name, opts, xin in (("flags", {}, x), ("defaults", defaults, x), ("ulp", defaults, x_ulp)):
        logits = np.asarray(fwd.compile(compiler_options=opts)(v, xin))
        grads = [np.asarray(g).ravel().tolist() for g in
                 jax.tree.leaves(grad.compile(compiler_options=opts)(v["params"], xin))]
        out[name] = {"logits": logits.ravel().tolist(), "grads": grads}
    print(json.dumps(out))
    """
)

# XLA's own default of every flag recommended_xla_cpu_flags() can choose (XLA_FLAGS=--help).
XLA_DEFAULTS = {"xla_cpu_prefer_vector_width": 256}


@pytest.mark.slow
def test_outputs_and_gradients_under_the_chosen_flags_match_defaults():
    import numpy as np

    flags = host.recommended_xla_cpu_flags(AMD_AVX512)
    chosen = {f.removeprefix("--").split("=")[0] for f in flags}
    assert chosen <= set(XLA_DEFAULTS), f"add XLA's default of {chosen - set(XLA_DEFAULTS)}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags)}
    res = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(XLA_DEFAULTS)], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    a, b, u = out["flags"], out["defaults"], out["ulp"]
    scale = max(np.abs(g).max() for g in b["grads"])
    assert len(a["grads"]) == len(b["grads"]) > 100

    def within_round_off(got, want, moved, floor):
        got, want, moved = map(np.asarray, (got, want, moved))
        assert np.abs(got - want).max() <= 10 * np.abs(moved - want).max() + floor

    within_round_off(a["logits"], b["logits"], u["logits"], 1e-5)
    for ga, gb, gu in zip(a["grads"], b["grads"], u["grads"]):
        within_round_off(ga, gb, gu, 1e-6 * scale)
