"""MobileNetV1, MobileNetV2, ReXNet and ReXNet-lite: exact parameter counts for every named
variant, golden param trees, the module contract (features, stages, dtypes, train mode) and
training gradients of the CPU formulation against the 'conv' depthwise path."""

import functools
import json
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flax_effnet import MobileNetV1, MobileNetV2, ReXNet, ReXNetLite, create_model, list_models

GOLDEN = Path(__file__).parent / "golden"

# 1000 classes. timm 1.0.31 / torchvision 0.28 / the seed code (shared/research/seed-family.md,
# issue 13); the timm-named ones are also checked against timm itself below.
PARAM_COUNTS = {
    "mobilenetv2_035": 1_677_128, "mobilenetv2_050": 1_968_680, "mobilenetv2_075": 2_636_424,
    "mobilenetv2_100": 3_504_872, "mobilenetv2_110d": 4_516_520, "mobilenetv2_120d": 5_831_144,
    "mobilenetv2_140": 6_108_776,
    "mobilenetv1_100": 4_231_976, "mobilenetv1_100h": 5_282_600, "mobilenetv1_125": 6_270_840,
    "rexnet_100": 4_796_873, "rexnet_130": 7_557_091, "rexnet_150": 9_728_593,
    "rexnet_200": 16_366_620, "rexnet_300": 34_708_792,
    "rexnetr_100": 4_883_304, "rexnetr_130": 7_608_080, "rexnetr_150": 9_782_256,
    "rexnetr_200": 16_522_432, "rexnetr_300": 34_810_008,
    "rexnet_lite_100": 4_740_056, "rexnet_lite_130": 6_747_960, "rexnet_lite_150": 8_332_296,
    "rexnet_lite_200": 12_966_200,
}  # fmt: skip
# Models without a registered name: seed 002's head rule (1280 * alpha) and clovaai's 0.9x.
UNNAMED_COUNTS = [
    (functools.partial(MobileNetV2, width=0.5, scale_head=True), 1_225_000),
    (functools.partial(ReXNet, width=0.9), 4_091_257),
]
NEW_FAMILIES = ("mobilenetv1", "mobilenetv2", "rexnet", "rexnet_lite")


def shapes_of(model, size=64):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


def count(model) -> int:
    return sum(x.size for x in jax.tree.leaves(shapes_of(model)["params"]))


def random_variables(model, size=64, seed=0):
    """Random params and BN statistics of the model's shapes (positive variances), with
    nothing compiled: eval_shape only traces."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(shapes_of(model, size), sep="/")
    out = {}
    for path, s in flat.items():
        if path.endswith("/var"):
            out[path] = rng.uniform(0.5, 2.0, s.shape)
        elif path.endswith("/scale"):
            out[path] = rng.uniform(0.5, 1.5, s.shape)
        elif path.endswith("/kernel"):  # fan-in scaled, so activations stay O(1)
            out[path] = rng.standard_normal(s.shape) * np.sqrt(1.5 / np.prod(s.shape[:-1]))
        else:
            out[path] = rng.standard_normal(s.shape) * 0.2
    return traverse_util.unflatten_dict(
        {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}, sep="/"
    )


def test_every_named_variant_is_registered():
    names = set(list_models("mobilenetv*")) | set(list_models("rexnet*"))
    assert names == set(PARAM_COUNTS)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_equals_reference(name):
    assert count(create_model(name)) == PARAM_COUNTS[name]


@pytest.mark.parametrize("build, expected", UNNAMED_COUNTS)
def test_param_count_of_unnamed_variants(build, expected):
    assert count(build()) == expected


def test_reference_counts_are_timms(torchvision_ops):
    """The table above is what timm builds (on the meta device: no memory, no compute)."""
    import timm
    import torch

    timm_names = [n for n in PARAM_COUNTS if not n.startswith("rexnet_lite")]
    with torch.device("meta"):
        for name in timm_names:
            m = timm.create_model(name)
            assert sum(p.numel() for p in m.parameters()) == PARAM_COUNTS[name], name


@pytest.mark.parametrize(
    "name", ["mobilenetv2_100", "mobilenetv1_100h", "rexnet_100", "rexnet_lite_100"]
)
def test_golden_param_tree(name):
    """Param paths are a checkpoint format: renaming a module must be a deliberate act."""
    flat = traverse_util.flatten_dict(shapes_of(create_model(name)), sep="/")
    actual = {k: list(v.shape) for k, v in sorted(flat.items())}
    assert actual == json.loads((GOLDEN / f"{name}_params.json").read_text())


def test_registered_fields():
    m = create_model("mobilenetv2_120d", num_classes=5)
    assert (m.width, m.depth, m.fix_stem_head, m.num_classes) == (1.2, 1.4, True, 5)
    net = m.network
    assert (net.stem_channels, net.head_channels) == (32, 1280)
    assert [b.out_channels for b in net.blocks if b.index == 0] == [24, 32, 40, 80, 112, 192, 384]
    assert create_model("rexnetr_300").ch_div == 16
    lite = create_model("rexnet_lite_200").network
    assert (lite.stem_channels, lite.head_channels) == (64, 2560)


# Small members of each family, with the stage strides their `return_stages` must give.
TINY = {
    "mobilenetv1": (MobileNetV1(width=0.25, num_classes=5), (2, 4, 8, 16, 32)),
    "mobilenetv2": (MobileNetV2(width=0.35, depth=0.3, num_classes=5), (2, 4, 8, 16, 16, 32, 32)),
    "rexnet": (ReXNet(width=0.5, depth=0.3, num_classes=5), (2, 4, 8, 16, 16, 32)),
    "rexnet_lite": (ReXNetLite(width=1.0, num_classes=5), (2, 4, 8, 16, 16, 32)),
}


def bf16_matmuls(jaxpr) -> int:
    """How many dot_generals in `jaxpr` (and the jaxprs inside it) multiply bf16 operands."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            count += all(v.aval.dtype == jnp.bfloat16 for v in eqn.invars)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += bf16_matmuls(sub)
    return count


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_module_contract(family):
    """Logits, pooled features, stage outputs and bf16 compute, by shape and dtype (eval_shape:
    the equivalence tests run every family for real)."""
    model, strides = TINY[family]
    variables = shapes_of(model)
    x = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
    logits = jax.eval_shape(model.apply, variables, x)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    features = jax.eval_shape(model.clone(num_classes=0).apply, variables, x)
    width = variables["params"]["classifier"]["kernel"].shape[0]
    assert features.shape == (2, width) and features.dtype == jnp.float32
    stages = jax.eval_shape(functools.partial(model.apply, return_stages=True), variables, x)
    assert [s.shape[1:3] for s in stages] == [(64 // k, 96 // k) for k in strides]
    # bf16 compute: params stay float32, logits are float32. With 'conv' every block computes
    # in bf16; the CPU formulation keeps blocks float32 and gives the matmuls bf16 operands.
    for impl, block_dtype in (("conv", jnp.bfloat16), ("shift", jnp.float32)):
        bf16 = model.clone(dtype=jnp.bfloat16, depthwise_impl=impl)
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes_of(bf16)))
        out, state = jax.eval_shape(
            functools.partial(bf16.apply, capture_intermediates=True, mutable=["intermediates"]),
            variables,
            x,
        )
        blocks = [
            v["__call__"][0] for k, v in state["intermediates"].items() if k.startswith("blocks_")
        ]
        assert blocks and all(b.dtype == block_dtype for b in blocks)
        assert out.dtype == jnp.float32
        assert bf16_matmuls(jax.make_jaxpr(bf16.apply)(variables, x).jaxpr) > 0
    # Train mode: batch statistics are updated, stochastic depth and dropout need their RNGs.
    train = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    rngs = {"dropout": jax.random.key(0), "drop_path": jax.random.key(1)}
    _, updates = jax.eval_shape(functools.partial(train, rngs=rngs), variables, x)
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"]
    )
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(train, variables, x)


def test_rexnet_drop_path_on_the_partial_shortcut():
    """Train mode draws stochastic depth from the 'drop_path' stream; a dropped block passes
    its input through to its first in_channels outputs and zeros to the rest."""
    from flax_effnet.rexnet import LinearBottleneck, LinearBottleneckSpec
    from flax_effnet.blocks import network_ops

    spec = LinearBottleneckSpec(0, 0, 1, 4, 24, 6, 0, drop_path_rate=1.0)
    ops = network_ops(
        train=True,
        depthwise_impl="conv",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    )
    block = LinearBottleneck(spec, "symmetric", ops, "silu")
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 4))
    variables = block.init({"params": jax.random.key(1)}, x, train=False)
    with pytest.raises(Exception, match="drop_path"):
        block.apply(variables, x, train=True, mutable=["batch_stats"])
    out, _ = block.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"drop_path": jax.random.key(2)}
    )
    np.testing.assert_array_equal(out[..., :4], x)
    np.testing.assert_array_equal(out[..., 4:], 0.0)


# MobileNetV2 (BN + ReLU6, the inverted residual) and ReXNet (BN + SiLU/ReLU6, the SE's BN +
# ReLU on pooled vectors, the partial shortcut) use every layer MobileNetV1 (depthwise +
# pointwise + BN-ReLU6) and ReXNet-lite (ReXNet's block without SE, Dense + BN-ReLU6 on the
# pooled vector) are made of; two compilations per family are the slowest part of this file.
@pytest.mark.parametrize("family", ["mobilenetv2", "rexnet"])
def test_shift_training_gradients_match_conv(family):
    """Training mode (batch statistics): the CPU formulation's hand-written VJPs (depthwise,
    1x1 weights, stem patches, BatchNorm + ReLU6/ReLU/SiLU) give autodiff's gradients of the
    'conv' path, for every param and the input."""
    model, _ = TINY[family]
    variables = random_variables(model, seed=1)
    rng = np.random.default_rng(3)
    # Per-image scale and offset: ReXNet's SE BatchNorm normalises pooled vectors over the
    # batch, and pooled i.i.d. noise is nearly the same for every image; dividing by that
    # tiny spread would amplify any round-off.
    x = rng.standard_normal((4, 64, 64, 3)) * rng.uniform(0.5, 2.0, (4, 1, 1, 3)) + rng.uniform(
        -1, 1, (4, 1, 1, 3)
    )
    x = jnp.asarray(x, jnp.float32)
    u = jnp.asarray(rng.standard_normal((4, 5)), jnp.float32)

    def grads(impl):
        m = model.clone(depthwise_impl=impl)

        def loss(params, x):
            logits, _ = m.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(0)},
            )
            return jnp.vdot(u, logits)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)

    ours, ref = grads("shift"), grads("conv")
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    # Biases just before a BatchNorm have a true gradient of 0, so round-off is judged against
    # the size of the gradients overall.
    # ReXNet's SE BatchNorm over 4 pooled vectors is ill-conditioned: float32 'conv' itself is
    # 6e-5 of a leaf's largest gradient away from float64 (measured), so each leaf is also
    # judged against its own size.
    scale = max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(ref))
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ours)[0], jax.tree.leaves(ref)):
        atol = max(1e-5 * scale, 2e-4 * float(jnp.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=atol, err_msg=str(path))
