"""Blocks the families share: the layer constructors bound once per network, conv + BN + act,
and the mobile inverted bottleneck (MobileNetV2; EfficientNet's MBConv with SE).

`network_ops` binds the layers of `flax_effnet.layers` to a network's settings once (flax
`examples/imagenet` style), so every family runs the same CPU formulation: depthwise convs as
shifted multiply-adds, 1x1 convs as matmuls with a 2-D weight gradient, BatchNorm +
activation with a hand-written gradient, and the 3-channel stem conv as a patch matmul.
`run_backbone` runs every family's stem and blocks, its eval forward's early, high-resolution
blocks a few images at a time (`image_groups`).
With a bfloat16 `dtype` the CPU formulation rounds only the matmuls' operands to bf16.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_effnet.layers import (
    Activation,
    BatchNormAct,
    DepthwiseConv,
    DepthwiseImpl,
    DropPath,
    Padding,
    PatchConv,
    PointwiseConv,
    SqueezeExcite,
    conv_init,
    dense_init,
    global_pool,
    resolve_depthwise_impl,
    spatial_padding,
)
from flax_effnet.specs import BlockSpec

ModuleDef = Callable[..., nn.Module]
Dtype = Any


@dataclasses.dataclass(frozen=True)
class Ops:
    """The layer constructors of one network, bound to its settings.

    Attributes:
      norm: `BatchNormAct` (call with `act=` and `name=`).
      pointwise: 1x1 conv without bias (`PointwiseConv`), called like `nn.Conv`.
      depthwise: `DepthwiseConv(kernel_size, stride, padding)`.
      stem_conv: the 3-channel stem conv (`PatchConv` in the CPU formulation, else `nn.Conv`).
      se: `SqueezeExcite(reduced_channels, ...)`.
      pool: the global average pool, (N, H, W, C) -> (N, C) float32 (SE's and the head's).
      dtype: the dtype activations travel in between these layers; a network casts its input
        to it.
    """

    norm: ModuleDef
    pointwise: ModuleDef
    depthwise: ModuleDef
    stem_conv: ModuleDef
    se: ModuleDef
    pool: Callable[[jax.Array], jax.Array]
    dtype: Dtype


def activation_dtype(cpu_formulation: bool, dtype: Dtype) -> Dtype:
    """The dtype a network's activations travel in: `dtype`, except float32 for a bfloat16
    `dtype` in the CPU formulation, whose matmuls alone then take bf16 operands.

    XLA:CPU has no bf16 vector arithmetic: with bf16 activations every elementwise loop
    (BatchNorm, SiLU, the depthwise sums) converts each value it reads and writes, which made
    b0's bf16 eval 0.89x as fast as float32's, while its matmuls, given bf16 operands and a
    float32 product, run on AMX / AVX512-BF16 (a (6272, 480) x (480, 80) product 4.5x faster
    than float32's). Rounding the matmul operands alone: eval 1.12-1.37x float32's in
    `benchmarks/bench_throughput.py --dtype bfloat16` (batch 8, 224 px, 2 cores of a Xeon
    with AMX; five runs), with the logits nearer float32's (max difference 0.6% of the
    largest logit, full bf16 1.0%). The train step gains nothing (1.00x): its elementwise
    work and reductions outweigh its matmuls.
    """
    if cpu_formulation and dtype is not None and jnp.dtype(dtype) == jnp.bfloat16:
        return jnp.float32
    return dtype


def network_ops(
    *,
    train: bool,
    depthwise_impl: DepthwiseImpl,
    bn_momentum: float,
    bn_epsilon: float,
    dtype: Dtype,
    param_dtype: Dtype,
) -> Ops:
    """The constructors for a network with these settings.

    'shift' (what 'auto' picks on CPU) is the CPU formulation: besides the depthwise conv, it
    takes 1x1 weight gradients as 2-D matmuls, BatchNorm + activation gradients by hand, SiLU
    through tanh, runs the 3-channel stem conv as a patch matmul, pools by a matmul with
    ones (`global_pool(as_matmul=True)`), and with a bfloat16 `dtype`
    keeps activations float32 and gives the 1x1 matmuls bf16 operands (`activation_dtype`).
    Params are the same either way.
    """
    cpu_formulation = resolve_depthwise_impl(depthwise_impl) == "shift"
    act_dtype = activation_dtype(cpu_formulation, dtype)
    operand_dtype = dtype if act_dtype != dtype else None
    pool = functools.partial(global_pool, as_matmul=cpu_formulation)
    return Ops(
        norm=functools.partial(
            BatchNormAct,
            fused_grad=cpu_formulation,
            tanh_silu=cpu_formulation,
            use_running_average=not train,
            momentum=bn_momentum,
            epsilon=bn_epsilon,
            dtype=act_dtype,
            param_dtype=param_dtype,
        ),
        # Every 1x1 conv (expand, project, head) is a matmul; same params as nn.Conv.
        pointwise=functools.partial(
            PointwiseConv,
            kernel_init=conv_init,
            dtype=act_dtype,
            param_dtype=param_dtype,
            flat_weight_grad=cpu_formulation,
            operand_dtype=operand_dtype,
        ),
        depthwise=functools.partial(
            DepthwiseConv, impl=depthwise_impl, dtype=act_dtype, param_dtype=param_dtype
        ),
        stem_conv=functools.partial(
            PatchConv if cpu_formulation else nn.Conv,
            use_bias=False,
            kernel_init=conv_init,
            dtype=act_dtype,
            param_dtype=param_dtype,
        ),
        se=functools.partial(SqueezeExcite, pool=pool, dtype=act_dtype, param_dtype=param_dtype),
        pool=pool,
        dtype=act_dtype,
    )


class ConvBN(nn.Module):
    """Conv -> BatchNorm -> activation, the stem and head unit (params `conv`, `bn`).

    `act`: 'silu', 'relu', 'relu6', or None; True is SiLU (EfficientNet's).
    """

    features: int
    kernel_size: int
    stride: int
    padding: Padding
    conv: ModuleDef
    norm: ModuleDef
    act: Activation = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        pads = spatial_padding(x.shape, k, self.stride, self.padding)
        x = self.conv(self.features, (k, k), (self.stride, self.stride), pads, name="conv")(x)
        return self.norm(act=self.act, name="bn")(x)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2, Sandler et al. 2018), with squeeze-excite
    when `spec.se_channels` > 0 (EfficientNet, paper section 4).

    1x1 expand (skipped when the ratio is 1) -> kxk depthwise -> [SE] -> 1x1 linear
    projection, with an identity shortcut through stochastic depth when stride is 1 and
    in == out. `act` follows the expand and depthwise convs: SiLU in EfficientNet, ReLU6 in
    MobileNetV2.
    """

    spec: BlockSpec
    padding: Padding
    ops: Ops
    act: Activation = "silu"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        s, ops = self.spec, self.ops
        shortcut = x
        if s.expanded_channels != s.in_channels:
            x = ops.pointwise(s.expanded_channels, (1, 1), name="conv_exp")(x)
            x = ops.norm(act=self.act, name="bn_exp")(x)
        x = ops.depthwise(s.kernel_size, s.stride, self.padding, name="conv_dw")(x)
        x = ops.norm(act=self.act, name="bn_dw")(x)
        if s.se_channels:
            x = ops.se(s.se_channels, name="se")(x)
        x = ops.pointwise(s.out_channels, (1, 1), name="conv_pwl")(x)
        x = ops.norm(name="bn_pwl")(x)
        if s.has_residual:
            x = DropPath(s.drop_path_rate, name="drop_path")(x, deterministic=not train)
            x = x + shortcut
        return x


# At most this many input pixels per group of `image_groups` (two 224 px images): b0's
# largest activation then takes 9.6 MB per group (112 x 112 x 96 float32 values per image).
_GROUP_PIXELS = 2 * 224 * 224


def image_group_size(batch: int, height: int, width: int) -> int:
    """Images per group for `image_groups`: the largest divisor of `batch` whose images hold
    at most `_GROUP_PIXELS` pixels together, at least 1."""
    fit = max(1, _GROUP_PIXELS // (height * width))
    return max(d for d in range(1, min(fit, batch) + 1) if batch % d == 0)


def image_groups(fn: Callable[[jax.Array], jax.Array], x: jax.Array, group: int) -> jax.Array:
    """`fn(x)` for a per-image `fn` (an eval forward), computed `group` images at a time.

    XLA runs each op over the whole batch, so at batch 8 every activation of b0's first stages
    (up to 38.5 MB at 112 x 112 x 96) is written to memory and read back by the next op; group
    by group (`lax.map`, one group after another) they fit the cache. Measured with the stem
    and the stride-2/4 blocks grouped (batch 8, 2-core AVX2 EPYC with a 32 MiB L3;
    `benchmarks/ab_commits.py --mode eval`, median and IQR of interleaved 1 s rounds): b0 (224
    px, groups of 2) 1.074x (0.99-1.14), b4 (380 px, groups of 1) 1.105x (0.98-1.16),
    mobilenetv2_100 1.078x (0.97-1.22), rexnet_100 1.096x (0.99-1.16); logits within 1e-7.
    The same stages as four unrolled groups gained nothing (XLA interleaved them), nor did
    grouping the whole network (b0 in groups of 1: 0.79x, its late matmuls too small).
    """
    n = x.shape[0]
    if group >= n:
        return fn(x)
    y = jax.lax.map(fn, x.reshape(n // group, group, *x.shape[1:]))
    return y.reshape(n, *y.shape[2:])


def early_block_count(specs: Sequence[Any]) -> int:
    """How many of the blocks (specs with a `stride`) after a stride-2 stem run at output
    strides 2 and 4, where a network's activations are largest."""
    strides = itertools.accumulate((s.stride for s in specs), operator.mul, initial=2)
    return sum(1 for stride in list(strides)[1:] if stride <= 4)


def eval_group_size(
    module: nn.Module, shape: tuple[int, ...], train: bool, depthwise_impl: DepthwiseImpl
) -> int:
    """Images per group for a network's early blocks (`image_groups`) in `module`'s call:
    grouped only in the CPU formulation's eval forward, not at init or while intermediates
    are captured, whose variables `lax.map` could not carry out of its loop, and not for a
    symbolic batch size (a StableHLO export's), which has no divisors to choose from."""
    if (train or resolve_depthwise_impl(depthwise_impl) != "shift"
            or not all(isinstance(d, int) for d in shape[:3])
            or module.is_initializing() or module.is_mutable_collection("intermediates")):
        return shape[0]
    return image_group_size(*shape[:3])


def block_name(spec: Any) -> str:
    """A block's module name, from its spec's stage and index: `blocks_{stage}_{index}`."""
    return f"blocks_{spec.stage}_{spec.index}"


def run_backbone(
    module: nn.Module,
    stem: Callable[[jax.Array], jax.Array],
    blocks: Sequence[tuple[Any, Callable[[jax.Array], jax.Array]]],
    x: jax.Array,
    *,
    train: bool,
    return_stages: bool,
    depthwise_impl: DepthwiseImpl,
) -> jax.Array | tuple[jax.Array, ...]:
    """`stem`, then `blocks` ((spec, block) pairs, each spec with `stage` and `stride`), for
    `module`'s call: the last block's output, or with `return_stages` the output of each
    stage's last block. The stem and the blocks at strides 2 and 4 go through `image_groups`
    (`eval_group_size` images at a time); the stage outputs are computed whole."""
    if return_stages:
        x, stage_outputs = stem(x), {}  # stage -> output of its last block
        for spec, block in blocks:
            x = stage_outputs[spec.stage] = block(x)
        return tuple(stage_outputs.values())
    n_early = early_block_count([spec for spec, _ in blocks])

    def early(x):
        x = stem(x)
        for _, block in blocks[:n_early]:
            x = block(x)
        return x

    x = image_groups(early, x, eval_group_size(module, x.shape, train, depthwise_impl))
    for _, block in blocks[n_early:]:
        x = block(x)
    return x


def classifier(num_classes: int, param_dtype: Dtype, name: str = "classifier") -> nn.Dense:
    """The final Dense layer (TF's uniform init): float32 logits whatever the compute dtype."""
    return nn.Dense(
        num_classes, kernel_init=dense_init, dtype=jnp.float32, param_dtype=param_dtype, name=name
    )
