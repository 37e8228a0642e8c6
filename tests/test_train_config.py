"""Config: presets per variant, every field overridable from the command line, saved as JSON."""

import dataclasses

import pytest

from flax_effnet.train import config as config_lib


def test_default_is_the_builtin_patterns_run():
    c = config_lib.parse_args([])
    assert c.data_dir == "" and c.variant == "tiny" and config_lib.image_size(c) == 64
    assert c.workdir == "runs/patterns-tiny"


def test_image_folder_defaults_to_b0_preset():
    c = config_lib.parse_args(["--data-dir", "/data/flowers"])
    assert (c.variant, config_lib.image_size(c), c.dropout_rate) == ("b0", 224, 0.2)
    assert config_lib.crop_pct(c) == pytest.approx(224 / 256)
    assert c.optimizer == "rmsprop" and c.workdir == "runs/flowers-b0"


@pytest.mark.parametrize("name,size,dropout", [("b3", 300, 0.3), ("b7", 600, 0.5)])
def test_variant_presets(name, size, dropout):
    c = config_lib.parse_args(["--preset", name, "--data-dir", "x"])
    assert (c.variant, c.image_size, c.dropout_rate) == (name, size, dropout)
    assert config_lib.crop_pct(c) == pytest.approx(size / (size + 32))


def test_every_field_overridable():
    c = config_lib.parse_args([
        "--preset", "b2", "--batch-size", "32", "--no-hflip", "--mean", "0.5,0.5,0.5",
        "--optimizer", "sgd", "--learning-rate", "0.1", "--image-size", "128", "--freeze-backbone",
    ])
    assert c.batch_size == 32 and c.hflip is False and c.mean == (0.5, 0.5, 0.5)
    assert c.optimizer == "sgd" and c.learning_rate == 0.1 and c.image_size == 128 and c.freeze_backbone
    parser = config_lib.build_parser()
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(config_lib.Config)} <= flags


def test_unknown_fields_and_presets_rejected():
    with pytest.raises(ValueError, match="unknown config fields"):
        config_lib.make_config("b0", not_a_field=1)
    with pytest.raises(SystemExit):
        config_lib.parse_args(["--preset", "b9"])


def test_config_roundtrip(tmp_path):
    c = config_lib.parse_args(["--preset", "b1", "--seed", "7"])
    config_lib.save_config(c, tmp_path / "config.json")
    assert config_lib.load_config(tmp_path / "config.json") == c


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset", "imagenet2012"], "write tfds:imagenet2012"),  # was an IndexError
        (["--checkpoint-every-steps", "0"], "--checkpoint-every-steps must be at least 1"),  # ZeroDivisionError
        (["--workdir", "gs://bucket/run"], "is a URL"),  # silently became ./gs:/bucket/run
        (["--batch-size", "-4"], "--batch-size must be at least 1"),
        (["--optimizer", "adam"], "--optimizer must be one of rmsprop, sgd, adamw"),
        (["--ema-decay", "1.5"], "--ema-decay must be in [0, 1)"),
        (["--mean", "0.5,0.5"], "--mean and --std take three values"),
        (["--variant", "b9"], "--variant must be one of"),
        (["--num-workers", "-1"], "--num-workers must not be negative"),
    ],
)
def test_bad_flags_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        config_lib.parse_args(flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_all_problems_are_named_at_once():
    with pytest.raises(ValueError) as e:
        config_lib.make_config("b0", batch_size=0, log_every_steps=0, workdir="s3://x/y")
    for message in ("--batch-size must be", "--log-every-steps must be", "is a URL"):
        assert message in str(e.value)
