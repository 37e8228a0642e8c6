"""benchmarks/peers.py: the calibrated peer must be well conditioned at any benchmark batch,
or the benchmark's 1e-4 logits check fails on float32 rounding alone."""

import copy
import os
import sys

import numpy as np
import torch

from flax_effnet.convert.verify import import_torchvision

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)  # as the benchmark scripts import it
import peers  # noqa: E402


def test_calibration_from_one_small_image_keeps_float32_logits_exact():
    """One 64 px image alone gives the last stages' BN 4 values per channel: logits ~2,000 and
    float32 within 0.7 of float64. Topped up to CALIBRATION_IMAGES, float32 stays within 1e-4."""
    import_torchvision()
    torch.manual_seed(0)
    model = peers.build_peer("timm", "b0", 64).model
    x = torch.randn(1, 3, 64, 64)
    peers.calibrate_(model, x)
    model.eval()
    assert not model.training
    with torch.no_grad():
        y32 = model(x).numpy()
        y64 = copy.deepcopy(model).double()(x.double()).numpy()
    assert np.abs(y64).max() < 50
    np.testing.assert_allclose(y32, y64, atol=1e-4, rtol=0)
    # the calibration batch's statistics, not PyTorch's defaults, are what BN now holds
    bn = model.bn1
    assert bn.num_batches_tracked == 1 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
