"""Checkpoint files of the MobileNet and ReXNet families through `convert_torch_weights`: the
weights directory names the family and loads back as that family, `--verify` runs the real
PyTorch model, `--model` checks one registered model's table, failures leave nothing behind."""

import json

import numpy as np
import pytest
import torch

import convert_refs as R

# Seed 003's SiLU is a `@torch.jit.script` function, which torch 2.13 deprecates at import.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
from flax_effnet import ReXNetLite, load_pretrained
from flax_effnet.convert.cli import main


def _cli(*args) -> int:
    return main([str(a) for a in args])


def test_seed003_lite_file_to_weights_directory(tmp_path, capsys):
    from seed003_rexnetv1_lite import ReXNetV1_lite

    m = ReXNetV1_lite(multiplier=1.0, classes=4)
    R.randomize(m, R.image(R.ODD))
    src = tmp_path / "rexnet_lite_1.0.pth"
    torch.save(m.state_dict(), src)
    assert _cli(src, "-o", tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "seed003_lite rexnet_lite_100 (family rexnet_lite, model rexnet_lite_100)" in out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model"]["family"] == "rexnet_lite" and config["model"]["num_classes"] == 4
    assert (
        config["source"]["format"] == "seed003_lite"
        and config["source"]["model_name"] == "rexnet_lite_100"
    )
    model, variables = load_pretrained(tmp_path / "out")
    assert isinstance(model, ReXNetLite) and model.width == 1.0
    assert variables["params"]["classifier"]["kernel"].shape == (1024, 4)


def test_verify_runs_timm_rexnet(tmp_path, capsys, torchvision_ops):
    import timm

    m = timm.create_model("rexnet_100")
    R.randomize(m, R.image(R.ODD))
    src = tmp_path / "rexnet.pth"
    torch.save({"state_dict": m.state_dict(), "arch": "rexnet_100"}, src)
    assert _cli(src, "-o", tmp_path / "out", "--verify", "--verify-size", R.ODD) == 0
    out = capsys.readouterr().out
    assert "verify vs timm.models.rexnet.RexNet at 33x33" in out and "top-1 agrees" in out
    diff = float(out.split("max |logit diff| ")[1].split(",")[0])
    assert diff < R.TOLERANCE
    assert (tmp_path / "out" / "config.json").exists()


def test_verify_runs_torchvision_mobilenet_v2(torchvision_ops):
    import torchvision

    from flax_effnet.convert import convert_state_dict
    from flax_effnet.convert.verify import verify

    m = torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=3)
    R.randomize(m, R.image(R.ODD))
    tensors = {k: v.numpy() for k, v in m.state_dict().items()}
    model, variables, info = convert_state_dict(tensors)
    result = verify(tensors, model.clone(depthwise_impl="conv"), variables, info, input_size=R.ODD)
    assert result.reference.endswith("MobileNetV2") and len(result.stage_diffs) == 7
    assert result.max_logit_diff < R.TOLERANCE and result.top1_agree


def test_model_flag_checks_one_table_and_wrong_ones_fail_cleanly(tmp_path, capsys):
    from seed002_mobilenetv2 import MobileNetV2 as Seed002

    src = tmp_path / "MobileNetV2.pth"
    torch.save(Seed002(num_classes=5, alpha=1.0).state_dict(), src)
    assert _cli(src, "-o", tmp_path / "a", "--model", "mobilenetv2_100") == 0
    assert "model mobilenetv2_100 given by the caller" in capsys.readouterr().out
    assert _cli(src, "-o", tmp_path / "b", "--model", "mobilenetv2_140") == 1
    err = capsys.readouterr().err
    assert (
        "wrong shapes" in err
        and "features.0.0.weight': expected shape (48, 3, 3, 3), found (32, 3, 3, 3)" in err
    )
    assert _cli(src, "-o", tmp_path / "c", "--model", "rexnet_100") == 1
    assert "'rexnet_100' is a rexnet model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MobileNetV2.pth", "a"]


@pytest.mark.parametrize("num_classes", [5, 0])
def test_num_classes_replaces_a_conv_classifier(tmp_path, num_classes):
    from seed003_rexnetv1 import ReXNetV1

    src = tmp_path / "rexnetv1_1.0.pth"
    torch.save(ReXNetV1(width_mult=1.0).state_dict(), src)
    assert _cli(src, "-o", tmp_path / "out", "--num-classes", num_classes) == 0
    model, variables = load_pretrained(tmp_path / "out")
    assert model.num_classes == num_classes
    if num_classes:
        kernel = np.asarray(variables["params"]["classifier"]["kernel"])
        assert kernel.shape == (1280, 5) and np.abs(kernel).max() > 0
    else:
        assert "classifier" not in variables["params"]
