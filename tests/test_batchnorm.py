"""BatchNormAct is flax's BatchNorm (then SiLU, ReLU or ReLU6): same variables, outputs,
statistics and gradients, whether it trains through autodiff or through the hand-written
gradient that the CPU formulation uses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from flax_effnet.layers import ACTIVATIONS, BatchNormAct, _channel_sums, activation_name

SHAPE = (3, 5, 6, 7)


def _data(seed=0):
    """Input with a different mean and spread per channel, random scale and bias, and a random
    cotangent: with unit statistics or ones, wrong centring or scaling terms cancel out."""
    rng = np.random.default_rng(seed)
    c = SHAPE[-1]
    x = rng.standard_normal(SHAPE) * rng.uniform(0.5, 3.0, c) + rng.uniform(-2.0, 2.0, c)
    params = {"scale": rng.uniform(0.5, 1.5, c), "bias": rng.standard_normal(c)}
    stats = {"mean": rng.standard_normal(c), "var": rng.uniform(0.5, 2.0, c)}
    g = rng.standard_normal(SHAPE)
    to = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)
    return to(x), to(params), to(stats), to(g)


class FlaxReference(nn.Module):
    """nn.BatchNorm then the activation (autodiff), under the name BatchNormAct gives its
    variables."""

    act: bool | str

    @nn.compact
    def __call__(self, x, train):
        y = nn.BatchNorm(not train, momentum=0.9, epsilon=1e-3, name="bn")(x)
        act = activation_name(self.act)
        return ACTIVATIONS[act](y) if act else y


class Ours(nn.Module):
    act: bool | str
    fused_grad: bool
    dtype: jnp.dtype = jnp.float32
    tanh_silu: bool = False

    @nn.compact
    def __call__(self, x, train):
        bn = BatchNormAct(
            not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype,
            act=self.act, fused_grad=self.fused_grad, tanh_silu=self.tanh_silu, name="bn",
        )
        return bn(x)


def _train_vjp(module, variables, x):
    """Training-mode output, updated statistics and the VJP w.r.t. (params, x)."""

    def f(params, x):
        return module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, True,
            mutable=["batch_stats"],
        )

    (y, updates), vjp = jax.vjp(f, variables["params"], x)
    return y, updates["batch_stats"], lambda g: vjp((g, jax.tree.map(jnp.zeros_like, updates)))


# True is SiLU (EfficientNet's `act=True`); ReLU6 for MobileNet and ReXNet, ReLU for ReXNet's SE.
@pytest.mark.parametrize("act", [False, True, "relu", "relu6"])
# tanh_silu (SiLU as x/2 (1 + tanh(x/2)), the CPU formulation's) with and without the
# hand-written gradient: still nn.silu's outputs and gradients.
@pytest.mark.parametrize("fused_grad, tanh_silu", [(False, False), (True, False), (True, True), (False, True)])
def test_training_matches_flax_batchnorm(act, fused_grad, tanh_silu):
    x, params, stats, g = _data()
    if act == "relu6":
        # Spread the normalised outputs over (-12, 12), so both of ReLU6's kinks are crossed.
        params = {"scale": params["scale"] * 4.0, "bias": params["bias"]}
    variables = {"params": {"bn": params}, "batch_stats": {"bn": stats}}
    ref_init = FlaxReference(act).init(jax.random.key(0), x, True)
    ours_init = Ours(act, fused_grad).init(jax.random.key(0), x, True)
    assert jax.tree.map(jnp.shape, ours_init) == jax.tree.map(jnp.shape, ref_init)
    for a, b in zip(jax.tree.leaves(ours_init), jax.tree.leaves(ref_init)):
        np.testing.assert_array_equal(a, b)

    y, new_stats, vjp = _train_vjp(Ours(act, fused_grad, tanh_silu=tanh_silu), variables, x)
    ref_y, ref_stats, ref_vjp = _train_vjp(FlaxReference(act), variables, x)
    if act in ("relu", "relu6"):  # the data reaches every piece of the activation
        assert float(jnp.mean(ref_y == 0)) > 0.1 and float(jnp.mean(ref_y > 0)) > 0.1
    if act == "relu6":
        assert float(jnp.mean(ref_y == 6)) > 0.03
    np.testing.assert_allclose(y, ref_y, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(new_stats), jax.tree.leaves(ref_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

    (d_params, dx), (ref_d_params, ref_dx) = vjp(g), ref_vjp(g)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-5)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(
            d_params["bn"][name], ref_d_params["bn"][name], rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("act, fn", [(True, nn.silu), ("relu6", lambda y: jnp.clip(y, 0, 6))])
@pytest.mark.parametrize("fused_grad, tanh_silu", [(False, False), (True, True)])
def test_eval_uses_running_statistics(fused_grad, tanh_silu, act, fn):
    x, params, stats, _ = _data(1)
    variables = {"params": {"bn": params}, "batch_stats": {"bn": stats}}
    y = Ours(act, fused_grad, tanh_silu=tanh_silu).apply(variables, x, False)
    xhat = (x - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-3)
    expected = fn(xhat * params["scale"] + params["bias"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_batch_stats_take_no_gradient():
    """The hand-written VJP ignores the statistics' cotangents, so they must not carry any."""
    x, params, stats, _ = _data(2)

    def mean_of_new_mean(x):
        _, updates = Ours(True, True).apply(
            {"params": {"bn": params}, "batch_stats": {"bn": stats}}, x, True,
            mutable=["batch_stats"],
        )
        return updates["batch_stats"]["bn"]["mean"].sum()

    np.testing.assert_array_equal(jax.grad(mean_of_new_mean)(x), jnp.zeros_like(x))


def test_bfloat16_compute_matches_float32():
    x, params, stats, g = _data(3)
    variables = {"params": {"bn": params}, "batch_stats": {"bn": stats}}
    y, _, vjp = _train_vjp(Ours(True, True, jnp.bfloat16), variables, x.astype(jnp.bfloat16))
    ref_y, _, ref_vjp = _train_vjp(FlaxReference(True), variables, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(y.astype(jnp.float32), ref_y, rtol=2e-2, atol=2e-2)
    (d_params, dx), (ref_d_params, ref_dx) = vjp(g.astype(jnp.bfloat16)), ref_vjp(g)
    assert dx.dtype == jnp.bfloat16 and d_params["bn"]["scale"].dtype == jnp.float32
    np.testing.assert_allclose(dx.astype(jnp.float32), ref_dx, rtol=5e-2, atol=5e-2)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(
            d_params["bn"][name], ref_d_params["bn"][name], rtol=5e-2, atol=0.2
        )


@pytest.mark.parametrize(
    "kwargs",
    [dict(axis=1), dict(axis_name="batch"), dict(use_bias=False), dict(use_fast_variance=False)],
)
def test_fused_grad_rejects_settings_it_does_not_compute(kwargs):
    x, *_ = _data()
    module = BatchNormAct(use_running_average=False, fused_grad=True, **kwargs)
    with pytest.raises(ValueError, match="fused_grad"):
        module.init(jax.random.key(0), x)


def test_batch_norm_of_pooled_vectors():
    """ReXNet's SE and ReXNet-lite's pre-logits normalise (N, C) vectors: statistics over N."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((6, 5)) * 2 + 1, jnp.float32)
    g = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
    variables = Ours("relu", True).init(jax.random.key(0), x, True)
    y, _, vjp = _train_vjp(Ours("relu", True), variables, x)
    ref_y, _, ref_vjp = _train_vjp(FlaxReference("relu"), variables, x)
    np.testing.assert_allclose(y, ref_y, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(vjp(g)), jax.tree.leaves(ref_vjp(g))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_unknown_activation_is_named():
    x, *_ = _data()
    with pytest.raises(ValueError, match="activation must be one of.*'gelu'"):
        BatchNormAct(use_running_average=True, act="gelu").init(jax.random.key(0), x)


@pytest.mark.parametrize("shape", [(2, 8, 8, 5), (8, 7, 7, 3), (3, 5, 7, 4), (1, 1, 1, 6), (6, 5)])
def test_channel_sums_match_numpy(shape):
    """Every blocking `_channel_sums` picks (16, 8, 1 and 2 blocks of rows here, NHWC and
    (N, C)) sums each channel over all other axes, for several tensors at once."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal(shape) + rng.uniform(-2, 2, shape[-1])
    b = rng.standard_normal(shape)
    sums = _channel_sums(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    axes = tuple(range(len(shape) - 1))
    for got, want in zip(sums, (a.sum(axes), b.sum(axes)), strict=True):
        assert got.shape == (shape[-1],)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
