"""Layers of EfficientNet: padding rules, depthwise convolution, squeeze-excite, drop path.

Initialisers follow TF EfficientNet (`efficientnet_model.conv_kernel_initializer` and
`dense_kernel_initializer`), which is what the paper's training recipe was tuned with.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

Padding = Literal["same", "symmetric"]
DepthwiseImpl = Literal["auto", "conv", "shift"]
DEPTHWISE_IMPLS = ("conv", "shift")  # what 'auto' can resolve to; all share one param layout
Dtype = Any

# TF: normal(0, sqrt(2 / fan_out)) with fan_out = k*k*out_channels.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# TF computes a depthwise kernel's fan_out as k*k (its kernel is (k, k, C, 1)). Flax stores it
# as (k, k, 1, C), where "fan_out" would be k*k*C and the weights sqrt(C) too small; "fan_in"
# of the Flax layout is exactly k*k.
depthwise_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# TF: uniform(-1/sqrt(out), 1/sqrt(out)); variance_scaling's uniform limit is sqrt(3*s/fan).
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


def pad_amounts(size: int, kernel_size: int, stride: int, mode: Padding) -> tuple[int, int]:
    """(before, after) padding of one spatial axis.

    'symmetric' is PyTorch's `padding=(k-1)//2` on both sides. 'same' is TF SAME: pad so the
    output is ceil(size/stride), putting the odd extra pixel after (bottom/right). For odd
    kernels both give the same output size; they differ in placement for stride 2 on even sizes.
    """
    if mode == "symmetric":
        p = (kernel_size - 1) // 2
        return p, p
    if mode == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel_size - size, 0)
        return total // 2, total - total // 2
    raise ValueError(f"padding must be 'same' or 'symmetric', got {mode!r}")


def spatial_padding(shape: tuple[int, ...], kernel_size: int, stride: int, mode: Padding):
    """Padding pairs for the H and W axes of an NHWC shape."""
    return [pad_amounts(n, kernel_size, stride, mode) for n in shape[1:3]]


def resolve_depthwise_impl(impl: DepthwiseImpl) -> Literal["conv", "shift"]:
    """'auto' picks per backend: XLA:CPU's grouped convolution is 5-25x slower than k*k fused
    shifted multiply-adds; on GPU/TPU the native grouped convolution is kept."""
    if impl == "auto":
        return "shift" if jax.default_backend() == "cpu" else "conv"
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise_impl must be 'auto', 'conv' or 'shift', got {impl!r}")
    return impl


def _shifted_windows(x: jax.Array, kh: int, kw: int, stride: int, padding):
    """The kh*kw strided views of the padded NHWC input that meet kernel tap (i, j), row-major;
    each has the convolution's output shape.

    The padded input goes through an optimization barrier. Without it XLA sees that a
    stride-1 view (the centre tap) is the unpadded input itself and reads that instead, so
    the producer of x (BatchNorm + SiLU) had two consumers: XLA then materialised its tanh
    in a loop of its own and recomputed BatchNorm + SiLU inside the depthwise loop. Behind the
    barrier BatchNorm, SiLU and the pad are one loop and the depthwise sum reads only its
    output: b0 eval 1.10-1.11x (float32 and bf16, median of 30-40 interleaved rounds, 2
    cores), train step 1.01x, results unchanged.
    """
    xp = jax.lax.optimization_barrier(jnp.pad(x, [(0, 0), *padding, (0, 0)]))
    n, _, _, c = xp.shape
    out_h = (xp.shape[1] - kh) // stride + 1
    out_w = (xp.shape[2] - kw) // stride + 1
    for i in range(kh):
        for j in range(kw):
            yield jax.lax.slice(
                xp,
                (0, i, j, 0),
                (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
                (1, stride, stride, 1),
            )


def _compute_dtype(dtype: Dtype) -> Dtype:
    """float32 for bf16/fp16 operands, else the operands' own dtype."""
    return jnp.promote_types(dtype, jnp.float32)


def _correlate(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """Per-channel cross-correlation of NHWC `x` with a (kh, kw, 1, C) kernel, as a sum of
    strided slices times taps; the kernel need not be square.

    Low-precision operands are converted to float32 once, before the slices, and the sum is
    rounded to their dtype once. XLA:CPU has no bf16 arithmetic: given bf16 slices it converted
    each one in a loop of its own and materialised it (288 such loops in b0's bf16 forward,
    which made our bf16 eval 2.6x slower than float32); converted first, the whole sum is one
    fused loop again, as in float32 (bf16 eval 1.5x faster, CPU time, 2 cores).
    """
    dtype = x.dtype
    acc = _compute_dtype(dtype)
    x, kernel = x.astype(acc), kernel.astype(acc)
    kh, kw = kernel.shape[:2]
    out = None
    for t, window in enumerate(_shifted_windows(x, kh, kw, stride, padding)):
        term = window * kernel[t // kw, t % kw, 0]
        out = term if out is None else out + term
    return out.astype(dtype)


def _depthwise_input_grad(g, kernel, in_hw, stride, padding):
    """d/dx as s*s dense correlations of g, one per output phase, interleaved.

    Padded input row q = m*s + r gets g[m - t] * kernel[r + s*t] for every t: for each phase r
    that is a stride-1 correlation of g with the flipped sub-kernel kernel[r::s] (one phase when
    s = 1). Autodiff of the forward instead pads g, with s-1 zeros between rows, once per tap;
    XLA:CPU fuses those k*k pads into one loop that tests every pad's bounds at every pixel and
    recomputes the fused producer of g per tap: 3-8x slower for 5x5 kernels and 2x for the 3x3
    stride-2 one (b0 shapes, measured), and about even for 3x3 stride 1.
    """
    s = stride
    (top, _), (left, _) = padding
    h, w = in_hw
    # Phase rows m cover padded rows [0, m_h * s), enough for every input row.
    m_h, m_w = -(-(h + top) // s), -(-(w + left) // s)
    phases = []
    for rh in range(s):
        for rw in range(s):
            sub = kernel[rh::s, rw::s][::-1, ::-1]
            th, tw = sub.shape[:2]
            pads = ((th - 1, m_h - g.shape[1]), (tw - 1, m_w - g.shape[2]))
            phases.append(_correlate(g, sub, 1, pads))
    n, c = g.shape[0], g.shape[3]
    # (N, m_h, m_w, rh, rw, C) -> (N, m_h, rh, m_w, rw, C): row m*s + rh, column m*s + rw.
    # Joined along channels, XLA:CPU materialises the phases and the join (it does not fuse a
    # concatenation on a minor axis of 128 or more), and the consumer reads the interleave by
    # index arithmetic. Stacked on a new major axis, the join was fused into the consumer as
    # a per-element choice of phase, which XLA could not vectorise: b0's blocks_1_0 gradient
    # went from 42 to 6 ms and the train step from 0.60 to 0.49 s (XLA profile, 2 cores).
    grid = jnp.concatenate(phases, -1).reshape(n, m_h, m_w, s, s, c).transpose(0, 1, 3, 2, 4, 5)
    padded_grad = grid.reshape(n, m_h * s, m_w * s, c)
    return padded_grad[:, top : top + h, left : left + w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_shift(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """Depthwise convolution as k*k strided slices times per-channel weights, summed.

    XLA fuses the whole sum into one elementwise loop, so each output is produced in one pass
    over the (padded) input, instead of going through the generic grouped-convolution path.
    `kernel` is (k, k, 1, C), the layout of a Flax grouped conv; `padding` is ((top, bottom),
    (left, right)).

    Both gradients are written by hand (`_depthwise_shift_bwd`).
    """
    return _correlate(x, kernel, stride, padding)


def _depthwise_shift_fwd(x, kernel, stride, padding):
    return _correlate(x, kernel, stride, padding), (x, kernel)


def _fused_channel_sums(
    terms: tuple[jax.Array, ...], axes: tuple[int, ...]
) -> tuple[jax.Array, ...]:
    """Per-channel (last-axis) sums of same-shape tensors: one variadic reduce over `axes`
    computes every term's partial sums in a single fused pass, then the small partials are
    summed. Which `axes` that pass takes decides how fast XLA:CPU's reduction loop runs."""
    zeros = tuple(jnp.zeros((), t.dtype) for t in terms)
    partial_sums = jax.lax.reduce(
        terms, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), axes
    )
    return tuple(p.reshape(-1, p.shape[-1]).sum(0) for p in partial_sums)


def _kernel_grad_axes(k: int, batch: int) -> tuple[int, ...]:
    """The axes of the fused pass that sums d/dkernel's k*k products (NHWC).

    Over the batch only when that leaves at most 1.25x the input's size in partial sums
    (k*k per batch element): XLA:CPU's loop then runs over (H, W, C) outputs and is several
    times faster. Otherwise over (H, W), keeping (N, C). Measured on b0 (batch 8, 224 px,
    2 cores, XLA profile): the 3x3 kernels' passes 17.3/15.1/7 ms -> 3.5/2.8/2.5 ms, the 5x5
    ones 25% faster than reducing over (N, W) as before; all d/dkernel passes 139 -> 72 ms;
    train step 1.099x (median of 60 interleaved rounds, IQR 1.07-1.14), gradients within 2e-9.
    """
    return (0,) if k * k <= 1.25 * batch else (1, 2)


def _depthwise_shift_bwd(stride, padding, residuals, g):
    """d/dx by `_depthwise_input_grad`; d/dkernel in one fused pass.

    d/dkernel[i, j, c] = sum over (n, h, w) of window_ij * g. Autodiff emits k*k separate
    reductions, each reading g and x again (25 passes for k=5); one variadic reduce computes
    all k*k sums in one fused pass (train step 1.26x, half the temp memory), then the small
    partial sums are summed. Which axes that pass reduces matters to XLA:CPU's reduction
    loop: `_kernel_grad_axes`.
    """
    x, kernel = residuals
    k = kernel.shape[0]
    dx = _depthwise_input_grad(g, kernel, x.shape[1:3], stride, padding)
    # Accumulate in float32 even for bf16 activations: each sum runs over N*H*W terms.
    g32 = g.astype(jnp.float32)
    windows = _shifted_windows(x, k, k, stride, padding)
    products = tuple(w.astype(jnp.float32) * g32 for w in windows)
    channel_sums = _fused_channel_sums(products, _kernel_grad_axes(k, x.shape[0]))
    dkernel = jnp.stack(channel_sums).reshape(kernel.shape)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """Depthwise convolution through XLA's grouped convolution."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


class DepthwiseConv(nn.Module):
    """k x k depthwise convolution without bias; param 'kernel' of shape (k, k, 1, C).

    The layout is that of `nn.Conv(feature_group_count=C)`, whichever `impl` computes it, so
    checkpoints do not depend on the implementation.
    """

    kernel_size: int
    stride: int = 1
    padding: Padding = "same"
    impl: DepthwiseImpl = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", depthwise_init, (k, k, 1, x.shape[-1]), self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        pads = spatial_padding(x.shape, k, self.stride, self.padding)
        fn = depthwise_shift if resolve_depthwise_impl(self.impl) == "shift" else depthwise_conv
        return fn(x, kernel, self.stride, pads)


class PointwiseConv(nn.Module):
    """1x1 convolution computed as a matmul; param 'kernel' (1, 1, C_in, C_out), and 'bias'
    (C_out,) with `use_bias` (EfficientDet's BiFPN and head convs; the classifiers have none).

    Takes `nn.Conv`'s arguments and param layout, so it drops in where a 1x1 stride-1 conv
    was. XLA:CPU runs a 1x1 `conv_general_dilated` through its generic convolution, whose
    backward pass is 2.5-4x slower than the same contraction as a dot (b0 sizes, measured);
    the forward results are identical. `flat_weight_grad` takes the weight gradient through
    `pointwise_matmul`'s hand-written VJP (for XLA:CPU; no forward-mode autodiff through it).
    `operand_dtype` (bf16) rounds the matmul's operands alone, keeping the product in
    `dtype` (float32): see `_matmul_last_axis`.
    """

    features: int
    kernel_size: tuple[int, int] = (1, 1)
    strides: tuple[int, int] | int = 1
    padding: Any = "VALID"
    use_bias: bool = False
    kernel_init: Any = conv_init
    bias_init: Any = nn.initializers.zeros
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    flat_weight_grad: bool = False
    operand_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        no_pad = self.padding in ("VALID", "SAME") or all(p == (0, 0) for p in self.padding)
        if tuple(self.kernel_size) != (1, 1) or strides != (1, 1) or not no_pad:
            raise ValueError(
                "PointwiseConv is a 1x1, stride-1, unpadded conv; got "
                f"kernel_size={self.kernel_size}, strides={self.strides}, padding={self.padding}"
            )
        shape = (1, 1, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        matmul = pointwise_matmul if self.flat_weight_grad else _matmul_last_axis
        if not self.use_bias:
            x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
            return matmul(x, kernel[0, 0], self.operand_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return matmul(x, kernel[0, 0], self.operand_dtype) + bias


# AMX multiplies bf16 tiles 32 values deep. Below that depth YNNPACK's bf16 matmul (float32
# product) was slower than its float32 one on b0's shapes, (100352, 16) x (16, 96) 14.5 vs
# 13.5 ms and the stem's (100352, 27) x (27, 32) 2.8 vs 1.6 ms, though 24-deep ones gained
# (1.36x; b0 eval the same with 24 or 32 here); from 32 up it was 1.2-4.5x faster.
_MIN_ROUNDED_DEPTH = 32


def _round_operand(x: jax.Array, operand_dtype: Dtype | None, depth: int) -> jax.Array:
    """`x` in `operand_dtype` when a matmul contracting `depth` values gains from it, else `x`."""
    if operand_dtype is None or depth < _MIN_ROUNDED_DEPTH:
        return x
    return x.astype(operand_dtype)


def _matmul_last_axis(x: jax.Array, w: jax.Array, operand_dtype: Dtype | None = None) -> jax.Array:
    """x (..., C_in) @ w in x's dtype, accumulated in float32 for bf16/fp16 operands.

    XLA:CPU's library matmul (YNNPACK) takes bf16 operands natively only when the product is
    float32; a bf16 product made it convert both operands to float32 first and multiply those.
    `operand_dtype` (bf16) rounds float32 operands for the product alone, which then runs on
    AMX / AVX512-BF16 (`_round_operand`), and the result stays float32.
    """
    out_dtype = x.dtype
    depth = x.shape[-1]
    x, w = _round_operand(x, operand_dtype, depth), _round_operand(w, operand_dtype, depth)
    out = jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())),
                              preferred_element_type=_compute_dtype(x.dtype))
    return out.astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise_matmul(x: jax.Array, w: jax.Array, operand_dtype: Dtype | None = None) -> jax.Array:
    """x (..., C_in) @ w (C_in, C_out), with the weight gradient taken as one 2-D matmul.

    Autodiff writes d/dw as a dot contracting x's and g's (N, H, W) axes; XLA:CPU answers that
    by materialising a transposed (C_out, N*H*W) copy of g through a strided loop, which cost
    more than the matmul itself (b0: 60-90 ms per step for one layer). Flattening both to
    (N*H*W, C) first gives a plain x^T g that needs no copy: b0's train step 1.25x faster.
    With `operand_dtype`, all three products round their operands as `_matmul_last_axis`
    does, and x is kept for the backward pass already rounded (half the memory for bf16).
    """
    return _matmul_last_axis(x, w, operand_dtype)


def _pointwise_fwd(x, w, operand_dtype):
    kept = _round_operand(x, operand_dtype, x.shape[-1])
    return _matmul_last_axis(x, w, operand_dtype), (kept, w)


def _pointwise_bwd(operand_dtype, residuals, g):
    x, w = residuals  # g has the primal x's dtype (the product's); x may be rounded
    dx = _matmul_last_axis(g, w.T, operand_dtype)
    # d/dw contracts N*H*W values; its operands in the dtype the forward product used.
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]).astype(x.dtype)
    dw = jax.lax.dot_general(
        x2, g2, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )
    return dx, dw.astype(w.dtype)


pointwise_matmul.defvjp(_pointwise_fwd, _pointwise_bwd)


class PatchConv(nn.Module):
    """k x k convolution without bias as one matmul over k*k*C_in-value patches.

    Takes `nn.Conv`'s arguments and param layout ('kernel' (k, k, C_in, C_out)). It is for
    the stem, whose 3 input channels XLA:CPU's convolution handles badly: 17.6 ms of a 137 ms
    b0 eval forward (batch 8, 224 px, 2 cores), where gathering the 27-value patches with
    k*k strided slices and one (N*H*W, 27) x (27, 32) matmul take about 5 ms. The patches now
    come from s-pixel tuples (`_tuple_windows`): in b0's eval profile on a 2-core AVX2 EPYC
    the stem's kernels took 7.8 ms against 15.5 (medians per call, profiles an hour apart);
    the whole eval forward 1.007x, train step 1.012x (A/B, IQRs 0.95-1.08: the noise).
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Any = ((0, 0), (0, 0))
    use_bias: bool = False
    kernel_init: Any = conv_init
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        stride = self.strides[0]
        if self.use_bias or kh != kw or tuple(self.strides) != (stride, stride):
            raise ValueError(
                "PatchConv is a square, equally strided conv without bias; got "
                f"kernel_size={self.kernel_size}, strides={self.strides}, use_bias={self.use_bias}"
            )
        shape = (kh, kw, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        patches = jnp.concatenate(_tuple_windows(x, kh, stride, self.padding), -1)
        return pointwise_matmul(patches, _tuple_kernel(kernel, stride).reshape(-1, self.features))


def _tuple_windows(x: jax.Array, k: int, stride: int, padding) -> list[jax.Array]:
    """The patches of a k x k, stride-s convolution as k * t views of s-pixel tuples.

    The padded input is viewed as (N, H/s, s, W/s, s*C): row r is tuple row r // s, sub-row
    r % s, and s adjacent pixels of a row are one s*C-value tuple. Output (i, j) meets input
    rows s*i + d (d < k), each a view at tuple row i + d // s, and the t = ceil(k / s) tuples
    j .. j+t-1 of those rows: every view is a plain offset slice, where `_shifted_windows`
    takes k*k views strided by s pixels of C values each. Taps past k in the last tuple get a
    zero weight (`_tuple_kernel`). For b0's stem (224 px, stride 2, C = 3: six 6-value views,
    36 channels against nine 3-value views, 27) the patches and matmul took 5.6-6.8 ms
    against 7.4-10.3 ms (standalone, batch 8, 2-core AVX2 EPYC, median of 21 calls); the
    output is the same to the bit. With s = 1 these are `_shifted_windows`' views.
    """
    n, h, w, c = x.shape
    (top, bottom), (left, right) = padding
    out_h = (h + top + bottom - k) // stride + 1
    out_w = (w + left + right - k) // stride + 1
    t = -(-k // stride)
    rows, cols = stride * (out_h + t - 1), stride * (out_w + t - 1)
    # lax.pad crops where the padded input is longer than the views reach (negative padding)
    config = [(0, 0, 0), (top, rows - h - top, 0), (left, cols - w - left, 0), (0, 0, 0)]
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
    tuples = xp.reshape(n, rows // stride, stride, cols // stride, stride * c)
    return [
        tuples[:, d // stride: d // stride + out_h, d % stride, j: j + out_w, :]
        for d in range(k)
        for j in range(t)
    ]


def _tuple_kernel(kernel: jax.Array, stride: int) -> jax.Array:
    """A (k, k, C, F) kernel laid out for `_tuple_windows`' channels: (k, t * s, C, F), the
    columns past k zero."""
    k = kernel.shape[0]
    t = -(-k // stride)
    return jnp.pad(kernel, [(0, 0), (0, t * stride - k), (0, 0), (0, 0)])


def _channel_sums(*terms: jax.Array) -> tuple[jax.Array, ...]:
    """Per-channel sums over all but the last axis of same-shape tensors, in one pass.

    XLA:CPU gave each `x.sum(axes)` a YNNPACK reduction of its own, one pass over memory per
    sum. Here the (M, C) rows are viewed as (r, M / r, C) and one variadic reduce adds the r
    blocks elementwise, a pass XLA's loop vectorises along (M / r) * C outputs, reading each
    element once for all the sums; the small partial sums are then summed. r = 16 (the
    largest power of two up to 16 dividing M): on b0's BatchNorm shapes (batch 8, 2 cores,
    AMD Zen 5) sum(x) and sum(x * x) took 1.4-1.9x less time than the two reductions from
    14x14 up and about the same at 7x7, while r = 32 was slower at 14x14 and r = 64 several
    times slower everywhere. Each sum adds r partial sums of M / r values, as accurate as the
    library's (relative 2e-7 in float32). Used for the training statistics, train step (A/B,
    1-1.5 s rounds interleaved): b0 1.03x (IQR 0.99-1.08), mobilenetv2_100 1.05x, rexnet_100
    1.03x, b0 at batch 1 1.00x. Not for the backward pass's two sums: there XLA fused the
    sums' producers (the depthwise input gradient, the activation's derivative) into the
    reduce and computed them again for dx, and the train step ran 0.65-0.70x as fast; an
    optimization barrier on g' did not stop that (in a small test XLA:CPU fused across the
    barrier too).
    """
    c = terms[0].shape[-1]
    m = terms[0].size // c
    r = next(r for r in (16, 8, 4, 2, 1) if m % r == 0)
    return _fused_channel_sums(tuple(t.reshape(r, m // r, c) for t in terms), (0,))


def _batch_stats(x: jax.Array):
    """Mean and variance over all but the channel axis, as flax's BatchNorm takes them: in
    float32, one pass (E[x^2] - E[x]^2), negative round-off clipped to 0."""
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    n = x.size // x.shape[-1]
    total, total2 = _channel_sums(x32, x32 * x32)
    mean, mean2 = total / n, total2 / n
    return mean, jnp.maximum(0.0, mean2 - mean * mean)


def silu_tanh(x: jax.Array) -> jax.Array:
    """SiLU as x/2 * (1 + tanh(x/2)), the same function as `x * sigmoid(x)`, for XLA:CPU:
    it lowers the sigmoid to exp and a division, tanh to a vectorised rational approximation,
    which made b0's eval forward 1.036-1.05x faster (interleaved repeats, batch 8, 2 cores;
    outputs within float32 round-off of `nn.silu`'s). Only the CPU formulation uses it: ONNX
    Runtime fuses `x * sigmoid(x)` but not this form (b0 exported with it ran at 52 images/s,
    with `x * sigmoid(x)` at 69-77), and the export is built from the 'conv' formulation."""
    half = 0.5 * x
    return half + half * jnp.tanh(half)


# The activations a BatchNormAct can end in, by name: EfficientNet's SiLU, MobileNet's ReLU6,
# ReXNet's ReLU (its SE) and ReLU6.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu,
    "relu": nn.relu,
    "relu6": nn.relu6,
}
Activation = Literal["silu", "relu", "relu6"] | bool | None
# What BatchNormAct computes for a name: its CPU formulation's SiLU besides ACTIVATIONS.
_ACTIVATION_IMPLS = {**ACTIVATIONS, "silu_tanh": silu_tanh}


def activation_name(act: Activation) -> str | None:
    """'silu', 'relu', 'relu6' or None (linear). True is 'silu' and False None: EfficientNet's
    blocks say `act=True` for SiLU."""
    if act is True:
        return "silu"
    if act is False or act is None:
        return None
    if act not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or None, got {act!r}")
    return act


def _act_derivative(act: str, y: jax.Array) -> jax.Array:
    """d act(y) / dy, as JAX differentiates `ACTIVATIONS[act]` (ReLU's kinks count as flat)."""
    if act in ("silu", "silu_tanh"):
        sig = jax.nn.sigmoid(y)
        return sig * (1 + y * (1 - sig))
    if act == "relu":
        return (y > 0).astype(y.dtype)
    if act == "relu6":
        return ((y > 0) & (y < 6)).astype(y.dtype)
    raise AssertionError(act)


def _normalize_act(x, mean, rstd, scale, bias, dtype, act):
    """flax's BatchNorm normalisation, operation for operation, then `act` in `dtype`."""
    y = ((x - mean) * (rstd * scale) + bias).astype(dtype)
    return _ACTIVATION_IMPLS[act](y) if act else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_act_train(x, scale, bias, epsilon: float, dtype, act: str | None):
    """Training-mode BatchNorm (batch statistics), then the activation `act` (a name in
    `ACTIVATIONS`, or None), with a hand-written gradient; returns (y, batch mean, batch
    variance). The statistics feed only the running averages, so no gradient flows back
    through them.

    Autodiff of flax's BatchNorm + SiLU stores the normalised output for SiLU's gradient and
    reduces g three times (for the bias, the scale, and the variance's path to x). The
    textbook gradient needs only x and two sums, sum(g') and sum(g' * x_hat):
    dx = scale * rstd * (g' - mean(g') - x_hat * mean(g' * x_hat)), where g' is g through the
    activation's derivative, recomputed from x.
    """
    return _batch_norm_act_fwd(x, scale, bias, epsilon, dtype, act)[0]


def _batch_norm_act_fwd(x, scale, bias, epsilon, dtype, act):
    mean, var = _batch_stats(x)
    rstd = jax.lax.rsqrt(var + epsilon)
    y = _normalize_act(x, mean, rstd, scale, bias, dtype, act)
    return (y, mean, var), (x, mean, rstd, scale, bias)


def _batch_norm_act_bwd(epsilon, dtype, act, residuals, cotangents):
    """The textbook gradient, written so that no full-size tensor but g' is materialised.

    x_hat = (x - mean) * rstd appears only inside the reduction for dscale; the
    pre-activation and dx are per-channel affine functions of x (`k * x + shift`). Written
    with x_hat in all three places, XLA:CPU materialised it and the reduction read it instead
    of x: one more write and read of every BatchNorm's input per train step. Measured on b0
    (batch 8, 2 cores): BatchNorm backward kernels 248 -> 221 ms of XLA profile time, train
    step 1.018x (median of 80 interleaved rounds, IQR 0.97-1.06), gradients within 1e-8.
    The affine forms round like the forward's one-pass variance: their error grows with
    |mean| / std, which is harmless in float32.
    """
    x, mean, rstd, scale, bias = residuals
    g = cotangents[0].astype(mean.dtype)
    k = scale * rstd  # per channel
    if act:
        y = (x * k + (bias - mean * k)).astype(dtype).astype(g.dtype)
        g = g * _act_derivative(act, y)
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    dbias = g.sum(axes)
    # Behind the barrier the mean is opaque to XLA's loop fusion, which otherwise fuses its
    # computation (sum * 1/n) into x - mean and materialises that instead of leaving the
    # subtraction to the fused multiply-reduce.
    dscale = (g * (x - jax.lax.optimization_barrier(mean))).sum(axes) * rstd
    # dx = k * (g - mean(g) - x_hat * mean(g * x_hat)) = k * g + b * x + c, per channel b, c.
    b = -k * rstd * dscale / n
    c = -k * dbias / n - b * mean
    dx = k * g + b * x + c
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


batch_norm_act_train.defvjp(_batch_norm_act_fwd, _batch_norm_act_bwd)


class BatchNormAct(nn.BatchNorm):
    """flax's BatchNorm, then an activation; same variables, same outputs.

    `act` names the activation ('silu', 'relu', 'relu6'; True is 'silu'; False/None: none).
    `fused_grad` trains through `batch_norm_act_train`'s hand-written gradient, for XLA:CPU,
    where BatchNorm + SiLU forward and backward took half of b0's train step (XLA profile,
    batch 8, 2 cores). Otherwise, and always in eval mode, it is `nn.BatchNorm` then the
    activation. `tanh_silu` computes SiLU as `silu_tanh` in every mode, also for XLA:CPU.
    Inputs may be (N, C) as well as NHWC: statistics are over all but the last axis.
    """

    act: Activation = False
    fused_grad: bool = False
    tanh_silu: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        act = activation_name(self.act)
        if act == "silu" and self.tanh_silu:
            act = "silu_tanh"
        running = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        if running or not self.fused_grad:
            y = super().__call__(x, use_running_average)
            return _ACTIVATION_IMPLS[act](y) if act else y
        defaults = (self.axis, self.axis_name, self.use_bias, self.use_scale)
        if defaults != (-1, None, True, True) or not self.use_fast_variance:
            raise ValueError(
                "BatchNormAct's fused_grad computes BatchNorm over all but the last axis, with "
                "scale and bias, one-pass variance and no axis_name; got axis="
                f"{self.axis}, axis_name={self.axis_name}, use_bias={self.use_bias}, "
                f"use_scale={self.use_scale}, use_fast_variance={self.use_fast_variance}"
            )
        # The variables flax's BatchNorm declares, in its order, with its initialisers.
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
        dtype = nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        y, mean, var = batch_norm_act_train(x, scale, bias, self.epsilon, dtype, act)
        mean, var = jax.lax.stop_gradient((mean, var))  # the VJP ignores their cotangents
        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * mean
            ra_var.value = m * ra_var.value + (1 - m) * var
        return y


@jax.custom_vjp
def _spatial_sum_matmul(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, C): each image's positions summed by a batched matmul with ones.

    Its gradient is the plain broadcast, as for a reduction; differentiating the matmul
    instead would give XLA an outer product with the ones to compute.
    """
    n, h, w, c = x.shape
    ones = jnp.ones((n, 1, h * w), x.dtype)
    dims = (((2,), (1,)), ((0,), (0,)))
    out = jax.lax.dot_general(ones, x.reshape(n, h * w, c), dims, precision=jax.lax.Precision.HIGHEST)
    return out[:, 0]


def _spatial_sum_matmul_fwd(x):
    return _spatial_sum_matmul(x), x.shape


def _spatial_sum_matmul_bwd(shape, g):
    return (jnp.broadcast_to(g[:, None, None, :], shape),)


_spatial_sum_matmul.defvjp(_spatial_sum_matmul_fwd, _spatial_sum_matmul_bwd)


def global_pool(x: jax.Array, as_matmul: bool = False) -> jax.Array:
    """Spatial mean in float32: a bf16 sum over 49-3600 positions loses precision.

    `as_matmul` (the CPU formulation) sums by a matmul with ones instead of a reduction.
    XLA:CPU hands the reduction to YNNPACK, whose sum over a (8, 56, 56, 144) tensor took
    2.1-2.3 ms on a 2-core AVX2 EPYC, against 0.6-0.75 ms as the matmul (standalone, median of
    15 rounds). b0 eval forward there 1.07x and 1.12x (`benchmarks/ab_commits.py`, median of 30
    interleaved rounds), rexnet_100 1.05x; train step, and mobilenetv2_100 (no SE), unchanged.
    """
    x = x.astype(jnp.float32)
    if as_matmul:
        return _spatial_sum_matmul(x) / (x.shape[1] * x.shape[2])
    return jnp.mean(x, axis=(1, 2))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: pool, reduce, activation, expand, sigmoid gate (Hu et al., 2018).

    The two 1x1 convs act on a pooled vector, so they are written as Dense layers; kernels
    are (C_in, C_out), a 1x1 conv's kernel without its two unit axes. EfficientNet's SE is
    reduce -> SiLU; ReXNet's puts a BatchNorm between reduce and its ReLU (`norm`, a
    `BatchNormAct` constructor, named 'bn').
    """

    reduced_channels: int
    act: Activation = "silu"
    norm: Callable[..., nn.Module] | None = None
    pool: Callable[[jax.Array], jax.Array] = global_pool
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = functools.partial(
            nn.Dense, kernel_init=conv_init, dtype=self.dtype, param_dtype=self.param_dtype
        )
        s = self.pool(x).astype(x.dtype)
        s = dense(self.reduced_channels, name="reduce")(s)
        if self.norm is not None:
            s = self.norm(act=self.act, name="bn")(s)
        else:
            act = activation_name(self.act)
            s = ACTIVATIONS[act](s) if act else s
        s = nn.sigmoid(dense(x.shape[-1], name="expand")(s))
        return x * s[:, None, None, :]


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): drop a sample's whole residual branch.

    Survivors are scaled by 1/keep so the branch's expected value is unchanged. Randomness
    comes from the 'drop_path' RNG stream, separate from the head's 'dropout'.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("drop_path"), keep, mask_shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))
