"""Schedules, optimizers, parameter masks and the EMA of weights.

- Learning rate: `learning_rate * global_batch / 256` (Goyal et al. 2017 linear scaling),
  linear warmup from 0, then cosine to `end_lr_ratio * peak` (Loshchilov & Hutter 2017).
- RMSProp in the TF EfficientNet form (`tf.compat.v1.train.RMSPropOptimizer` as used by
  `efficientnet/utils.build_optimizer`): decay 0.9, momentum 0.9, epsilon 1e-3 *inside* the
  square root, mean square initialised to 1, momentum applied after the LR scaling.
- SGD with (nesterov) momentum, the seed's choice; AdamW with decoupled decay.
- Weight decay only on conv and dense kernels (ndim > 1): never BatchNorm scale/bias or biases.
  For SGD and RMSProp it is L2 added to the gradient (TF adds `weight_decay * l2_loss` to the
  loss, which is the same up to the factor 2 that TF folds into its 1e-5).
- `freeze_backbone`: every parameter but the classifier's gets a zero update (the seed's
  `--freeze-layers`). BatchNorm statistics still update in train mode, as in the seed.
- EMA (TF `ExponentialMovingAverage(decay, num_updates=step)`): decay min(d, (1+t)/(10+t)),
  applied to params and batch_stats.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

HEAD = "classifier"


def peak_learning_rate(base_lr: float, global_batch_size: int) -> float:
    """The LR for `global_batch_size`, given the LR per 256 images."""
    return base_lr * global_batch_size / 256.0


def learning_rate_schedule(
    peak: float, warmup_steps: int, total_steps: int, end_ratio: float = 0.0
) -> optax.Schedule:
    """Linear warmup 0 -> peak over `warmup_steps`, then cosine to `end_ratio * peak` at
    `total_steps` (and constant after)."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=peak * end_ratio,
    )


def decay_mask(params) -> dict:
    """True for conv and dense kernels (ndim > 1); False for BatchNorm scale/bias and biases."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def head_labels(params, freeze_backbone: bool) -> dict:
    """'train' or 'freeze' per leaf: with `freeze_backbone`, only the classifier trains."""
    def label(path, _):
        top = path[0].key if hasattr(path[0], "key") else str(path[0])
        return "train" if (not freeze_backbone or top == HEAD) else "freeze"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(
    name: str,
    schedule: optax.Schedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    rmsprop_decay: float = 0.9,
    rmsprop_eps: float = 1e-3,
    adam_b2: float = 0.999,
    weight_decay: float = 0.0,
    grad_clip_norm: float = 0.0,
    freeze_backbone: bool = False,
) -> optax.GradientTransformation:
    """The optimizer named by the config (`rmsprop`, `sgd`, `adamw`), with clipping, masked
    weight decay and optional backbone freezing."""
    parts = []
    if grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    if name == "adamw":
        parts.append(optax.adamw(schedule, b1=momentum, b2=adam_b2, weight_decay=weight_decay,
                                 mask=decay_mask))
    else:
        if weight_decay > 0:
            parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
        if name == "sgd":
            parts.append(optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov))
        elif name == "rmsprop":
            parts.append(optax.rmsprop(schedule, decay=rmsprop_decay, eps=rmsprop_eps,
                                       initial_scale=1.0, eps_in_sqrt=True, momentum=momentum))
        else:
            raise ValueError(f"unknown optimizer {name!r}; use rmsprop, sgd or adamw")
    tx = optax.chain(*parts)
    if freeze_backbone:
        tx = optax.multi_transform(
            {"train": tx, "freeze": optax.set_to_zero()},
            lambda params: head_labels(params, True),
        )
    return tx


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
    """TF's EMA decay with `num_updates`: small early on, so the average warms up quickly."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def ema_update(ema, new, decay: jax.Array):
    """ema <- decay * ema + (1 - decay) * new, leaf by leaf."""
    return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n.astype(e.dtype), ema, new)
