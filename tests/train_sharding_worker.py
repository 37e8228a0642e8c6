"""Run by test_train_sharding.py in a fresh process (the device count is fixed at JAX import):
two train steps of the tiny model on a fixed global batch, on every device of this process.

Usage: python train_sharding_worker.py OUT.npz   (XLA_FLAGS sets the CPU device count)
"""

import sys

import jax
import numpy as np
from flax import traverse_util

from flax_effnet import EfficientNet
from flax_effnet.train import optim, sharding, state as state_lib, steps
from flax_effnet.train.config import TINY

BATCH, SIZE, CLASSES = 16, 32, 6


def main(out: str) -> None:
    mesh = sharding.make_mesh()
    repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
    model = EfficientNet(TINY, num_classes=CLASSES, dropout_rate=0.2, drop_path_rate=0.2)
    schedule = optim.learning_rate_schedule(0.1, 1, 10)
    tx = optim.make_optimizer("sgd", schedule, momentum=0.9, weight_decay=1e-4)
    variables = state_lib.init_variables(model, SIZE, jax.random.PRNGKey(0), repl)
    state = state_lib.create_train_state(variables, tx, jax.random.PRNGKey(1), ema=True, sharding=repl)
    train = jax.jit(
        lambda s, b: steps.train_step(s, b, model=model, tx=tx, schedule=schedule, num_classes=CLASSES,
                                      label_smoothing=0.1, ema_decay=0.99),
        in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0,
    )
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(2):
        local = {"image": rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32),
                 "label": rng.integers(0, CLASSES, BATCH).astype(np.int32)}
        batch = sharding.global_batch(local, mesh)
        assert batch["image"].sharding.spec[0] == sharding.DATA_AXIS
        state, metrics = train(state, batch)
        losses.append(float(metrics["loss"]))
    host = jax.device_get({"params": state.params, "batch_stats": state.batch_stats,
                           "ema_params": state.ema_params})
    flat = traverse_util.flatten_dict(host, sep="/")
    np.savez(out, losses=np.array(losses), devices=len(jax.devices()), **flat)


if __name__ == "__main__":
    main(sys.argv[1])
