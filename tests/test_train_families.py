"""The trainer with any family: `--model NAME` builds a registered model, `--pretrained DIR`
fine-tunes any family, and the seed-002 recipe (features frozen, a new head) trains only the
head of a MobileNetV2."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util
from infer_helpers import random_variables

from flax_effnet import MobileNetV1, MobileNetV2, Preprocessing, ReXNet, save_pretrained
from flax_effnet.pretrained import load_pretrained_full
from flax_effnet.train import config as config_lib, loop
from train_testutil import enable_compilation_cache, small_patterns

enable_compilation_cache()


def test_model_flag_takes_resolution_and_crop_from_the_registry():
    c = config_lib.make_config(model="rexnetr_200", data_dir="/data/flowers")
    assert (config_lib.image_size(c), config_lib.crop_pct(c)) == (224, 0.95)
    assert c.workdir == "runs/flowers-rexnetr_200"
    c = config_lib.make_config(model="mobilenetv1_100", image_size=160, crop_pct=1.0)
    assert (config_lib.image_size(c), config_lib.crop_pct(c)) == (160, 1.0)


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(model="resnet50"), "--model must be a registered model .*mobilenetv2_100"),
        (dict(model="rexnet_100", padding="same"), "--model rexnet_100 fixes the architecture; --padding"),
        (dict(model="rexnet_100", pretrained="w"), "--model and --pretrained both name the architecture"),
    ],
)
def test_model_flag_errors(flags, message):
    with pytest.raises(ValueError, match=message):
        config_lib.make_config(**flags)


def test_build_model_for_registered_models():
    c = config_lib.make_config(model="rexnet_130", data_dir="/data", dropout_rate=0.3, drop_path_rate=0.1, bn_momentum=0.95)
    model, prep, pretrained, _ = loop.build_model(c, 7)
    assert isinstance(model, ReXNet) and pretrained is None
    assert (model.width, model.num_classes, model.dropout_rate, model.drop_path_rate) == (1.3, 7, 0.3, 0.1)
    assert (model.padding, model.bn_epsilon, model.bn_momentum) == ("symmetric", 1e-5, 0.95)
    assert prep.input_size == 224 and loop.describe(model) == "ReXNet rexnet_130"
    # No shortcuts, so no stochastic depth; the default dropout is the model's.
    model, *_ = loop.build_model(config_lib.make_config(model="mobilenetv1_100h", data_dir="/data"), 3)
    assert isinstance(model, MobileNetV1) and model.head_conv and model.dropout_rate == 0.2


def test_seed002_recipe_trains_only_a_new_head(tmp_path_factory, tmp_path):
    """`--preset seed002 --pretrained DIR`: a MobileNetV2 (random weights standing in for a
    converted torchvision one) gets a new 6-class head; everything else keeps its weights."""
    pretrained = MobileNetV2(width=0.35, depth=0.3, num_classes=1000)
    variables = random_variables(pretrained, 32)
    save_pretrained(tmp_path / "mnv2", pretrained, variables, Preprocessing(224, 0.875, "bilinear"))
    data = small_patterns(tmp_path_factory.mktemp("data"), train=16, val=4)
    config = config_lib.make_config(
        "seed002", data_dir=str(data), workdir=str(tmp_path / "run"), pretrained=str(tmp_path / "mnv2"),
        image_size=32, num_steps=3, num_workers=0, progress_bar=False, log_every_steps=1,
    )
    assert (config.freeze_backbone, config.optimizer, config.ema_decay) == (True, "adamw", 0.0)
    summary = loop.train_and_evaluate(config)
    assert summary["steps"] == 3 and summary["exported_weights"] == "raw"

    exported = load_pretrained_full(tmp_path / "run" / "export")
    assert exported.model == pretrained.clone(num_classes=6)
    assert exported.preprocessing.interpolation == "bilinear"  # the pretrained weights' normalisation
    before = traverse_util.flatten_dict(jax.device_get(variables["params"]), sep="/")
    after = traverse_util.flatten_dict(exported.variables["params"], sep="/")
    head = {k for k in after if k.startswith("classifier/")}
    assert head == {"classifier/kernel", "classifier/bias"} and after["classifier/kernel"].shape[-1] == 6
    for k in after.keys() - head:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    # Train mode still updates BatchNorm statistics, as in the seed (net.train()).
    stats = exported.variables["batch_stats"]["stem"]["bn"]["mean"]
    assert not np.allclose(stats, variables["batch_stats"]["stem"]["bn"]["mean"])
    log = (tmp_path / "run" / "config.json").read_text()
    assert json.loads(log)["pretrained"] == str(tmp_path / "mnv2")
