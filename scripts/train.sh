#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job. Until the trainer lands: a forward-pass demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -c "
import jax, jax.numpy as jnp
from flax_effnet import EfficientNet
model = EfficientNet('b0', num_classes=1000)
x = jnp.zeros((2, 224, 224, 3))
variables = model.init(jax.random.key(0), x)
print('b0 logits', model.apply(variables, x).shape)
"
