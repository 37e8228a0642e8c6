"""Files end to end: every container kind through the CLI and `load_pretrained`, and every bad
input giving its clear error and leaving no output behind."""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import convert_refs as R
from flax_effnet import load_pretrained
from flax_effnet.convert import (
    CheckpointReadError,
    KeyMismatchError,
    UnknownFormatError,
    UnsafeCheckpointError,
    convert_file,
    convert_state_dict,
)
from flax_effnet.convert.cli import main
from flax_effnet.pretrained import flatten_variables


@pytest.fixture(scope="module")
def b0():
    """A randomised torchvision b0 (regular weights) and a second state_dict standing in for EMA."""
    from conftest import register_torchvision_ops

    register_torchvision_ops()
    import torchvision

    m = torchvision.models.efficientnet_b0()
    R.randomize(m, R.image(R.EVEN))
    regular = {k: v.clone() for k, v in m.state_dict().items()}
    ema = {k: (v * 0.5 if v.is_floating_point() else v.clone()) for k, v in regular.items()}
    return m, regular, ema


def _flat(variables):
    return flatten_variables(variables)


def _assert_same_variables(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _no_leftovers(parent: Path, out: Path):
    assert not out.exists(), f"{out} left behind"
    assert not [p for p in parent.iterdir() if ".tmp-" in p.name], "temporary directory left behind"


def _cli(*args):
    return main([str(a) for a in args])


CONTAINERS = {
    "plain": lambda sd, ema: sd,
    "state_dict": lambda sd, ema: {"state_dict": sd, "epoch": 3},
    "model": lambda sd, ema: {"model": sd, "optimizer": {"lr": 0.1}},
    "module_prefix": lambda sd, ema: {f"module.{k}": v for k, v in sd.items()},
    "orig_mod_prefix": lambda sd, ema: {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}},
    "model_prefix": lambda sd, ema: {f"model.{k}": v for k, v in sd.items()},
    "fp16": lambda sd, ema: {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()},
}


@pytest.mark.parametrize("kind", sorted(CONTAINERS))
def test_container_round_trip_through_cli(b0, tmp_path, kind, capsys):
    _, regular, ema = b0
    src = tmp_path / "b0.pth"
    torch.save(CONTAINERS[kind](regular, ema), src)
    assert _cli(src, "-o", tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert "torchvision EfficientNet-B0" in printed
    model, variables = load_pretrained(tmp_path / "out")
    expected_sd = {k: (v.half().float() if kind == "fp16" and v.is_floating_point() else v) for k, v in regular.items()}
    _, want, _ = convert_state_dict(expected_sd)
    _assert_same_variables(variables, want)
    assert (model.variant, model.padding, model.bn_epsilon, model.num_classes) == ("b0", "symmetric", 1e-5, 1000)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["source"]["format"] == "torchvision" and len(config["source"]["sha256"]) == 64
    assert config["preprocessing"]["input_size"] == 224 and config["preprocessing"]["crop_pct"] == 0.875
    if "prefix" in kind:
        assert config["source"]["prefix"].endswith(".")
    if kind == "fp16":
        assert config["source"]["stored_dtypes"] == ["float16"]


def test_ema_container_needs_use_ema_and_regular_is_default(b0, tmp_path, capsys):
    _, regular, ema = b0
    both = tmp_path / "both.pth"
    torch.save({"state_dict": regular, "state_dict_ema": ema}, both)
    _, v_regular, info = convert_file(both)
    _, want_regular, _ = convert_state_dict(regular)
    _assert_same_variables(v_regular, want_regular)
    assert info.file["weights"] == "regular" and any("regular weights" in n for n in info.notes)
    assert any("--use-ema converts those" in n for n in info.notes)

    assert _cli(both, "-o", tmp_path / "ema_out", "--use-ema") == 0
    _, v_ema = load_pretrained(tmp_path / "ema_out")
    _, want_ema, _ = convert_state_dict(ema)
    _assert_same_variables(v_ema, want_ema)

    only_ema = tmp_path / "only_ema.pth"
    torch.save({"model_ema": ema}, only_ema)
    assert _cli(only_ema, "-o", tmp_path / "x") == 1
    assert "--use-ema" in capsys.readouterr().err
    _no_leftovers(tmp_path, tmp_path / "x")
    assert _cli(only_ema, "-o", tmp_path / "y", "--use-ema") == 0


def test_safetensors_with_neighbouring_timm_config(tmp_path):
    """timm ships model.safetensors + config.json naming the architecture (here tf_)."""
    from conftest import register_torchvision_ops
    from safetensors.torch import save_file

    register_torchvision_ops()
    import timm

    m = timm.create_model("tf_efficientnet_b0")
    R.randomize(m, R.image(R.EVEN))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "tf_efficientnet_b0", "num_classes": 1000}))
    assert _cli(tmp_path / "model.safetensors", "-o", tmp_path / "out") == 0
    model, variables = load_pretrained(tmp_path / "out")
    assert (model.padding, model.bn_epsilon) == ("same", 1e-3)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["source"]["file_kind"] == "safetensors"
    assert any("tf_efficientnet_b0" in n for n in config["source"]["notes"])
    # And the loaded model reproduces timm (default depthwise implementation, not the tests' 'conv').
    x = R.image(R.EVEN)
    result = R.compare(m, list(m.blocks), model, variables, x)
    R.assert_equivalent(result, "tf_efficientnet_b0 via safetensors + load_pretrained")


def test_timm_train_checkpoint_with_args_namespace(tmp_path):
    """timm's train script saves {'arch', 'args': Namespace, 'state_dict', 'state_dict_ema'}."""
    from conftest import register_torchvision_ops

    register_torchvision_ops()
    import timm

    sd = timm.create_model("tf_efficientnet_b1").state_dict()
    src = tmp_path / "checkpoint-12.pth.tar"
    torch.save({"epoch": 12, "args": argparse.Namespace(model="tf_efficientnet_b1", lr=0.1), "state_dict": sd}, src)
    _, _, info = convert_file(src, tmp_path / "out")
    assert (info.format, info.variant) == ("timm_tf", "b1")
    assert any("tf_efficientnet_b1" in n for n in info.notes)


def test_num_classes_replaces_or_drops_classifier(b0, tmp_path):
    _, regular, _ = b0
    src = tmp_path / "b0.pth"
    torch.save(regular, src)
    assert _cli(src, "-o", tmp_path / "ten", "--num-classes", "10") == 0
    model, variables = load_pretrained(tmp_path / "ten")
    assert model.num_classes == 10 and variables["params"]["classifier"]["kernel"].shape == (1280, 10)
    assert _cli(src, "-o", tmp_path / "backbone", "--num-classes", "0") == 0
    model, variables = load_pretrained(tmp_path / "backbone")
    assert not model.num_classes and "classifier" not in variables["params"]


def test_pickled_module_refused_unless_unsafe(b0, tmp_path, capsys):
    m, regular, _ = b0
    src = tmp_path / "whole_model.pth"
    torch.save(m, src)
    assert _cli(src, "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "executes Python code" in err and "--unsafe" in err and "state_dict()" in err
    _no_leftovers(tmp_path, tmp_path / "out")
    assert _cli(src, "-o", tmp_path / "out", "--unsafe") == 0
    _, variables = load_pretrained(tmp_path / "out")
    _assert_same_variables(variables, convert_state_dict(regular)[1])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_refused(tmp_path):
    src = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(src))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        convert_file(src, tmp_path / "out")
    _no_leftovers(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "truncated_safetensors"])
def test_corrupt_files_give_clear_errors(b0, tmp_path, damage, capsys):
    _, regular, _ = b0
    src = tmp_path / ("b0.safetensors" if damage == "truncated_safetensors" else "b0.pth")
    if damage == "truncated_safetensors":
        from safetensors.torch import save_file

        save_file(regular, str(src))
    else:
        torch.save(regular, src)
    data = src.read_bytes()
    src.write_bytes({"empty": b"", "garbage": os.urandom(4096)}.get(damage, data[: len(data) // 2]))
    with pytest.raises(CheckpointReadError) as e:
        convert_file(src, tmp_path / "out")
    assert str(src) in str(e.value)
    assert _cli(src, "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("truncated" in err or "empty" in err or "corrupt" in err)
    assert "weights_only" not in err  # never advise running code from a corrupt file
    _no_leftovers(tmp_path, tmp_path / "out")


def test_missing_file(tmp_path):
    assert _cli(tmp_path / "nope.pth", "-o", tmp_path / "out") == 1
    _no_leftovers(tmp_path, tmp_path / "out")


def test_unknown_format_lists_what_was_seen_and_supported(tmp_path, capsys):
    src = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, src)
    with pytest.raises(UnknownFormatError) as e:
        convert_file(src, tmp_path / "out")
    msg = str(e.value)
    assert "conv1 (1)" in msg and "2 tensors" in msg
    for name in ("torchvision", "timm_tf", "efficientnet_pytorch", "seed000", "seed004"):
        assert name in msg
    assert _cli(src, "-o", tmp_path / "out") == 1
    _no_leftovers(tmp_path, tmp_path / "out")


def test_missing_unexpected_and_misshaped_keys_are_named(b0, tmp_path, capsys):
    _, regular, _ = b0
    bad = dict(regular)
    del bad["features.3.0.block.1.0.weight"]
    bad["features.5.0.block.3.1.running_var"] = torch.ones(7)
    bad["features.9.0.weight"] = torch.ones(3)
    src = tmp_path / "bad.pth"
    torch.save(bad, src)
    with pytest.raises(KeyMismatchError) as e:
        convert_file(src, tmp_path / "out")
    msg = str(e.value)
    assert "'features.3.0.block.1.0.weight': expected shape (144, 1, 5, 5)" in msg
    assert "'features.5.0.block.3.1.running_var': expected shape (112,), found (7,)" in msg
    assert "'features.9.0.weight': shape (3,)" in msg
    assert "torchvision" in msg and "b0" in msg
    assert _cli(src, "-o", tmp_path / "out") == 1
    _no_leftovers(tmp_path, tmp_path / "out")


def test_wrong_variant_flag_reports_shapes(b0):
    _, regular, _ = b0
    with pytest.raises(KeyMismatchError, match=r"expected shape \(40, 3, 3, 3\), found \(32, 3, 3, 3\)"):
        convert_state_dict(regular, variant="b3")


def test_existing_output_is_kept(b0, tmp_path, capsys):
    _, regular, _ = b0
    src = tmp_path / "b0.pth"
    torch.save(regular, src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _cli(src, "-o", out) == 1
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()
    # --overwrite replaces only a weights directory: this one is the user's, and is kept.
    assert _cli(src, "-o", out, "--overwrite") == 1
    assert "not a flax_effnet weights directory" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_overwrite_of_the_current_directory_is_refused(b0, tmp_path, monkeypatch, capsys):
    """`-o . --overwrite` once emptied the working directory; now nothing in it is touched."""
    _, regular, _ = b0
    monkeypatch.chdir(tmp_path)
    torch.save(regular, "b0.pth")
    (tmp_path / "notes.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _cli("b0.pth", "-o", ".", "--overwrite") == 1
    assert "not a flax_effnet weights directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_overwrite_replaces_a_weights_directory_atomically(b0, tmp_path, capsys):
    _, regular, _ = b0
    src = tmp_path / "b0.pth"
    torch.save(regular, src)
    out = tmp_path / "out"
    assert _cli(src, "-o", out, "--num-classes", "3") == 0
    assert _cli(src, "-o", out, "--overwrite") == 0
    model, _ = load_pretrained(out)
    assert model.num_classes == 1000
    # No temporary or backup directory is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b0.pth", "out"]
    # A weights directory that also holds the user's files is not replaced either.
    (out / "README.md").write_text("mine")
    assert _cli(src, "-o", out, "--overwrite", "--num-classes", "3") == 1
    assert "README.md" in capsys.readouterr().err
    assert load_pretrained(out)[0].num_classes == 1000 and (out / "README.md").exists()


def test_verify_prints_logit_difference(b0, tmp_path, capsys):
    _, regular, _ = b0
    src = tmp_path / "b0.pth"
    torch.save(regular, src)
    assert _cli(src, "-o", tmp_path / "out", "--verify", "--verify-size", "64") == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("verify vs")][0]
    assert "top-1 agrees" in line
    diff = float(line.split("max |logit diff| ")[1].split(",")[0])
    assert diff <= R.TOLERANCE


def test_model_package_imports_without_torch():
    """flax_effnet itself never imports torch (it is the converter's optional dependency)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import flax_effnet, flax_effnet.pretrained\n"
        "assert 'flax_effnet.convert' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def tf_b0_state(torchvision_ops):
    import timm

    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in timm.create_model("tf_efficientnet_b0").state_dict().items()}


ADVPROP_CFG = {  # timm 1.0.31 tf_efficientnet_b0.ap_in1k, as the hub's config.json carries it
    "tag": "ap_in1k", "input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.875,
    "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "num_classes": 1000,
}


def test_preprocessing_comes_from_a_neighbouring_pretrained_cfg(tf_b0_state, tmp_path, capsys):
    """AdvProp weights expect mean = std = 0.5; the hub's config.json says so, and that wins."""
    from safetensors.torch import save_file

    from flax_effnet.infer.predict import Predictor

    save_file(tf_b0_state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(
        {"architecture": "tf_efficientnet_b0", "num_classes": 1000, "pretrained_cfg": ADVPROP_CFG}))
    assert _cli(tmp_path / "model.safetensors", "-o", tmp_path / "out") == 0
    assert f"timm pretrained_cfg in {tmp_path / 'config.json'}" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and config["preprocessing"]["std"] == [0.5, 0.5, 0.5]
    assert config["source"]["preprocessing_from"] == f"timm pretrained_cfg in {tmp_path / 'config.json'}"
    assert Predictor.load(tmp_path / "out").preprocessing.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("name, mean", [
    ("tf_efficientnet_b0.ap_in1k.pth", (0.5, 0.5, 0.5)),
    ("tf_efficientnet_b0_ap-f262efe1.pth", (0.5, 0.5, 0.5)),  # timm < 0.9 release file name
    ("tf_efficientnet_b0.ns_jft_in1k.pth", (0.485, 0.456, 0.406)),  # Noisy Student: ImageNet's
])
def test_advprop_tag_in_the_file_name_sets_its_normalisation(tf_b0_state, tmp_path, name, mean):
    torch.save(tf_b0_state, tmp_path / name)
    _, _, info = convert_file(tmp_path / name)
    assert info.format == "timm_tf" and info.preprocessing.mean == mean
    assert ("AdvProp" in info.preprocessing_source) == (mean == (0.5, 0.5, 0.5)), info.preprocessing_source


def test_bf16_safetensors_convert_without_torch_dtypes(tf_b0_state, tmp_path):
    """bf16 tensors are read through numpy (ml_dtypes), no torch needed, and become float32."""
    from safetensors.torch import save_file

    save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in tf_b0_state.items()},
              str(tmp_path / "tf_efficientnet_b0.safetensors"))
    _, variables, info = convert_file(tmp_path / "tf_efficientnet_b0.safetensors")
    assert info.file["stored_dtypes"] == ["bfloat16"]
    kernel = variables["params"]["stem"]["conv"]["kernel"]
    want = tf_b0_state["conv_stem.weight"].bfloat16().float().permute(2, 3, 1, 0).numpy()
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, want)
