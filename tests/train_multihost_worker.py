"""One process of a multi-process trainer run, started by test_train_multihost.py.

Runs the real entry point (`flax_effnet.train.main.main`) with the given trainer flags, and
records this process's training batches (step, record indices) to WORKDIR/batches-<pid>.jsonl.
With `--sigterm-at N`, process `--sigterm-process` sends SIGTERM to itself while step N runs,
as a preemption notice would arrive.

Usage: python train_multihost_worker.py [--sigterm-at N --sigterm-process P] -- TRAINER FLAGS
"""

import argparse
import functools
import json
import os
import signal
import sys
import time

import jax

from flax_effnet.train import loop, main


def _recorder(workdir: str, sigterm_at: int, sigterm_process: int):
    def record(step, batch):
        path = os.path.join(workdir, f"batches-{jax.process_index()}.jsonl")
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, "index": batch["index"].tolist()}) + "\n")
        if step == sigterm_at and jax.process_index() == sigterm_process:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)  # the notice reaches the other process while this one is held here

    return record


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sigterm-at", type=int, default=-1)
    parser.add_argument("--sigterm-process", type=int, default=0)
    split = argv.index("--")
    args, trainer_argv = parser.parse_args(argv[:split]), argv[split + 1:]
    workdir = trainer_argv[trainer_argv.index("--workdir") + 1]
    os.makedirs(workdir, exist_ok=True)
    callback = _recorder(workdir, args.sigterm_at, args.sigterm_process)
    loop.train_and_evaluate = functools.partial(loop.train_and_evaluate, batch_callback=callback)
    return main.main(trainer_argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
