"""The model registry (create_model / list_models / model_entry) and family-aware weights
directories: config.json names the family, every family loads back, version-1 directories
(EfficientNet only, no family) still load."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_effnet
from flax_effnet import EfficientNet, Preprocessing, create_model, list_models, model_entry
from flax_effnet.pretrained import NotAPretrainedDirError, load_pretrained_full, save_pretrained
from flax_effnet.registry import family_of, find_model_name, get_family

EFFNET_VARIANTS = [f"b{i}" for i in range(8)]

# The timm tag each EfficientNet entry takes its preprocessing from: the first tag with
# ImageNet mean/std (timm 1.0.31 default_cfgs).
TIMM_TAGS = {
    "efficientnet_b0": "ra_in1k", "efficientnet_b1": "ft_in1k", "efficientnet_b2": "ra_in1k",
    "efficientnet_b3": "ra2_in1k", "efficientnet_b4": "ra2_in1k",
    "efficientnet_b5": "sw_in12k_ft_in1k", "efficientnet_b6": "untrained",
    "efficientnet_b7": "untrained", "efficientnet_b8": "untrained", "efficientnet_l2": "untrained",
    **{f"tf_efficientnet_b{i}": "in1k" for i in range(6)},
    "tf_efficientnet_b6": "aa_in1k", "tf_efficientnet_b7": "aa_in1k",
    "tf_efficientnet_b8": "ra_in1k", "tf_efficientnet_l2": "ns_jft_in1k",
}  # fmt: skip


def test_efficientnet_is_registered_under_timm_names():
    names = set(list_models())
    assert {f"efficientnet_{v}" for v in EFFNET_VARIANTS} <= names
    assert {f"tf_efficientnet_{v}" for v in EFFNET_VARIANTS} <= names
    assert list_models("tf_efficientnet_b?") == [f"tf_efficientnet_b{i}" for i in range(9)]
    assert list_models("no_such_*") == []


@pytest.mark.parametrize(
    "name, padding, eps",
    [("efficientnet_b2", "symmetric", 1e-5), ("tf_efficientnet_b2", "same", 1e-3)],
)
def test_create_model_sets_the_named_fields_and_overrides(name, padding, eps):
    model = create_model(name, num_classes=7, dtype=jnp.bfloat16)
    assert isinstance(model, EfficientNet)
    assert (model.variant, model.padding, model.bn_epsilon) == ("b2", padding, eps)
    assert model.num_classes == 7 and model.dtype == jnp.bfloat16
    # The registry's model is the one the converter builds for timm's checkpoints.
    assert model.bn_momentum == 0.9
    assert find_model_name(model) == name


def test_unknown_names_and_fields_list_the_known_ones():
    with pytest.raises(
        ValueError, match="unknown model 'efficientnet_b9'.*efficientnet_b0.*tf_efficientnet_b7"
    ):
        create_model("efficientnet_b9")
    with pytest.raises(ValueError, match="no field.*widht.*known: variant, num_classes"):
        create_model("efficientnet_b0", widht=2)
    with pytest.raises(ValueError, match="unknown model family 'resnet'"):
        get_family("resnet")


def test_families_of_the_package():
    """`import flax_effnet` registers every family; a module maps back to its family."""
    assert family_of(EfficientNet("b0")).name == "efficientnet"
    assert family_of(EfficientNet).module is EfficientNet
    with pytest.raises(ValueError, match="not a registered model family"):
        family_of(flax_effnet.DropPath(0.1))


def test_preprocessing_is_timms_pretrained_cfg(torchvision_ops):
    from timm.models import get_pretrained_cfg

    checked = 0
    for name, tag in TIMM_TAGS.items():
        cfg = get_pretrained_cfg(f"{name}.{tag}")
        want = Preprocessing(
            cfg.input_size[-1], cfg.crop_pct, cfg.interpolation, tuple(cfg.mean), tuple(cfg.std)
        )
        assert model_entry(name).preprocessing == want, name
        checked += 1
    assert checked == len(list_models("*efficientnet_*"))


def _tiny_variables(model, size=32):
    """Random arrays of the model's variable shapes: eval_shape traces, compiles nothing."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def test_weights_directory_names_its_family_and_round_trips(tmp_path):
    model = create_model("efficientnet_b0", num_classes=3, dropout_rate=0.1)
    variables = _tiny_variables(model)
    out = save_pretrained(
        tmp_path / "w", model, variables, model_entry("efficientnet_b0").preprocessing
    )
    config = json.loads((out / "config.json").read_text())
    assert config["format_version"] == 2
    assert config["model"]["family"] == "efficientnet"
    assert config["model"]["variant"] == "b0" and config["model"]["num_classes"] == 3
    loaded = load_pretrained_full(out, depthwise_impl="conv")
    assert loaded.model == model.clone(depthwise_impl="conv")
    for a, b in zip(jax.tree.leaves(loaded.variables), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)


def test_custom_variant_spec_round_trips(tmp_path):
    spec = flax_effnet.VariantSpec("mine", 0.25, 0.25, 32, 0.1)
    model = EfficientNet(spec, num_classes=2)
    out = save_pretrained(tmp_path / "w", model, _tiny_variables(model), Preprocessing(32))
    assert load_pretrained_full(out).model.variant == spec


def test_version_1_directories_load_as_efficientnet(tmp_path):
    """What the code before the registry wrote: format_version 1, no family."""
    model = EfficientNet(flax_effnet.VariantSpec("v1dir", 0.25, 0.25, 32, 0.1), num_classes=2)
    out = save_pretrained(tmp_path / "w", model, _tiny_variables(model), Preprocessing(32))
    config = json.loads((out / "config.json").read_text())
    config["format_version"] = 1
    del config["model"]["family"]
    (out / "config.json").write_text(json.dumps(config))
    assert load_pretrained_full(out).model == model


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["model"].update(family="resnet"), "unknown model family 'resnet'"),
        (lambda c: c["model"].pop("family"), "no model family"),
        (lambda c: c["model"].update(width=2.0), "EfficientNet has no field.*width"),
        (lambda c: c.update(format_version=3), "format_version 3; this flax_effnet reads 1 and 2"),
    ],
)
def test_bad_model_configs_are_named(tmp_path, edit, message):
    model = EfficientNet(flax_effnet.VariantSpec("bad", 0.25, 0.25, 32, 0.1), num_classes=2)
    out = save_pretrained(tmp_path / "w", model, _tiny_variables(model), Preprocessing(32))
    config = json.loads((out / "config.json").read_text())
    edit(config)
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotAPretrainedDirError, match=message):
        load_pretrained_full(out)


@pytest.mark.parametrize("name", ["efficientnet_b0", "tf_efficientnet_b0"])
def test_converter_names_the_registered_model(name):
    """Conversion builds the registry's model: same fields, and ConversionInfo says which."""
    from flax_effnet.convert import convert_state_dict
    from flax_effnet.convert.formats import FORMATS, key_table
    from flax_effnet.specs import scale_network

    fmt = FORMATS["timm_tf" if name.startswith("tf_") else "timm"]
    state = {
        r.torch_key: np.zeros(r.torch_shape, np.float32)
        for r in key_table(fmt, scale_network("b0"), "classifier", 4)
    }
    model, _, info = convert_state_dict(state, format=fmt.name)
    assert (info.family, info.model_name) == ("efficientnet", name)
    assert model == create_model(name, num_classes=4)
    assert info.source()["model_name"] == name
