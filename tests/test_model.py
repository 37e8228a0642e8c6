"""EfficientNet module: parameter counts, padding, train/eval, stochastic depth, dtypes, features."""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flax_effnet import (
    DropPath,
    EfficientNet,
    VariantSpec,
    pad_amounts,
    scale_network,
    stage_channels,
    stage_strides,
)

GOLDEN = Path(__file__).parent / "golden" / "b0_params.json"
# Every stage has residual blocks at depth 0.5 (repeats 1,1,1,2,2,2,1): small but complete.
TINY = VariantSpec("tiny", width=0.25, depth=0.5, resolution=32, dropout=0.2)

PARAM_COUNTS = {
    "b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232, "b4": 19_341_616,
    "b5": 30_389_784, "b6": 43_040_704, "b7": 66_347_960, "b8": 87_413_142, "l2": 480_309_308,
}


def shapes_of(model, size=64):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


def images(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


@functools.cache
def tiny_variables(num_classes=5):
    """One initialisation shared by the tests: params do not depend on the input size, and
    compiling init is the slowest part of a small model's life."""
    model = EfficientNet(TINY, num_classes=num_classes)
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def run(model, variables, x, **kwargs):
    """Jitted apply (eager apply dispatches hundreds of small ops one by one)."""
    return jax.jit(functools.partial(model.apply, **kwargs))(variables, x)


@pytest.mark.parametrize("variant", sorted(PARAM_COUNTS))
def test_param_count_equals_reference(variant):
    params = shapes_of(EfficientNet(variant, num_classes=1000))["params"]
    assert sum(x.size for x in jax.tree.leaves(params)) == PARAM_COUNTS[variant]


def test_golden_b0_tree():
    """Param paths are a checkpoint format: renaming a module must be a deliberate act."""
    tree = shapes_of(EfficientNet("b0"))
    flat = traverse_util.flatten_dict(tree, sep="/")
    actual = {k: list(v.shape) for k, v in sorted(flat.items())}
    assert actual == json.loads(GOLDEN.read_text())


def test_num_classes_zero_gives_pooled_features():
    shapes = shapes_of(EfficientNet(TINY, num_classes=0), 32)
    assert "classifier" not in shapes["params"]
    variables = tiny_variables()
    x = images((2, 32, 32, 3))
    for n in (0, None):
        out = run(EfficientNet(TINY, num_classes=n), variables, x)
        assert out.shape == (2, scale_network(TINY).head_channels) and out.dtype == jnp.float32


@pytest.mark.parametrize("size", [(33, 33), (225, 257)])
def test_any_input_size(size):
    x = images((2, *size, 3))
    logits = run(EfficientNet(TINY, num_classes=5), tiny_variables(), x)
    assert logits.shape == (2, 5) and bool(jnp.all(jnp.isfinite(logits)))


def test_pad_amounts():
    # TF SAME, stride 2 on an even size: the extra pixel goes bottom/right.
    assert pad_amounts(224, 3, 2, "same") == (0, 1)
    assert pad_amounts(224, 5, 2, "same") == (1, 2)
    assert pad_amounts(225, 3, 2, "same") == (1, 1)
    assert pad_amounts(224, 3, 1, "same") == (1, 1)
    assert pad_amounts(224, 5, 1, "same") == (2, 2)
    assert pad_amounts(224, 3, 2, "symmetric") == (1, 1)
    assert pad_amounts(224, 5, 2, "symmetric") == (2, 2)
    with pytest.raises(ValueError, match="padding must be"):
        pad_amounts(224, 3, 1, "valid")


def padded_pair(size):
    """Pooled features (not logits: a fresh classifier shrinks differences) of both modes."""
    same = EfficientNet(TINY, num_classes=0, padding="same")
    sym = same.clone(padding="symmetric")
    x = images((2, size, size, 3))
    return run(same, tiny_variables(), x), run(sym, tiny_variables(), x)


def test_padding_modes_agree_on_sizes_where_every_stride2_input_is_odd():
    # 33 -> 17 -> 9 -> 5 -> 3: at odd sizes SAME pads (k-1)/2 on both sides, like PyTorch.
    a, b = padded_pair(33)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_padding_modes_differ_on_even_sizes():
    a, b = padded_pair(32)
    assert float(jnp.max(jnp.abs(a - b))) > 0.05 * float(jnp.max(jnp.abs(a)))


def test_eval_is_deterministic_and_needs_no_rng():
    model = EfficientNet(TINY, num_classes=5, drop_path_rate=0.5, dropout_rate=0.5)
    x = images((4, 32, 32, 3))
    variables = tiny_variables()
    np.testing.assert_array_equal(run(model, variables, x), run(model, variables, x))


def train_apply(model, variables, x, seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    rngs = {"dropout": k1, "drop_path": k2}
    return run(model, variables, x, train=True, mutable=["batch_stats"], rngs=rngs)


def test_train_mode_updates_batch_stats_with_momentum():
    x = images((4, 32, 32, 3)) * 3 + 2
    base = EfficientNet(TINY, num_classes=5, bn_momentum=0.9)
    variables = tiny_variables()
    means = {}
    for m in (0.9, 0.99):
        _, updates = train_apply(base.clone(bn_momentum=m), variables, x, 0)
        means[m] = np.asarray(updates["batch_stats"]["stem"]["bn"]["mean"])
    # running = m * 0 + (1 - m) * batch_mean: the two updates differ by (1-0.9)/(1-0.99) = 10
    np.testing.assert_allclose(means[0.9], 10 * means[0.99], rtol=1e-4, atol=1e-7)
    assert np.abs(means[0.9]).max() > 1e-3


def test_train_mode_needs_drop_path_and_dropout_rngs():
    model = EfficientNet(TINY, num_classes=5)
    x = images((2, 32, 32, 3))
    variables = tiny_variables()
    with pytest.raises(Exception, match="drop_path"):
        model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})


def test_train_mode_randomness_follows_keys():
    model = EfficientNet(TINY, num_classes=5, drop_path_rate=0.5, dropout_rate=0.5)
    x = images((8, 32, 32, 3))
    variables = tiny_variables()
    a, _ = train_apply(model, variables, x, 0)
    b, _ = train_apply(model, variables, x, 0)
    c, _ = train_apply(model, variables, x, 1)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - c))) > 1e-3


def test_drop_path_rates_reach_the_model():
    model = EfficientNet(TINY, num_classes=5, drop_path_rate=0.0, dropout_rate=0.0)
    x = images((8, 32, 32, 3))
    variables = tiny_variables()
    a, _ = train_apply(model, variables, x, 0)
    b, _ = train_apply(model, variables, x, 1)
    np.testing.assert_allclose(a, b, atol=1e-6)  # with both rates 0, keys do not matter


def test_drop_path_statistics():
    rate, n = 0.3, 20_000
    x = jnp.ones((n, 2, 2, 3))
    layer = DropPath(rate)
    out = layer.apply({}, x, deterministic=False, rngs={"drop_path": jax.random.key(0)})
    per_sample = np.asarray(out).reshape(n, -1)
    # a whole sample's branch is dropped or kept and scaled by 1/keep
    assert np.all((per_sample == 0).all(1) | np.isclose(per_sample, 1 / (1 - rate)).all(1))
    dropped = (per_sample == 0).all(1).mean()
    assert abs(dropped - rate) < 0.015
    assert abs(per_sample.mean() - 1.0) < 0.02  # the expected value is preserved
    other = layer.apply({}, x, deterministic=False, rngs={"drop_path": jax.random.key(1)})
    assert not np.array_equal(np.asarray(other), np.asarray(out))
    np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)


def test_bfloat16_compute_float32_params_and_logits():
    x = images((2, 32, 32, 3))
    f32 = EfficientNet(TINY, num_classes=5)
    variables = tiny_variables()
    bf16 = f32.clone(dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes_of(bf16, 32)))
    out = run(bf16, variables, x)
    ref = run(f32, variables, x)
    assert out.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(out - ref))) < 0.05 * float(jnp.max(jnp.abs(ref))) + 1e-2
    (logits, _), = [train_apply(bf16, variables, x, 0)]
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_stage_features():
    model = EfficientNet(TINY, num_classes=5)
    x = images((2, 64, 96, 3))
    stages = run(model, tiny_variables(), x, return_stages=True)
    assert len(stages) == 7
    for feat, stride, ch in zip(stages, stage_strides(), stage_channels(TINY)):
        assert feat.shape == (2, 64 // stride, 96 // stride, ch)
    assert stage_channels("b0") == (16, 24, 40, 80, 112, 192, 320)


def test_initialisers_follow_tf_efficientnet():
    model = EfficientNet("b0", num_classes=1000)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    # conv: normal with variance 2 / (k*k*out)
    stem = np.asarray(params["stem"]["conv"]["kernel"])
    assert abs(stem.std() / np.sqrt(2 / (3 * 3 * 32)) - 1) < 0.1
    pwl = np.asarray(params["blocks_5_0"]["conv_pwl"]["kernel"])
    assert abs(pwl.std() / np.sqrt(2 / 192) - 1) < 0.05
    # depthwise: fan_out is k*k, not k*k*C (a naive Flax variance_scaling is sqrt(C) too small)
    dw = np.asarray(params["blocks_5_0"]["conv_dw"]["kernel"])
    assert dw.shape == (5, 5, 1, 672)
    assert abs(dw.std() / np.sqrt(2 / 25) - 1) < 0.05
    # dense head: uniform +-1/sqrt(num_classes)
    w = np.asarray(params["classifier"]["kernel"])
    bound = 1 / np.sqrt(1000)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.std() / (bound / np.sqrt(3)) - 1) < 0.02
    assert not np.any(params["classifier"]["bias"])
    bn = params["blocks_5_0"]["bn_dw"]
    assert np.all(bn["scale"] == 1) and not np.any(bn["bias"])


def test_bn_epsilon_is_used():
    model = EfficientNet(TINY, num_classes=0, bn_epsilon=1e-3)
    x = images((2, 32, 32, 3))
    variables = tiny_variables()
    # a small running variance makes epsilon matter, as in real checkpoints
    stats = jax.tree.map(lambda v: v, variables["batch_stats"])
    stats["stem"]["bn"]["var"] = jnp.full_like(stats["stem"]["bn"]["var"], 1e-4)
    variables = {"params": variables["params"], "batch_stats": stats}
    a = run(model, variables, x)
    b = run(model.clone(bn_epsilon=1e-5), variables, x)
    assert float(jnp.max(jnp.abs(a - b))) > 0.05 * float(jnp.max(jnp.abs(a)))
