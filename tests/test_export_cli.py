"""`export_efficientnet` end to end in-process: ONNX and StableHLO files that reload and match
the saved model, their metadata, a trainer workdir, and every failure mode (named error, exit
status, nothing left at the output path, no temporary files)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from flax_effnet import load_pretrained
from flax_effnet.export import api, load_onnx_metadata, load_stablehlo, run_onnx, run_stablehlo
from flax_effnet.export.cli import main
from infer_helpers import TINY_PREP, save_tiny_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("w") / "tiny", class_names=("cat", "dog", "fish"))


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_onnx_end_to_end(weights, tmp_path, capsys):
    out = tmp_path / "models" / "tiny.onnx"  # the folder is created
    assert main([str(weights), "--to", "onnx", "-o", str(out), "--input-size", "33", "31"]) == 0
    printed = capsys.readouterr().out
    assert "NCHW input (batch, 3, 33, 31)" in printed and "verify: max |diff| vs Flax" in printed
    assert _siblings(out) == ["tiny.onnx"]
    meta = load_onnx_metadata(out)
    assert meta["class_names"] == ["cat", "dog", "fish"] and meta["layout"] == "nchw"
    assert meta["input_size"] == [33, 31] and meta["saved_input_size"] == TINY_PREP.input_size
    assert meta["interpolation"] == "bilinear" and meta["mean"] == list(TINY_PREP.mean)
    model, variables = load_pretrained(weights)
    x = np.random.default_rng(5).standard_normal((5, 33, 31, 3)).astype(np.float32)
    (got,) = run_onnx(out, x.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(got, model.apply(variables, x), atol=1e-4, rtol=0)


def test_stablehlo_end_to_end_from_trainer_workdir(weights, tmp_path, capsys):
    """A trainer workdir (its export/ is the weights directory); default layout NHWC and the
    saved input size; the JSON beside the artifact."""
    workdir = tmp_path / "run"
    save_tiny_checkpoint(workdir / "export", class_names=("cat", "dog", "fish"))
    (workdir / "config.json").write_text("{}")  # the training config a workdir holds
    out = tmp_path / "tiny.stablehlo"
    assert main([str(workdir), "--to", "stablehlo", "-o", str(out)]) == 0
    assert "NHWC input (batch, 32, 32, 3)" in capsys.readouterr().out
    assert _siblings(out) == ["run", "tiny.stablehlo", "tiny.stablehlo.json"]
    meta = json.loads((tmp_path / "tiny.stablehlo.json").read_text())
    assert meta["class_names"] == ["cat", "dog", "fish"] and meta["platforms"] == ["cpu"]
    assert meta["layout"] == "nhwc" and meta["outputs"] == ["logits"]
    model, variables = load_pretrained(workdir / "export")
    x = np.random.default_rng(6).standard_normal((3, 32, 32, 3)).astype(np.float32)
    (got,) = run_stablehlo(load_stablehlo(out), x)
    np.testing.assert_allclose(got, jax.jit(model.apply)(variables, x), atol=1e-5, rtol=0)


def test_verification_failure_leaves_nothing(weights, tmp_path, capsys, monkeypatch):
    """Exit 1 when the written file disagrees with the Flax model; no output, no temp file."""
    real = api.onnx_format.run_onnx
    monkeypatch.setattr(api.onnx_format, "run_onnx", lambda p, x: [y + 1e-2 for y in real(p, x)])
    out = tmp_path / "bad.onnx"
    assert main([str(weights), "--to", "onnx", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "differs from the Flax model by 0.01" in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_exit_2(weights, tmp_path, capsys):
    not_weights = tmp_path / "photos"
    not_weights.mkdir()
    cases = {
        "no such directory": [str(tmp_path / "missing"), "--to", "stablehlo", "-o", str(tmp_path / "a")],
        "not a weights directory": [str(not_weights), "--to", "stablehlo", "-o", str(tmp_path / "a")],
        "output under a file": [str(weights), "--to", "onnx", "-o", str(weights / "config.json" / "m.onnx")],
        "output is a directory": [str(weights), "--to", "onnx", "-o", str(not_weights)],
    }
    for what, argv in cases.items():
        assert main(argv) == 2, what
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err, (what, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
    assert list(not_weights.iterdir()) == []
    assert sorted(p.name for p in weights.iterdir()) == ["config.json", "variables.safetensors"]


def test_existing_output_needs_overwrite(weights, tmp_path, capsys):
    out = tmp_path / "m.stablehlo"
    sidecar = tmp_path / "m.stablehlo.json"
    sidecar.write_text("mine")
    assert main([str(weights), "--to", "stablehlo", "-o", str(out)]) == 2
    assert "m.stablehlo.json exists; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.stablehlo.json"]
    assert sidecar.read_text() == "mine"
    assert main([str(weights), "--to", "stablehlo", "-o", str(out), "--overwrite"]) == 0
    assert json.loads(sidecar.read_text())["input_size"] == [32, 32]
    assert main([str(weights), "--to", "stablehlo", "-o", str(out)]) == 2
    assert "m.stablehlo exists" in capsys.readouterr().err


def test_usage_errors(weights, tmp_path):
    for argv in (
        [str(weights), "-o", "x"],  # --to is required
        [str(weights), "--to", "tflite", "-o", "x"],
        [str(weights), "--to", "onnx", "-o", "x", "--input-size", "0"],
        [str(weights), "--to", "onnx", "-o", "x", "--input-size", "1", "2", "3"],
        [str(weights), "--to", "onnx", "-o", "x", "--layout", "chwn"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv
