"""efficientnet_pytorch (lukemelas) -> Flax, against the real package.

Its SAME padding is frozen at build time (`image_size`), so each model is built for, and run
at, 64 px: even at all five stride-2 convs, where SAME differs from symmetric padding.
"""

import pytest

import convert_refs as R
from flax_effnet.convert.verify import last_block_indices


def _model(variant, size):
    from efficientnet_pytorch import EfficientNet

    m = EfficientNet.from_name(f"efficientnet-{variant}", image_size=size)
    return m, [m._blocks[i] for i in last_block_indices(variant)]


@pytest.mark.parametrize("variant", R.VARIANTS)
def test_efficientnet_pytorch_logits_match(variant):
    m, stages = _model(variant, R.EVEN)
    expect = dict(format="efficientnet_pytorch", variant=variant, padding="same", bn_epsilon=1e-3, bn_momentum=0.99)
    result = R.check_conversion(m, stages, R.image(R.EVEN), expect)
    R.assert_equivalent(result, f"efficientnet_pytorch {variant}")


def test_wrong_eps_or_padding_would_fail():
    """The equivalence check can fail: the same weights with TF's eps swapped for torch's, or
    SAME swapped for symmetric padding, miss the tolerance by orders of magnitude."""
    from flax_effnet.convert import convert_state_dict

    m, stages = _model("b0", R.EVEN)
    x = R.image(R.EVEN)
    R.randomize(m, x)
    model, variables, _ = convert_state_dict(m.state_dict())
    model = model.clone(depthwise_impl="conv")
    for wrong in (dict(bn_epsilon=1e-5), dict(padding="symmetric")):
        result = R.compare(m, stages, model.clone(**wrong), variables, x)
        assert result["logit_diff"] > 100 * R.TOLERANCE, (wrong, result["logit_diff"])
