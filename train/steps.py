"""Pure step functions: one optimizer update, one eval batch. The loop jits them.

Both take a global batch sharded on the mesh's `data` axis and a replicated state; every
reduction (the mean loss, BatchNorm's batch statistics, the metric sums) is therefore over
the global batch, whatever the number of devices.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from flax_effnet.train import optim
from flax_effnet.train.state import TrainState


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy against (smoothed) one-hot labels, in float32."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing) if smoothing else (
        jax.nn.one_hot(labels, num_classes))
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def step_rngs(rng: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
    """The `dropout` and `drop_path` keys of one step: fold_in(rng, step), then split."""
    dropout, drop_path = jax.random.split(jax.random.fold_in(rng, step))
    return {"dropout": dropout, "drop_path": drop_path}


def classification_loss(logits: jax.Array, batch: dict[str, jax.Array], *, num_classes: int,
                        label_smoothing: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean (smoothed) cross-entropy over the batch, and its top-1 accuracy."""
    loss = cross_entropy(logits, batch["label"], num_classes, label_smoothing).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def update_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    ema_decay: float,
    loss_fn: Callable[[Any, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]],
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update on a global batch, for any task: `loss_fn(model outputs, batch)` gives the
    loss and the task's own metrics. Returns the new state and scalar metrics (the task's, the
    loss before the update, LR used, gradient norm, all-finite flag and, when the batch has a
    `replaced` field, how many of its images stood in for unreadable ones)."""
    rngs = step_rngs(state.rng, state.step)

    def objective(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        outputs, updates = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"], rngs=rngs)
        loss, task_metrics = loss_fn(outputs, batch)
        return loss, (task_metrics, updates["batch_stats"])

    (loss, (task_metrics, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    ema_params, ema_batch_stats = state.ema_params, state.ema_batch_stats
    if ema_params is not None:
        decay = optim.ema_decay(step, ema_decay)
        ema_params = optim.ema_update(ema_params, params, decay)
        ema_batch_stats = optim.ema_update(ema_batch_stats, batch_stats, decay)
    new_state = state.replace(
        step=step, params=params, batch_stats=batch_stats, opt_state=opt_state,
        ema_params=ema_params, ema_batch_stats=ema_batch_stats,
    )
    metrics = {
        "loss": loss,
        **task_metrics,
        "learning_rate": schedule(state.step),
        "grad_norm": optax.tree.norm(grads),
        # The loop refuses to go on (or save) unless the loss and every new parameter are finite.
        "finite": jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)])),
    }
    if "replaced" in batch:  # summed over the global batch: every process gets the same count
        metrics["replaced"] = jnp.sum(batch["replaced"] >= 0)
    return new_state, metrics


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    num_classes: int,
    label_smoothing: float,
    ema_decay: float,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One classifier update (`update_step` with `classification_loss`); its metrics add the
    batch top-1 `accuracy`."""
    loss_fn = functools.partial(classification_loss, num_classes=num_classes, label_smoothing=label_smoothing)
    return update_step(state, batch, model=model, tx=tx, schedule=schedule, ema_decay=ema_decay, loss_fn=loss_fn)


def eval_step(params, batch_stats, batch: dict[str, jax.Array], *, model: nn.Module, num_classes: int) -> dict:
    """Sums over the unmasked examples of a batch: loss, top-1 and top-5 hits, count."""
    logits = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=False)
    mask = batch["mask"].astype(jnp.float32)
    labels = batch["label"]
    loss = cross_entropy(logits, labels, num_classes)
    k = min(5, num_classes)
    topk = jax.lax.top_k(logits, k)[1]
    top5 = jnp.any(topk == labels[:, None], axis=-1)
    top1 = topk[:, 0] == labels
    return {
        "loss": jnp.sum(loss * mask),
        "top1": jnp.sum(top1 * mask),
        "top5": jnp.sum(top5 * mask),
        "count": jnp.sum(mask),
    }
