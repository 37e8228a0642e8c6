"""EfficientNet formats: the key tables fill exactly the Flax model's leaves, and detection
identifies b0-b7 (the other families: test_convert_table_families.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_effnet import EfficientNet, scale_network
from flax_effnet.convert.detect import detect_variant, variant_signature
from flax_effnet.convert.formats import EFFICIENTNET_FORMATS as FORMATS, key_table


@pytest.mark.parametrize("variant", ["b0", "b7"])
def test_table_covers_every_flax_leaf_once(variant):
    shapes = jax.eval_shape(
        lambda: EfficientNet(variant, num_classes=1000).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    )
    want = {
        "/".join(k.key for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
    }
    net = scale_network(variant)
    for fmt in FORMATS.values():
        rows = key_table(fmt, net, fmt.classifier[0], 1000)
        got = {r.flax_path: r.flax_shape for r in rows}
        assert len(got) == len(rows), f"{fmt.name}: a Flax leaf appears twice"
        assert got == want, f"{fmt.name}: {set(got) ^ set(want)}"
        assert len({r.torch_key for r in rows}) == len(rows), f"{fmt.name}: a torch key used twice"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_variant_detected_from_shapes(fmt):
    """Every variant's own table, read back as a state_dict of shapes, is detected as itself."""
    f = FORMATS[fmt]
    for variant in ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"):
        shapes = {r.torch_key: r.torch_shape for r in key_table(f, scale_network(variant), f.classifier[0], 10)}
        assert detect_variant(f, shapes) == variant


def test_signatures_are_distinct():
    sigs = [variant_signature(v) for v in ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")]
    assert len(set(sigs)) == len(sigs)


def test_layout_transposes():
    from flax_effnet.convert import layout

    w = np.arange(2 * 3 * 5 * 5).reshape(2, 3, 5, 5)
    assert layout.conv_kernel(w)[4, 1, 2, 0] == w[0, 2, 4, 1]
    dw = np.arange(4 * 9).reshape(4, 1, 3, 3)
    assert layout.depthwise_kernel(dw).shape == (3, 3, 1, 4) and layout.depthwise_kernel(dw)[2, 0, 0, 3] == dw[3, 0, 2, 0]
    se = np.arange(6).reshape(3, 2, 1, 1)
    assert layout.pointwise_to_dense(se).shape == (2, 3) and layout.pointwise_to_dense(se)[1, 2] == se[2, 1, 0, 0]
    lin = np.arange(6).reshape(3, 2)
    assert layout.linear_kernel(lin)[1, 2] == lin[2, 1]


def _zeros_state_dict(fmt, variant, num_classes=10):
    f = FORMATS[fmt]
    rows = key_table(f, scale_network(variant), f.classifier[0], num_classes)
    return {r.torch_key: np.zeros(r.torch_shape, np.float32) for r in rows}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_numpy_state_dict_converts_with_hints(fmt):
    """convert_state_dict takes numpy arrays too (no torch needed for in-memory conversion)."""
    from flax_effnet.convert import convert_state_dict

    hints = ["tf_efficientnet_b0"] if fmt == "timm_tf" else []
    model, variables, info = convert_state_dict(_zeros_state_dict(fmt, "b0"), hints=hints)
    assert (info.format, info.variant, model.num_classes) == (fmt, "b0", 10)
    assert variables["params"]["classifier"]["kernel"].shape == (1280, 10)


def test_unknown_variant_lists_signatures():
    from flax_effnet.convert import UnknownVariantError, convert_state_dict

    sd = {k: v for k, v in _zeros_state_dict("timm", "b0").items() if not k.startswith("blocks.5.3.")}
    with pytest.raises(UnknownVariantError) as e:
        convert_state_dict(sd, hints=["efficientnet_b0"])
    msg = str(e.value)
    assert "blocks per stage [1, 2, 2, 3, 3, 3, 1]" in msg and "b0: stem 32, head 1280" in msg


def test_missing_classifier_asks_for_num_classes():
    from flax_effnet.convert import KeyMismatchError, convert_state_dict

    sd = {k: v for k, v in _zeros_state_dict("seed004", "b0").items() if not k.startswith("fc.")}
    with pytest.raises(KeyMismatchError, match="--num-classes"):
        convert_state_dict(sd)
    model, variables, info = convert_state_dict(sd, num_classes=0)
    assert info.classifier == "none" and "classifier" not in variables["params"]
