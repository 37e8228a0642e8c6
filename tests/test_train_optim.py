"""Schedule and optimizer configuration: warmup then cosine to the floor, LR scaling,
TF-form RMSProp, weight-decay masks that exclude BatchNorm and biases, freezing, EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from flax_effnet import EfficientNet
from flax_effnet.train import optim
from flax_effnet.train.config import TINY


@pytest.fixture(scope="module")
def params():
    model = EfficientNet(TINY, num_classes=6)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    return jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes["params"])


def test_peak_lr_scales_with_global_batch():
    assert optim.peak_learning_rate(0.016, 256) == pytest.approx(0.016)
    assert optim.peak_learning_rate(0.016, 1024) == pytest.approx(0.064)
    assert optim.peak_learning_rate(0.1, 64) == pytest.approx(0.025)


def test_warmup_then_cosine_to_floor():
    peak, warmup, total, ratio = 0.4, 10, 110, 0.01
    lr = optim.learning_rate_schedule(peak, warmup, total, ratio)
    values = np.array([float(lr(s)) for s in range(total + 5)])
    assert values[0] == 0.0
    np.testing.assert_allclose(values[:warmup + 1], peak * np.arange(warmup + 1) / warmup, rtol=1e-5)
    assert values.max() == pytest.approx(peak)
    decay = values[warmup:total + 1]
    assert np.all(np.diff(decay) <= 1e-9), "cosine phase must not increase"
    mid = warmup + (total - warmup) // 2
    assert values[mid] == pytest.approx((peak + peak * ratio) / 2, rel=1e-4)
    np.testing.assert_allclose(values[total:], peak * ratio, rtol=1e-5)


def test_decay_mask_excludes_batchnorm_and_biases(params):
    mask = traverse_util.flatten_dict(optim.decay_mask(params), sep="/")
    assert mask["stem/conv/kernel"] and mask["classifier/kernel"]
    assert mask["blocks_1_0/conv_dw/kernel"] and mask["blocks_1_0/se/reduce/kernel"]
    for path, decayed in mask.items():
        name = path.rsplit("/", 1)[-1]
        if name in ("scale", "bias"):
            assert not decayed, path
        else:
            assert name == "kernel" and decayed, path
    assert not mask["stem/bn/scale"] and not mask["classifier/bias"] and not mask["blocks_1_0/se/reduce/bias"]


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adamw"])
def test_weight_decay_touches_only_kernels(params, name):
    tx = optim.make_optimizer(name, 0.1, weight_decay=0.1, momentum=0.9)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    flat = traverse_util.flatten_dict(updates, sep="/")
    for path, u in flat.items():
        if path.endswith("kernel"):
            assert np.all(np.asarray(u) < 0), path  # pulled towards zero
        else:
            assert np.all(np.asarray(u) == 0), path


def test_rmsprop_is_the_tf_form():
    """ms starts at 1, eps inside the sqrt, momentum on the LR-scaled step (TF RMSPropOptimizer)."""
    lr, decay, mom, eps = 0.05, 0.9, 0.9, 1e-3
    tx = optim.make_optimizer("rmsprop", lr, momentum=mom, rmsprop_decay=decay, rmsprop_eps=eps)
    p = {"w": jnp.array([1.0, -2.0])}
    state = tx.init(p)
    ms, m = np.ones(2), np.zeros(2)
    for g in ([0.5, -1.0], [2.0, 0.25]):
        g = np.array(g)
        upd, state = tx.update({"w": jnp.asarray(g)}, state, p)
        ms = decay * ms + (1 - decay) * g**2
        m = mom * m + lr * g / np.sqrt(ms + eps)
        np.testing.assert_allclose(np.asarray(upd["w"]), -m, rtol=1e-5)


def test_sgd_nesterov_and_clipping():
    tx = optim.make_optimizer("sgd", 1.0, momentum=0.9, nesterov=True, grad_clip_norm=1.0)
    p = {"w": jnp.zeros(2)}
    upd, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(p), p)
    # clipped to norm 1: (0.6, 0.8); nesterov first step: g + 0.9 * g
    np.testing.assert_allclose(np.asarray(upd["w"]), -1.9 * np.array([0.6, 0.8]), rtol=1e-5)


def test_freeze_backbone_updates_only_the_classifier(params):
    tx = optim.make_optimizer("sgd", 0.1, momentum=0.9, weight_decay=1e-4, freeze_backbone=True)
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for path, u in traverse_util.flatten_dict(updates, sep="/").items():
        if path.startswith("classifier/"):
            assert np.all(np.asarray(u) != 0), path
        else:
            assert np.all(np.asarray(u) == 0), path


def test_ema_decay_tf_form():
    assert float(optim.ema_decay(0, 0.9999)) == pytest.approx(0.1)
    assert float(optim.ema_decay(10, 0.9999)) == pytest.approx(11 / 20)
    assert float(optim.ema_decay(10**7, 0.9999)) == pytest.approx(0.9999)
    new = optim.ema_update({"a": jnp.array(1.0)}, {"a": jnp.array(3.0)}, jnp.float32(0.75))
    assert float(new["a"]) == pytest.approx(1.5)


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make_optimizer("lamb", 0.1)
