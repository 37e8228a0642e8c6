"""Shared helpers of the trainer tests: a small patterns folder, a tiny config, a compile cache.

The persistent compilation cache (`.jax_cache/` in the repo, git-ignored) lets runs with the
same shapes and config reuse one compilation, within a session and across sessions: the
tiny model's train step takes tens of seconds to compile on a busy CPU.
"""

from __future__ import annotations

from pathlib import Path

import jax

from flax_effnet.train import config as config_lib
from flax_effnet.train import default_dataset

ROOT = Path(__file__).resolve().parents[1]


def enable_compilation_cache() -> None:
    jax.config.update("jax_compilation_cache_dir", str(ROOT / ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def small_patterns(root: Path, train: int = 16, val: int = 4) -> Path:
    """A small copy of the built-in dataset (per class: `train` / `val` images)."""
    return default_dataset.ensure_dataset(root / f"patterns-{train}-{val}", per_split={"train": train, "val": val})


def tiny_config(data_dir: Path, workdir: Path, **overrides) -> config_lib.Config:
    """The patterns preset shrunk for tests: 32 px, batch 16, no worker processes."""
    base = dict(
        data_dir=str(data_dir), workdir=str(workdir), image_size=32, batch_size=16, num_workers=0,
        progress_bar=False, eval_every_steps=1000, checkpoint_every_steps=1000, log_every_steps=1,
    )
    return config_lib.make_config("patterns", **{**base, **overrides})
