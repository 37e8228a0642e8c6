"""The package as a user installs it: a wheel, not this checkout.

The rest of the suite imports the editable install, which maps the repo's folders directly and
so cannot notice a subpackage missing from the wheel. Here the wheel is built, installed
non-editable (with only its base dependencies) into a fresh virtual environment, and every
console script is run from a directory outside the checkout: `--help` of each, one real
conversion of a timm checkpoint (a .safetensors file, which needs no PyTorch), one predict
and the export command without its extra.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, **kw)


def _ok(result):
    assert result.returncode == 0, f"{result.args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin dir, wheel path, a working directory outside the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the files git knows (committed or not, never ignored): a stale
    # build/ folder in the checkout could otherwise put deleted modules into the wheel.
    listed = _ok(_run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO))
    tree = root / "src"
    for name in filter(None, listed.stdout.split("\0")):
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    _ok(_run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(root / "dist"), str(tree)],
             cwd=root))
    (wheel,) = (root / "dist").glob("flax_effnet-*.whl")
    venv = root / "venv"
    _ok(_run([sys.executable, "-m", "venv", str(venv)], cwd=root))
    _ok(_run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              str(wheel)], cwd=root))
    work = root / "user"
    work.mkdir()
    return venv / "bin", wheel, work


def test_wheel_holds_every_package(installed):
    """Every folder with an __init__.py under the packaged roots is in the wheel."""
    _, wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    roots = {"flax_effnet": "flax_effnet", "train": "flax_effnet/train", "convert": "flax_effnet/convert",
             "infer": "flax_effnet/infer", "export": "flax_effnet/export"}
    expected = [
        f"{installed_as}/{init.parent.relative_to(REPO / folder).as_posix()}/__init__.py".replace("/./", "/")
        for folder, installed_as in roots.items()
        for init in (REPO / folder).rglob("__init__.py")
    ]
    missing = [e for e in expected if e not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert "flax_effnet/data/imagenet_classes.txt" in names


def test_console_scripts_help(installed):
    bin_dir, _, work = installed
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name in scripts:
        out = _ok(_run([str(bin_dir / name), "--help"], cwd=work))
        assert "usage:" in out.stdout, name


def test_convert_and_predict(installed, torchvision_ops):
    """A timm b0 checkpoint -> weights directory -> predict, all from the installed wheel."""
    import timm
    import torch
    from safetensors.torch import save_file

    bin_dir, _, work = installed
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", num_classes=7).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(work / "efficientnet_b0.safetensors"))
    out = _ok(_run([str(bin_dir / "convert_torch_weights"), "efficientnet_b0.safetensors", "-o", "b0_flax"], cwd=work))
    assert "timm EfficientNet-B0" in out.stdout, out.stdout
    assert (work / "b0_flax" / "config.json").exists()

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(work / "photo.jpg")
    out = _ok(_run([str(bin_dir / "predict_efficientnet"), "b0_flax", "photo.jpg", "--top-k", "3", "--json"],
                   cwd=work))
    (prediction,) = json.loads(out.stdout)["predictions"]
    assert prediction["path"] == "photo.jpg" and len(prediction["top_k"]) == 3
    probs = [c["probability"] for c in prediction["top_k"]]
    assert probs == sorted(probs, reverse=True) and 0.0 < sum(probs) <= 1.0 + 1e-6

    # Export is an extra: without it the command names what to install, before any work.
    for to, needs in (("stablehlo", "flatbuffers"), ("onnx", "jax2onnx")):
        out = _run([str(bin_dir / "export_efficientnet"), "b0_flax", "--to", to, "-o", f"b0.{to}"], cwd=work)
        assert out.returncode == 2 and needs in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert "flax-effnet[export]" in out.stderr and not (work / f"b0.{to}").exists()


def test_base_install_has_no_torch_and_trainer_says_what_to_install(installed):
    """The base install pulls no PyTorch, and the trainer, whose extra is not installed, names
    the extra instead of printing a traceback."""
    bin_dir, _, work = installed
    out = _run([str(bin_dir / "python"), "-c", "import torch"], cwd=work)
    assert out.returncode != 0
    out = _run([str(bin_dir / "train_efficientnet"), "--num-steps", "1"], cwd=work)
    assert out.returncode == 2, out.stderr
    assert "pip install 'flax-effnet[train]'" in out.stderr and "Traceback" not in out.stderr


def test_train_extra_does_not_pull_torch(installed):
    """Resolving the trainer's extra never selects torch (PyPI's torch is a multi-GB CUDA build)."""
    bin_dir, wheel, work = installed
    out = _ok(_run([str(bin_dir / "python"), "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                    f"{wheel}[train]"], cwd=work))
    names = {item["metadata"]["name"].lower() for item in json.loads(out.stdout)["install"]}
    assert "grain" in names and "tensorflow-datasets" in names  # (optax, orbax: flax has them)
    assert not names & {"torch", "torchvision", "nvidia-cudnn-cu12", "nvidia-cublas-cu12"}, names
