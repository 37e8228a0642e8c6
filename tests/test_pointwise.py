"""What the CPU formulation computes as matmuls equals the plain op: same params, outputs and
gradients.

PointwiseConv is a 1x1 conv as a matmul; PatchConv (the CPU stem) a k x k conv as a matmul over
k*k*C_in-value patches; `global_pool(as_matmul=True)` the spatial mean as a matmul with ones.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from flax_effnet.blocks import network_ops
from flax_effnet.layers import PatchConv, PointwiseConv, conv_init, global_pool, spatial_padding


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("flat_weight_grad", [False, True])
def test_matches_nn_conv_1x1(flat_weight_grad, use_bias):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 7, 6)), jnp.float32)
    ours = PointwiseConv(4, use_bias=use_bias, kernel_init=conv_init, flat_weight_grad=flat_weight_grad)
    ref = nn.Conv(4, (1, 1), use_bias=use_bias, kernel_init=conv_init)
    variables = ours.init(jax.random.key(0), x)
    ref_vars = ref.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].shape == (1, 1, 6, 4)
    np.testing.assert_array_equal(variables["params"]["kernel"], ref_vars["params"]["kernel"])
    if use_bias:  # a nonzero bias, so that adding it is tested
        variables = {"params": {**variables["params"], "bias": jnp.arange(4.0) - 1.5}}

    out, vjp = jax.vjp(lambda v, x: ours.apply(v, x), variables, x)
    ref_out, ref_vjp = jax.vjp(lambda v, x: ref.apply(v, x), variables, x)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
    # A random cotangent: with ones, every column of d/dkernel would be the same sum.
    g = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape), jnp.float32)
    grads, ref_grads = vjp(g), ref_vjp(g)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flat_weight_grad", [False, True])
def test_bfloat16_compute_keeps_float32_params(flat_weight_grad):
    x = jnp.ones((1, 3, 3, 2), jnp.float32)
    module = PointwiseConv(3, dtype=jnp.bfloat16, flat_weight_grad=flat_weight_grad)
    variables = module.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert module.apply(variables, x).dtype == jnp.bfloat16
    grads = jax.grad(lambda v: module.apply(v, x).astype(jnp.float32).sum())(variables)
    assert grads["params"]["kernel"].dtype == jnp.float32
    np.testing.assert_allclose(grads["params"]["kernel"][0, 0], jnp.full((2, 3), 9.0), rtol=1e-2)


def _bf16(a):
    return jnp.asarray(a, jnp.bfloat16).astype(jnp.float32)


@pytest.mark.parametrize("flat_weight_grad", [False, True])
@pytest.mark.parametrize("c_in, c_out", [(40, 36), (8, 4)])
def test_bf16_operands_float32_product(flat_weight_grad, c_in, c_out):
    """`operand_dtype`: every product (forward, d/dx, d/dw) multiplies bf16-rounded operands
    into a float32 result where its contraction is 32 deep or more, exactly float32 below.
    Without `flat_weight_grad`, autodiff rounds the gradients of the rounded operands to bf16
    once more, so they are compared within bf16's precision."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 5, 7, c_in)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 5, 7, c_out)), jnp.float32)
    module = PointwiseConv(c_out, operand_dtype=jnp.bfloat16, flat_weight_grad=flat_weight_grad)
    variables = module.init(jax.random.key(0), x)
    w = variables["params"]["kernel"][0, 0]
    out, vjp = jax.vjp(lambda w, x: module.apply({"params": {"kernel": w[None, None]}}, x), w, x)
    dw, dx = vjp(g)
    assert out.dtype == dx.dtype == dw.dtype == jnp.float32
    hp = jax.lax.Precision.HIGHEST
    fwd = (_bf16(x), _bf16(w)) if c_in >= 32 else (x, w)
    back = (_bf16(g), _bf16(w)) if c_out >= 32 else (g, w)
    grad_w = (_bf16(x), _bf16(g)) if c_in >= 32 else (x, g)
    tol = 1e-5 if flat_weight_grad or c_in < 32 else 2e-2
    np.testing.assert_allclose(out, jnp.einsum("nhwc,cd->nhwd", *fwd, precision=hp), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, jnp.einsum("nhwd,cd->nhwc", *back, precision=hp), rtol=tol, atol=tol)
    np.testing.assert_allclose(dw, jnp.einsum("nhwc,nhwd->cd", *grad_w, precision=hp),
                               rtol=tol, atol=tol * 10)
    if c_in >= 32:  # the rounding is visible: float32 operands give another product
        assert float(jnp.abs(out - jnp.einsum("nhwc,cd->nhwd", x, w, precision=hp)).max()) > 1e-3


@pytest.mark.parametrize(
    "kwargs", [dict(kernel_size=(3, 3)), dict(strides=2), dict(padding=[(1, 1), (1, 1)])]
)
def test_rejects_what_is_not_a_plain_1x1_conv(kwargs):
    with pytest.raises(ValueError, match="PointwiseConv"):
        PointwiseConv(4, **kwargs).init(jax.random.key(0), jnp.ones((1, 4, 4, 2)))


@pytest.mark.parametrize("k, stride", [(3, 2), (3, 1), (5, 2), (3, 3), (1, 2)])
@pytest.mark.parametrize("padding", ["same", "symmetric"])
@pytest.mark.parametrize("size", [(12, 12), (13, 10)])
def test_patch_conv_matches_nn_conv(k, stride, padding, size):
    rng = np.random.default_rng(k + stride + size[1])
    x = jnp.asarray(rng.standard_normal((2, *size, 3)), jnp.float32)
    pads = spatial_padding(x.shape, k, stride, padding)
    ours = PatchConv(8, (k, k), (stride, stride), pads)
    ref = nn.Conv(8, (k, k), (stride, stride), pads, use_bias=False, kernel_init=conv_init)
    variables = ours.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].shape == (k, k, 3, 8)
    ref_kernel = ref.init(jax.random.key(0), x)["params"]["kernel"]
    np.testing.assert_array_equal(variables["params"]["kernel"], ref_kernel)

    out, vjp = jax.vjp(lambda v, x: ours.apply(v, x), variables, x)
    ref_out, ref_vjp = jax.vjp(lambda v, x: ref.apply(v, x), variables, x)
    assert out.shape == ref_out.shape
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    g = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    for a, b in zip(jax.tree.leaves(vjp(g)), jax.tree.leaves(ref_vjp(g))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_patch_conv_rejects_what_it_does_not_compute():
    with pytest.raises(ValueError, match="PatchConv"):
        PatchConv(4, (3, 3), (2, 1)).init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(2, 7, 5, 3), (3, 8, 8, 16)])
def test_matmul_pool_matches_mean(shape, dtype):
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape) + 0.5, dtype)
    weights = jnp.asarray(np.random.default_rng(2).standard_normal(shape[::3]), jnp.float32)

    def loss(x, as_matmul):
        return jnp.sum(global_pool(x, as_matmul=as_matmul) * weights)

    ours, ours_grad = jax.value_and_grad(loss)(x, True)
    ref, ref_grad = jax.value_and_grad(loss)(x, False)
    assert global_pool(x, as_matmul=True).dtype == jnp.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    assert ours_grad.dtype == dtype
    np.testing.assert_allclose(np.asarray(ours_grad, np.float32), np.asarray(ref_grad, np.float32),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("impl, primitive", [("shift", "dot_general"), ("conv", "reduce_sum")])
def test_pool_per_formulation(impl, primitive):
    ops = network_ops(train=False, depthwise_impl=impl, bn_momentum=0.9, bn_epsilon=1e-3,
                      dtype=jnp.float32, param_dtype=jnp.float32)
    jaxpr = str(jax.make_jaxpr(ops.pool)(jnp.ones((2, 4, 4, 8))))
    assert primitive in jaxpr
    assert ops.se(2).pool is ops.pool
