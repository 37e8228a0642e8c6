"""Checkpoints with orbax's CheckpointManager, and the SIGTERM (preemption) flag.

A checkpoint at step N is one orbax step directory with two items:
  state  the whole `TrainState` (params, batch_stats, optimizer state, EMA, step, RNG),
  meta   JSON: class names, best accuracies so far, unreadable images seen.
The data position needs no item of its own: batch k of the input pipeline is a pure function
of k (train/input_pipeline.py), so a run restored at step N reads batch N next. (Checkpoints of
earlier versions also hold a `data` item, the grain iterator's position; it is not read.)

Orbax writes each step into a temporary directory and renames it when complete, and deletes
old steps (beyond `keep`) only after a newer one is finalised, so a crash mid-save leaves the
previous checkpoint intact. The half-written temporary directory a crash leaves is deleted
by the next run (`cleanup_tmp_directories`: in the background from start-up, finished before
its first save). A finalised checkpoint that
cannot be read back (a damaged disk, a file cut short by a full disk, an edited file) is moved
aside to `damaged-N/` beside the step directories, never deleted, and the newest intact one is
used instead (`restore_latest`).

Saves are asynchronous: the state is copied to host memory before `save` returns, so the next
(donating) train step may run while the files are written.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    """Save and restore (state, meta) under one directory."""

    def __init__(self, directory: str | Path, *, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start saving step `step` (asynchronously; `wait()` to block until written)."""
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """(state, meta) of step `step`."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
        return restored.state, dict(restored.meta)

    def restore_latest(self, abstract_state: Any, warn: Callable[[str], None]) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of the newest checkpoint that reads back intact, or None.

        A damaged one is named in a warning and moved to `damaged-N/` (kept, never deleted);
        then the one before it is tried. With several processes all of them must read a step
        for it to count, so every process resumes from the same one.
        """
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, meta = self.restore(step, abstract_state)
                problem = ""
            except Exception as e:  # noqa: BLE001 - orbax, tensorstore and JSON errors alike
                state, meta, problem = None, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if _everywhere(not problem):
                return step, state, meta
            aside = self.directory / f"damaged-{step}"
            warn(f"WARNING: checkpoint step {step} in {self.directory} cannot be read "
                 f"({problem or 'on another process'}); moved it to {aside} and trying the one before")
            if jax.process_index() == 0:
                self.step_path(step).rename(aside)
            _barrier(f"flax_effnet_checkpoint_{step}_set_aside")
            self.manager.reload()
        return None

    def step_path(self, step: int) -> Path:
        return self.directory / str(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _everywhere(ok: bool) -> bool:
    """True when `ok` holds on every process."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


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
