"""`LinenModel`: our linen models as NNX modules give the linen logits, update BatchNorm
statistics in train mode, draw dropout and drop_path from their own Rngs streams, and train
through `nnx.Optimizer` exactly as the linen step does."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import flax_effnet
from flax_effnet import EfficientNet
from flax_effnet.nnx_bridge import LinenModel
from infer_helpers import TINY, random_variables

SIZE = 33


def _x(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, SIZE, SIZE, 3)).astype(np.float32)


def _allclose(a, b, atol=1e-5):
    leaves = jax.tree.leaves(jax.tree.map(lambda u, v: np.allclose(u, v, atol=atol, rtol=1e-5), a, b))
    return bool(leaves) and all(leaves)


@pytest.mark.parametrize(
    "module",
    [EfficientNet(TINY, num_classes=5), flax_effnet.create_model("mobilenetv2_050", num_classes=5)],
    ids=["efficientnet", "mobilenetv2"],
)
def test_same_logits_and_variables(module):
    variables = random_variables(module, SIZE)
    model = LinenModel(module, variables, rngs=nnx.Rngs(0, dropout=1, drop_path=2))
    x = _x()
    np.testing.assert_allclose(model(x), module.apply(variables, x), atol=1e-5, rtol=1e-5)
    stages = model(x, return_stages=True)  # other arguments pass through
    assert len(stages) == len(module.apply(variables, x, return_stages=True))
    assert _allclose(model.variables(), variables, atol=0)
    assert {type(v) for v in jax.tree.leaves(nnx.state(model), is_leaf=lambda v: isinstance(v, nnx.Variable))} >= {
        nnx.Param, nnx.BatchStat
    }


def test_train_mode_updates_batch_stats_like_linen():
    module = EfficientNet(TINY, num_classes=5, dropout_rate=0.0, drop_path_rate=0.0)
    variables = random_variables(module, SIZE)
    model = LinenModel(module, variables, rngs=nnx.Rngs(0))
    x = _x()
    model.train()
    assert (model.use_running_average, model.deterministic) == (False, False)
    logits = model(x)
    want, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(logits, want, atol=1e-5, rtol=1e-5)
    assert _allclose(model.variables()["batch_stats"], updates["batch_stats"])
    assert not _allclose(model.variables()["batch_stats"], variables["batch_stats"])
    model.eval()
    np.testing.assert_allclose(
        model(x), module.apply({**variables, **updates}, x), atol=1e-5, rtol=1e-5
    )


def test_dropout_and_drop_path_streams():
    """Each stream changes the train-mode output on its own; same seeds, same outputs; eval
    ignores both."""
    module = EfficientNet(TINY, num_classes=5, dropout_rate=0.5, drop_path_rate=0.5)
    variables = random_variables(module, SIZE)
    x = _x(8)  # drop_path drops whole samples: with 2, two keys often drop the same ones

    def train_logits(dropout, drop_path, calls=1):
        model = LinenModel(module, variables, rngs=nnx.Rngs(0, dropout=dropout, drop_path=drop_path))
        model.train()
        return [np.asarray(model(x)) for _ in range(calls)]

    first, second = train_logits(1, 2, calls=2)
    assert not np.allclose(first, second)  # fresh keys every call
    np.testing.assert_array_equal(train_logits(1, 2)[0], first)
    assert not np.allclose(train_logits(3, 2)[0], first)  # the head's dropout
    assert not np.allclose(train_logits(1, 3)[0], first)  # stochastic depth
    evals = [LinenModel(module, variables, rngs=nnx.Rngs(0, dropout=s, drop_path=s))(x) for s in (1, 3)]
    np.testing.assert_array_equal(evals[0], evals[1])


def test_optax_step_through_nnx_optimizer_matches_linen():
    module = EfficientNet(TINY, num_classes=5, dropout_rate=0.0, drop_path_rate=0.0)
    variables = random_variables(module, SIZE)
    x, y = _x(4, seed=1), np.array([0, 1, 2, 3])
    tx = optax.sgd(0.1, momentum=0.9)

    model = LinenModel(module, variables, rngs=nnx.Rngs(0))
    model.train()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @jax.jit
    def linen_step(variables, x, y):
        def loss_fn(params):
            logits, updates = module.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        step, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
        return loss, {"params": optax.apply_updates(variables["params"], step), **updates}

    loss = nnx_step(model, optimizer, x, y)
    want_loss, want = linen_step(variables, x, y)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert _allclose(model.variables(), want)
    assert not _allclose(model.variables()["params"], variables["params"])
    assert int(optimizer.step[...]) == 1
