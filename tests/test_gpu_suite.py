"""benchmarks/gpu_suite.sh, in its tiny CPU mode: every run of the GPU suite starts, times its
contestants and lands in the JSON and markdown table (the figures themselves mean nothing)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_suite_runs_in_tiny_cpu_mode(tmp_path):
    out = tmp_path / "suite"
    res = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), "--tiny", str(out)],
                         env={**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    suite = json.loads((out / "suite.json").read_text())
    runs = {r["name"]: r for r in suite["runs"]}
    assert set(runs) >= {"b0_bf16", "b4_bf16", "b0_train_conv", "b0_train_shift"}
    for name, run in runs.items():
        assert "error" not in run, (name, run["error"], (out / f"{name}.log").read_text()[-2000:])
        assert all(row["img_s"] > 0 for row in run["rows"])
    # Against timm, with our float32 eval beside our bf16; depthwise runs: ours, train only.
    assert {r["name"] for r in runs["b0_bf16"]["rows"]} >= {"flax_effnet bfloat16", "timm"}
    for impl in ("conv", "shift"):
        rows = runs[f"b0_train_{impl}"]["rows"]
        assert [(r["mode"], r["name"]) for r in rows] == [("train step", "flax_effnet bfloat16")]
    md = (out / "suite.md").read_text()
    assert "| b4_bf16 | eval forward | timm |" in md
