"""`train_efficientnet` as a user runs it, in a fresh process: a clean exit with no warnings
(grain's worker processes used to leave shared memory behind: "resource_tracker: There appear
to be 2 leaked shared_memory objects"), and the exit status of bad flags."""

import os
import subprocess
import sys

import pytest

from train_testutil import small_patterns

pytestmark = pytest.mark.slow


def _train(*flags, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-m", "flax_effnet.train", *flags], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_patterns(tmp_path_factory.mktemp("data"), train=8, val=2)


def test_a_run_with_worker_processes_exits_cleanly(data, tmp_path):
    out = _train("--data-dir", str(data), "--preset", "patterns", "--workdir", str(tmp_path / "run"),
                 "--image-size", "32", "--batch-size", "16", "--num-steps", "4", "--num-workers", "2",
                 "--eval-every-steps", "4", "--no-progress-bar", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "== summary ==" in out.stdout
    assert "leaked" not in out.stderr and "Warning" not in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_bad_flags_exit_2_before_jax_starts(tmp_path):
    """(A run stopped by unreadable data exits 1: main() maps loop.UnreadableDataError, which
    tests/test_train_loop.py raises in-process.)"""
    out = _train("--checkpoint-every-steps", "0", "--dataset", "imagenet2012", cwd=tmp_path)
    assert out.returncode == 2 and "--checkpoint-every-steps must be at least 1" in out.stderr
    assert "write tfds:imagenet2012" in out.stderr and "Traceback" not in out.stderr
