"""The train state, its creation (jitted, replicated) and loading pretrained weights into it.

`TrainState` is pure data, a pytree that orbax saves whole: step, params, batch_stats,
optimizer state, the EMA copies and the run's base RNG key (per-step keys are
`fold_in(rng, step)`, so the key itself never changes and a restored run draws the same
dropout and drop-path masks as an uninterrupted one).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn, struct, traverse_util
from jax.sharding import NamedSharding


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any  # None when EMA is off
    ema_batch_stats: Any
    rng: jax.Array  # uint32[2] base key of the run


def init_variables(model: nn.Module, image_size: int, rng: jax.Array, sharding: NamedSharding) -> dict:
    """Fresh variables, computed by a jitted init straight into `sharding` (replicated)."""
    def init(rng):
        x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        return model.init({"params": rng}, x, train=False)

    return jax.jit(init, out_shardings=sharding)(rng)


def make_state(variables: dict, tx: optax.GradientTransformation, rng: jax.Array, ema: bool) -> TrainState:
    """State at step 0 from `variables` (traceable: used under jit and eval_shape)."""
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731 - EMA must not alias donated buffers
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema_params=copy(params) if ema else None,
        ema_batch_stats=copy(batch_stats) if ema else None,
        rng=rng,
    )


def create_train_state(
    variables: dict, tx: optax.GradientTransformation, rng: jax.Array, *, ema: bool, sharding: NamedSharding
) -> TrainState:
    """`make_state`, jitted with replicated outputs (nothing is built on the host)."""
    return jax.jit(lambda v, r: make_state(v, tx, r, ema), out_shardings=sharding)(variables, rng)


def abstract_train_state(
    model: nn.Module, image_size: int, tx, *, ema: bool, sharding: NamedSharding
) -> TrainState:
    """Shapes, dtypes and shardings of the state, without allocating it (restore target)."""
    def build():
        x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        variables = model.init({"params": jax.random.PRNGKey(0)}, x, train=False)
        return make_state(variables, tx, jax.random.PRNGKey(0), ema)

    shapes = jax.eval_shape(build)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


class PretrainedMismatchError(ValueError):
    """A pretrained tree does not fit the model (other than the classifier)."""


def merge_pretrained(
    fresh: dict, pretrained: dict, *, reinit_prefix: tuple[str, ...] = ("params", "classifier")
) -> tuple[dict, list[str]]:
    """Pretrained values in the fresh tree, strictly (big_vision `merge_params`).

    Every fresh leaf must exist in `pretrained` with the same shape, except those under
    `reinit_prefix` (the classifier), which keep their fresh initialisation when the shapes
    differ (a different class count). Extra pretrained leaves are an error too.

    Returns:
      (merged variables as numpy, list of re-initialised paths).
    """
    f = traverse_util.flatten_dict(jax.device_get(fresh), sep="/")
    p = traverse_util.flatten_dict(dict(pretrained), sep="/")
    prefix = "/".join(reinit_prefix)
    in_head = lambda k: k == prefix or k.startswith(prefix + "/")  # noqa: E731
    missing = sorted(k for k in f if k not in p and not in_head(k))
    extra = sorted(k for k in p if k not in f and not in_head(k))
    wrong = sorted(
        f"{k}: model {tuple(np.shape(f[k]))} vs weights {tuple(np.shape(p[k]))}"
        for k in f if k in p and not in_head(k) and np.shape(f[k]) != np.shape(p[k])
    )
    if missing or extra or wrong:
        raise PretrainedMismatchError(
            "pretrained weights do not fit the model (check variant/padding): "
            f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}; "
            f"unexpected {extra[:10]}{'...' if len(extra) > 10 else ''}; "
            f"shape mismatches {wrong[:10]}"
        )
    merged, reinit = {}, []
    for k, v in f.items():
        if in_head(k) and (k not in p or np.shape(p[k]) != np.shape(v)):
            merged[k], _ = np.asarray(v), reinit.append(k)
        else:
            merged[k] = np.asarray(p[k], dtype=np.asarray(v).dtype)
    return traverse_util.unflatten_dict(merged, sep="/"), reinit
