"""EfficientDet's module: effdet's parameter count for every variant, the golden param tree, the
BiFPN node order, torch's nearest index rule, the output layout and train mode, and saving and
loading a weights directory. Outputs against effdet itself are in test_convert_effdet.py."""

import functools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flax_effnet import EfficientDet, create_model, list_models, load_pretrained, model_entry, save_pretrained
from flax_effnet.detection import AnchorSpec
from flax_effnet.efficientdet import bifpn_nodes, max_pool_to, nearest_indices, upsample_nearest

GOLDEN = Path(__file__).parent / "golden" / "tf_efficientdet_d0_params.json"

# 90 classes; effdet 0.4.1 (issue 14's table, shared/research/seed-family.md section 3.2).
PARAM_COUNTS = {
    "tf_efficientdet_d0": 3_880_067, "tf_efficientdet_d1": 6_625_898,
    "tf_efficientdet_d2": 8_097_039, "tf_efficientdet_d3": 12_032_296,
    "tf_efficientdet_d4": 20_723_675, "tf_efficientdet_d5": 33_653_315,
    "tf_efficientdet_d6": 51_871_782, "tf_efficientdet_d7": 51_871_782,
    "tf_efficientdet_d7x": 77_147_166,
    "efficientdet_d0": 3_877_763, "efficientdet_d1": 6_622_026,
}  # fmt: skip
# What `create_model(name, num_classes=3, ...)` builds in the contract: a small trainable detector.
TINY = dict(num_classes=3, fpn_channels=32, fpn_cell_repeats=2, box_class_repeats=2)


def shapes_of(model, hw=(128, 128)):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *hw, 3)))


def test_every_variant_is_registered():
    assert set(list_models("*efficientdet*")) == set(PARAM_COUNTS)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_equals_effdet(name):
    # 'conv' depthwise traces one op per conv, not k*k: the same params, a quarter of the time.
    model = create_model(name, depthwise_impl="conv")
    size = 2 ** model.anchors.max_level  # the smallest input every level exists for
    params = shapes_of(model, (size, size))["params"]
    assert sum(x.size for x in jax.tree.leaves(params)) == PARAM_COUNTS[name]


def test_variant_settings():
    d7, d7x, pt = (create_model(n) for n in ("tf_efficientdet_d7", "tf_efficientdet_d7x", "efficientdet_d1"))
    assert (d7.fusion, d7.anchors.anchor_scale, d7.backbone) == ("sum", 5.0, "b6")
    assert (d7x.anchors.max_level, d7x.backbone) == (8, "b7")
    assert (pt.padding, pt.redundant_bias, pt.backbone_bn_epsilon, pt.bn_epsilon) == ("symmetric", False, 1e-5, 1e-3)
    prep = model_entry("tf_efficientdet_d3").preprocessing
    assert (prep.input_size, prep.crop_pct) == (896, 1.0)


def test_golden_param_tree():
    """Param paths are a checkpoint format: renaming a module must be a deliberate act."""
    flat = traverse_util.flatten_dict(shapes_of(create_model("tf_efficientdet_d0")), sep="/")
    actual = {k: list(v.shape) for k, v in sorted(flat.items())}
    assert actual == json.loads(GOLDEN.read_text())


def test_bifpn_node_order_is_effdets():
    """effdet's `bifpn_config(3, 7)` (= TF automl); D7x's P3-P8 cell has 10 nodes."""
    assert bifpn_nodes(5) == (
        (3, (3, 4)), (2, (2, 5)), (1, (1, 6)), (0, (0, 7)),
        (1, (1, 7, 8)), (2, (2, 6, 9)), (3, (3, 5, 10)), (4, (4, 11)),
    )  # fmt: skip
    assert len(bifpn_nodes(6)) == 10 and bifpn_nodes(6)[-1] == (5, (5, 14))


def test_nearest_upsampling_uses_torchs_index_rule():
    """floor(i * in / out): for 3 -> 5 rows 0,0,1,1,2, where half-pixel centres
    (`jax.image.resize`) give 0,1,1,2,2."""
    np.testing.assert_array_equal(nearest_indices(3, 5), [0, 0, 1, 1, 2])
    x = jnp.arange(6.0).reshape(1, 3, 2, 1)
    y = upsample_nearest(x, (5, 4))
    np.testing.assert_array_equal(y[0, :, :, 0], [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3], [4, 4, 5, 5]])
    resized = jax.image.resize(x, (1, 5, 4, 1), "nearest")
    assert not np.array_equal(resized, y)


@pytest.mark.parametrize("padding, expected", [("same", [[10, 11], [14, 15]]), ("symmetric", [[5, 7], [13, 15]])])
def test_max_pool_padding(padding, expected):
    """3x3/2 max-pool of a 4x4 ramp of negative values: SAME pads bottom/right, symmetric both
    sides, and the padding never wins (it is -inf, not 0)."""
    x = (jnp.arange(16.0) - 100).reshape(1, 4, 4, 1)
    y = max_pool_to(x, (2, 2), padding)
    np.testing.assert_array_equal(y[0, :, :, 0] + 100, expected)


def test_output_layout_train_mode_and_class_prior():
    """Per level P3-P7 of a non-square input: NHWC, anchors * classes and anchors * 4 channels,
    float32 (also under bf16 compute); train mode updates every BN's statistics; the class
    head's bias starts at effdet's prior -log(99)."""
    model = create_model("tf_efficientdet_d0", **TINY)
    x = jax.ShapeDtypeStruct((2, 128, 256, 3), jnp.float32)
    variables = shapes_of(model, (128, 256))
    cls, box = jax.eval_shape(model.apply, variables, x)
    assert [c.shape for c in cls] == [(2, 128 // s, 256 // s, 9 * 3) for s in (8, 16, 32, 64, 128)]
    assert [b.shape for b in box] == [(2, 128 // s, 256 // s, 9 * 4) for s in (8, 16, 32, 64, 128)]
    bf16 = jax.eval_shape(model.clone(dtype=jnp.bfloat16).apply, variables, x)
    assert all(o.dtype == jnp.float32 for o in jax.tree.leaves(bf16))
    train = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    _, updates = jax.eval_shape(functools.partial(train, rngs={"drop_path": jax.random.key(0)}), variables, x)
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    heads = variables["params"]["class_net"]
    assert {f"bn_rep_{r}_{level}" for r in range(2) for level in range(5)} <= set(heads)

    from flax_effnet.convert.formats.effdet import new_class_predict

    bias = new_class_predict(model, 3)["params/class_net/predict/conv_pw/bias"]
    np.testing.assert_allclose(bias, -math.log(99.0), rtol=1e-6)


def test_class_bias_prior_of_the_model_init():
    """The model's own init, jitted for the one leaf (XLA drops the rest of the network)."""
    model = create_model("tf_efficientdet_d0", **TINY)
    x = jnp.zeros((1, 128, 128, 3))
    bias = jax.jit(lambda k: model.init(k, x)["params"]["class_net"]["predict"]["conv_pw"]["bias"])(
        jax.random.key(0)
    )
    np.testing.assert_allclose(bias, np.full((27,), -math.log(99.0)), rtol=1e-6)


def test_rejects_pyramids_not_starting_at_p3():
    model = EfficientDet(anchors=AnchorSpec(min_level=2))
    with pytest.raises(ValueError, match="starts at P3"):
        shapes_of(model)


def test_weights_directory_round_trip(tmp_path):
    """config.json names the family and every field, AnchorSpec included, and builds the same
    model back (levels P3-P8 and another anchor scale, so the anchors are not the default)."""
    from flax_effnet.pretrained import model_config

    model = create_model("tf_efficientdet_d0", num_classes=4, anchors=AnchorSpec(max_level=8, anchor_scale=3.5))
    flat = traverse_util.flatten_dict(shapes_of(model, (256, 256)), sep="/")
    variables = traverse_util.unflatten_dict({k: np.zeros(v.shape, v.dtype) for k, v in flat.items()}, sep="/")
    prep = model_entry("tf_efficientdet_d0").preprocessing
    save_pretrained(tmp_path / "det", model, variables, prep, class_names=["a", "b", "c", "d"])
    config = json.loads((tmp_path / "det" / "config.json").read_text())
    assert config["model"]["family"] == "efficientdet"
    assert config["model"]["anchors"] == {
        "min_level": 3, "max_level": 8, "num_scales": 3,
        "aspect_ratios": [[1.0, 1.0], [1.4, 0.7], [0.7, 1.4]], "anchor_scale": 3.5,
    }  # fmt: skip
    loaded, loaded_vars = load_pretrained(tmp_path / "det")
    assert isinstance(loaded, EfficientDet) and model_config(loaded) == model_config(model)
    assert loaded.anchors == model.anchors
    assert traverse_util.flatten_dict(loaded_vars, sep="/").keys() == flat.keys()
