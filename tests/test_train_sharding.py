"""Data parallelism: the same global batch on 1 CPU device and on 8 gives the same loss and
the same updated params, batch statistics (global BatchNorm) and EMA within float tolerance."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("train_sharding_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def _start(devices: int, out: Path) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    return subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _result(proc: subprocess.Popen, out: Path) -> dict:
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log[-3000:]
    return dict(np.load(out))


def test_one_device_equals_eight(tmp_path):
    # Both processes at once: each compiles for tens of seconds on one core.
    procs = {n: _start(n, tmp_path / f"{n}.npz") for n in (1, 8)}
    one, eight = (_result(procs[n], tmp_path / f"{n}.npz") for n in (1, 8))
    assert int(one.pop("devices")) == 1 and int(eight.pop("devices")) == 8
    np.testing.assert_allclose(one.pop("losses"), eight.pop("losses"), rtol=1e-5)
    assert one.keys() == eight.keys()
    assert any(k.startswith("batch_stats/") for k in one)
    for k in one:
        np.testing.assert_allclose(one[k], eight[k], rtol=1e-4, atol=1e-5, err_msg=k)
