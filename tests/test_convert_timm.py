"""timm efficientnet_bX and tf_efficientnet_bX -> Flax, against the real timm code.

The two kinds hold identical tensors; the converter tells them apart only by hints (here the
architecture name, as timm's checkpoints carry it in 'arch') and says what it assumed without one.
"""

import functools

import pytest

import convert_refs as R


@functools.lru_cache(maxsize=1)
def _timm_model(name):
    from conftest import register_torchvision_ops

    register_torchvision_ops()
    import timm

    return timm.create_model(name)


@pytest.mark.parametrize("size", [R.ODD, R.EVEN])
@pytest.mark.parametrize("variant", R.VARIANTS)
@pytest.mark.parametrize("tf", [False, True], ids=["timm", "timm_tf"])
def test_timm_logits_match(tf, variant, size):
    name = ("tf_" if tf else "") + f"efficientnet_{variant}"
    m = _timm_model(name)
    expect = dict(
        format="timm_tf" if tf else "timm",
        variant=variant,
        padding="same" if tf else "symmetric",
        bn_epsilon=1e-3 if tf else 1e-5,
        bn_momentum=0.9,
    )
    result = R.check_conversion(m, list(m.blocks), R.image(size), expect, hints=[name])
    assert any(name in note for note in result["info"].notes), result["info"].notes
    R.assert_equivalent(result, f"timm {name} at {size}px")


def test_timm_kind_without_hint_is_assumed_and_said():
    from flax_effnet.convert import convert_state_dict

    m = _timm_model("efficientnet_b0")
    _, _, info = convert_state_dict(m.state_dict())
    assert info.format == "timm"
    assert any("ASSUMED" in n and "--format timm_tf" in n for n in info.notes)
    _, _, info = convert_state_dict(m.state_dict(), format="timm_tf")
    assert info.format == "timm_tf" and info.padding == "same"
