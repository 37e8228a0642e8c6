"""Any model of the library as a Flax NNX module, with its (converted or trained) variables.

Flax's own bridge, `nnx.bridge.ToNNX`, wraps a linen module, but on its own it falls short in
three ways for these models, which `LinenModel` covers:

- `ToNNX(...).lazy_init(x)` initialises fresh random variables by running the model once;
  `LinenModel` takes the variables you have (from `load_pretrained`, the converter or
  `model.init`) and computes nothing.
- Train mode needs `model(x, train=True, mutable=['batch_stats'])` on every call, or linen's
  BatchNorm raises; `LinenModel` passes both.
- NNX's `model.train()` / `model.eval()` switch `deterministic` and `use_running_average`
  attributes; a `ToNNX` has neither and cannot hold plain attributes (its non-bridge
  attributes must be NNX variables), so `LinenModel` keeps them and the bridge as a child.

    from flax import nnx
    model = LinenModel(*load_pretrained("b0_flax"), rngs=nnx.Rngs(0, dropout=1, drop_path=2))
    logits = model(images)                 # eval mode: running BN statistics, no dropout
    model.train()                          # BN batch statistics (running ones updated),
    logits = model(images)                 # dropout and drop_path from their Rngs streams

Parameters are `nnx.Param` and BN statistics `nnx.BatchStat` under `model.bridged`, at the
linen paths (`model.bridged.stem['conv']['kernel']`), so `nnx.Optimizer(model, tx,
wrt=nnx.Param)` updates the parameters only; `variables()` gives linen variables back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import linen as nn
from flax import nnx
from flax.nnx.bridge import variables as bridge_variables


class LinenModel(nnx.Module):
    """A linen model of this library and its variables as an `nnx.Module`.

    Args:
      module: any model of the library (e.g. `create_model(...)` or from `load_pretrained`).
      variables: its linen variables ({'params': ..., 'batch_stats': ...}).
      rngs: the streams the model draws from in train mode: `dropout` (head) and `drop_path`
        (stochastic depth); each call takes a fresh key from every stream.
    """

    def __init__(self, module: nn.Module, variables: Mapping, *, rngs: nnx.Rngs):
        self.bridged = nnx.bridge.ToNNX(module, rngs=rngs)
        # What ToNNX itself does with the variables of its lazy init.
        for name, value in bridge_variables.linen_vars_to_nnx_attrs(dict(variables)).items():
            setattr(self.bridged, name, nnx.data(value))
        self.deterministic = True
        self.use_running_average = True

    def __call__(self, x: jax.Array, *, train: bool | None = None, **kwargs: Any):
        """The linen model's `__call__` (`return_stages=True` etc. pass through). `train`
        defaults to the mode set by `.train()` / `.eval()` (eval after construction)."""
        if train is None:
            train = not self.use_running_average
        mutable = ["batch_stats"] if train else False
        return self.bridged(x, train=train, mutable=mutable, **kwargs)

    def variables(self) -> dict:
        """The current variables in linen form, for `module.apply` or `save_pretrained`."""
        attrs = {
            k: v
            for k, v in vars(self.bridged).items()
            if not k.startswith("to_nnx__") and not k.startswith("_pytree__")
        }
        return bridge_variables.nnx_attrs_to_linen_vars(attrs)
