"""The eval forward's early blocks run a few images at a time (`blocks.image_groups`): the
group sizes, the loop's results against the whole batch's and one image at a time's, and
the calls that must not loop (train, init, captured intermediates, the 'conv' path, stages)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_effnet import blocks, create_model


@pytest.mark.parametrize(
    "shape, group",
    [
        ((8, 224, 224), 2),  # b0 at batch 8: two images per group
        ((8, 380, 380), 1),  # b4: one
        ((7, 224, 224), 1),  # 7 has no divisor up to 2 but 1
        ((6, 160, 160), 3),  # 3 images of 160 px hold fewer pixels than 2 of 224
        ((8, 64, 64), 8),  # small images: the whole batch, no loop
        ((1, 224, 224), 1),
    ],
)
def test_image_group_size(shape, group):
    assert blocks.image_group_size(*shape) == group


def test_image_groups_runs_fn_per_group():
    seen = []

    def fn(x):  # mixes the images of its batch, so a wrong grouping shows in the values
        seen.append(x.shape)
        return x * x.mean(0, keepdims=True) + jnp.tanh(x)

    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 5, 3, 2), np.float32))
    out = blocks.image_groups(fn, x, 2)
    expected = jnp.concatenate([fn(x[i:i + 2]) for i in range(0, 6, 2)])
    assert seen[0] == (2, 5, 3, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    whole = blocks.image_groups(fn, x, 6)  # a group as large as the batch: fn(x) itself
    assert seen[-1] == (6, 5, 3, 2)
    np.testing.assert_allclose(whole, fn(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv1_100", "rexnet_100"])
def test_grouped_eval_forward(name, monkeypatch):
    """With groups of 2 at 33 px (patched pixel budget): the eval forward loops, and its
    logits equal the whole batch's ('conv' path, no loop) and each image's alone."""
    monkeypatch.setattr(blocks, "_GROUP_PIXELS", 2 * 33 * 33)
    model = create_model(name, num_classes=10)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 33, 33, 3), np.float32))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    rng = np.random.default_rng(2)
    stats = jax.tree_util.tree_map_with_path(  # randomised BatchNorm statistics
        lambda path, v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape) if path[-1].key == "var"
                                    else rng.normal(0, 0.2, v.shape), v.dtype),
        variables["batch_stats"])
    variables = {**variables, "batch_stats": stats}

    def grouped(text):  # the batch viewed as 2 groups of 2 images, as lax.map takes it
        return "tensor<2x2x33x33x3xf32>" in text

    def has_loop(m, **kw):
        return grouped(jax.jit(lambda v, x: m.apply(v, x, **kw)).lower(variables, x).as_text())

    assert has_loop(model)
    logits = jax.jit(model.apply)(variables, x)
    one_by_one = jnp.concatenate([model.apply(variables, x[i:i + 1]) for i in range(4)])
    whole = model.clone(depthwise_impl="conv").apply(variables, x)
    np.testing.assert_allclose(logits, one_by_one, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, whole, rtol=1e-4, atol=1e-4)
    assert not has_loop(model.clone(depthwise_impl="conv"))
    assert not has_loop(model, return_stages=True)
    assert not has_loop(model, capture_intermediates=True, mutable=["intermediates"])
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                             rngs={"dropout": jax.random.key(1),
                                                   "drop_path": jax.random.key(2)}))
    assert not grouped(train.lower(variables, x).as_text())
