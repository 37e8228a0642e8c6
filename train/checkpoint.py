"""Checkpoints with orbax's CheckpointManager, and the SIGTERM (preemption) flag.

A checkpoint at step N is one orbax step directory with three items:
  state  the whole `TrainState` (params, batch_stats, optimizer state, EMA, step, RNG),
  data   the grain iterator's position (`grain.checkpoint.CheckpointSave`, one JSON per process),
  meta   JSON: class names, best accuracies so far.
Orbax writes each step into a temporary directory and renames it when complete, and deletes
old steps (beyond `keep`) only after a newer one is finalised, so a crash mid-save leaves the
previous checkpoint intact; the half-written temporary directory is ignored on restart.
Saves are asynchronous: the state is copied to host memory before `save` returns, so the next
(donating) train step may run while the files are written.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Save and restore (state, data iterator, meta) under one directory."""

    def __init__(self, directory: str | Path, *, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any, meta: dict) -> None:
        """Start saving step `step` (asynchronously; `wait()` to block until written)."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> tuple[Any, dict]:
        """(state, meta) of step `step`; `data_iterator` is moved to the saved position."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored.state, dict(restored.meta)

    def step_path(self, step: int) -> Path:
        return self.directory / str(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class PreemptionFlag:
    """Set by SIGTERM; the loop checks it after every step, saves and stops.

    With several processes, JAX's preemption sync point (set up by `jax.distributed`) makes all
    processes stop at the same step; with one process the signal handler alone decides.
    The sync manager learns of SIGTERM through its own (C++) signal handler, so with several
    processes no Python handler may replace it: one installed here would swallow the signal.
    """

    def __init__(self):
        self.received = False
        self._previous = None
        multiprocess = jax.process_count() > 1 and _preemption_service_running()
        if threading.current_thread() is threading.main_thread() and not multiprocess:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.received = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # no preemption service (jax.distributed not initialised)
                pass
        return self.received

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _preemption_service_running() -> bool:
    """Whether `jax.distributed` started JAX's preemption sync manager in this process."""
    from jax._src import distributed as jax_distributed  # the state object has no public accessor

    return getattr(jax_distributed.global_state, "preemption_sync_manager", None) is not None
