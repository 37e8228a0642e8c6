"""Every depthwise implementation computes the same function, with the same gradients and params.

`DepthwiseConv(impl=...)` only changes how XLA computes the convolution (see layers.py); these
tests hold the fast paths to the grouped convolution, which is the reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_effnet import EfficientNet, VariantSpec
from flax_effnet import layers
from flax_effnet.layers import DEPTHWISE_IMPLS, DepthwiseConv, resolve_depthwise_impl

FAST_IMPLS = [i for i in DEPTHWISE_IMPLS if i != "conv"]
# A 7-block, narrow EfficientNet: every stage, both kernel sizes, both strides, in milliseconds.
TINY = VariantSpec("tiny", width=0.25, depth=0.25, resolution=32, dropout=0.0)


def _run(impl, x, kernel, k, stride, padding):
    module = DepthwiseConv(k, stride, padding, impl=impl)
    return module.apply({"params": {"kernel": kernel}}, x)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["same", "symmetric"])
@pytest.mark.parametrize("size", [(8, 8), (9, 7)])
def test_outputs_and_gradients_match_grouped_conv(impl, k, stride, padding, size):
    rng = np.random.default_rng(k * 100 + stride * 10 + size[1])
    # Batch 8 and 2: d/dkernel's fused sum reduces over the batch only for 3x3 at batch 8
    # (`layers._kernel_grad_axes`), over (H, W) otherwise; both are held to the reference.
    batch = 8 if size == (9, 7) else 2
    x = jnp.asarray(rng.standard_normal((batch, *size, 6)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, 1, 6)), jnp.float32)

    def f(impl):
        return lambda x, kernel: _run(impl, x, kernel, k, stride, padding)

    ref, ref_vjp = jax.vjp(f("conv"), x, kernel)
    out, out_vjp = jax.vjp(jax.jit(f(impl)), x, kernel)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)

    g = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    for name, a, b in zip(("d/dx", "d/dkernel"), out_vjp(g), ref_vjp(g)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("padding", ["same", "symmetric"])
def test_input_gradient_by_phases_matches_grouped_conv(k, stride, padding):
    """The phase decomposition of d/dx, beyond b0's kernels and strides (phases are s*s)."""
    rng = np.random.default_rng(k * 10 + stride)
    x = jnp.asarray(rng.standard_normal((2, 11, 8, 3)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, 1, 3)), jnp.float32)
    pads = tuple(layers.spatial_padding(x.shape, k, stride, padding))
    ref, ref_vjp = jax.vjp(lambda x: layers.depthwise_conv(x, kernel, stride, pads), x)
    g = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    grad = jax.jit(layers._depthwise_input_grad, static_argnums=(2, 3, 4))
    dx = grad(g, kernel, x.shape[1:3], stride, pads)
    np.testing.assert_allclose(dx, ref_vjp(g)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_bfloat16_matches_grouped_conv(impl):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 10, 10, 4)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 4)), jnp.float32)
    module = lambda i: DepthwiseConv(3, 2, "same", impl=i, dtype=jnp.bfloat16)  # noqa: E731
    ref = module("conv").apply({"params": {"kernel": kernel}}, x)
    out = module(impl).apply({"params": {"kernel": kernel}}, x)
    assert out.dtype == ref.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(out), np.float32(ref), rtol=0.05, atol=0.05)


def _model_outputs(impl, x):
    """Init variables and eval logits of TINY with one impl, jitted.

    Gradients are held to the reference layer by layer above; through the whole model they
    would only add minutes of compilation.
    """
    model = EfficientNet(TINY, num_classes=10, depthwise_impl=impl)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    return variables, jax.jit(model.apply)(variables, x)


@pytest.fixture(scope="module")
def reference():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 33, 30, 3)), jnp.float32)
    return x, _model_outputs("conv", x)


@pytest.mark.parametrize("impl", FAST_IMPLS)  # "auto" is one of them; see the resolve test
def test_model_same_params_and_logits(impl, reference):
    x, (ref_vars, ref_logits) = reference
    variables, logits = _model_outputs(impl, x)

    # Same param tree, shapes and (same init RNG) values: checkpoints are impl-independent.
    assert jax.tree.structure(variables) == jax.tree.structure(ref_vars)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(ref_vars)):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)

    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)


def test_auto_resolves_per_backend(monkeypatch):
    monkeypatch.setattr(layers.jax, "default_backend", lambda: "cpu")
    assert resolve_depthwise_impl("auto") == "shift"
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(layers.jax, "default_backend", lambda b=backend: b)
        assert resolve_depthwise_impl("auto") == "conv"
    for impl in DEPTHWISE_IMPLS:  # an explicit choice overrides the backend
        assert resolve_depthwise_impl(impl) == impl


def test_invalid_impl_raises():
    with pytest.raises(ValueError, match="depthwise_impl"):
        resolve_depthwise_impl("winograd")
    x = jnp.zeros((1, 8, 8, 4))
    with pytest.raises(ValueError, match="depthwise_impl"):
        DepthwiseConv(3, impl="fft").init(jax.random.key(0), x)


def test_shift_input_gradient_is_the_transpose_of_conv_forward_mode(reference):
    """<u, J v> from forward mode (jax.jvp, which needs 'conv': 'shift' has hand-written
    VJPs) equals <J^T u, v> from the 'shift' model's reverse mode, through every layer."""
    x, (variables, _) = reference
    rng = np.random.default_rng(2)
    v = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def logits(impl):
        model = EfficientNet(TINY, num_classes=10, depthwise_impl=impl)
        return lambda x: model.apply(variables, x)

    out, jv = jax.jit(lambda x, v: jax.jvp(logits("conv"), (x,), (v,)))(x, v)
    u = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    jtu = jax.jit(lambda x, u: jax.vjp(logits("shift"), x)[1](u)[0])(x, u)
    np.testing.assert_allclose(jnp.vdot(u, jv), jnp.vdot(jtu, v), rtol=1e-4)


def test_shift_training_gradients_match_conv(reference):
    """In training mode (batch statistics), every hand-written VJP of the CPU formulation
    (depthwise, 1x1 weight, stem patches, BatchNorm + SiLU) gives autodiff's gradients for
    every param and for the input."""
    _, (variables, _) = reference
    # Batch statistics over a few values (b0's last stage at 32 px) amplify round-off; 64 px
    # and 4 images keep the comparison well conditioned.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((4, 64, 64, 3)), jnp.float32)
    u = jnp.asarray(rng.standard_normal((x.shape[0], 10)), jnp.float32)

    def grads(impl):
        model = EfficientNet(TINY, num_classes=10, depthwise_impl=impl, drop_path_rate=0.0)

        def loss(params, x):
            logits, _ = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                mutable=["batch_stats"],
            )
            return jnp.vdot(u, logits)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)

    ours, ref = grads("shift"), grads("conv")
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    # Biases just before a BatchNorm have a true gradient of 0, so round-off is judged against
    # the size of the gradients overall.
    scale = max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(ref))
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ours)[0], jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale, err_msg=str(path))
