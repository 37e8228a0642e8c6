"""`eval_transform` is timm's eval preprocessing, pixel for pixel.

The reference is torchvision's `Resize(floor(size / crop_pct), interpolation)` + `CenterCrop`
+ `ToTensor` + `Normalize` on a PIL image, which is what timm's `transforms_imagenet_eval`
builds, applied to fixed synthetic images of several aspect ratios.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from flax_effnet.preprocessing import INCEPTION_MEAN, INCEPTION_STD, Preprocessing
from flax_effnet.preprocessing import eval_transform, resize_center_crop


def _import_torchvision_transforms():
    """torchvision.transforms (its import needs the op schemas the converter registers)."""
    from flax_effnet.convert.verify import import_torchvision

    return import_torchvision().transforms


def fixed_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients plus noise: smooth and sharp content, so interpolation choices show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 200
    noise = rng.integers(0, 56, (height, width, 3))
    return Image.fromarray((base + noise).astype(np.uint8))


def reference_transform(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    transforms = _import_torchvision_transforms()
    modes = {
        "bilinear": transforms.InterpolationMode.BILINEAR,
        "bicubic": transforms.InterpolationMode.BICUBIC,
        "nearest": transforms.InterpolationMode.NEAREST,
    }
    t = transforms.Compose(
        [
            transforms.Resize(
                math.floor(prep.input_size / prep.crop_pct), modes[prep.interpolation]
            ),
            transforms.CenterCrop(prep.input_size),
            transforms.ToTensor(),
            transforms.Normalize(prep.mean, prep.std),
        ]
    )
    return t(image).numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("size", [(100, 67), (67, 100), (333, 500), (97, 97), (640, 427)])
@pytest.mark.parametrize(
    "prep",
    [
        Preprocessing(64, 0.875, "bicubic"),
        Preprocessing(64, 0.9, "bilinear", INCEPTION_MEAN, INCEPTION_STD),
        Preprocessing(57, 1.0, "nearest"),
    ],
    ids=["bicubic-0.875", "bilinear-0.9-inception", "nearest-1.0-odd"],
)
def test_eval_transform_matches_torchvision_reference(size, prep):
    image = fixed_image(*size)
    ours = eval_transform(image, prep)
    ref = reference_transform(image, prep)
    assert ours.shape == ref.shape == (prep.input_size, prep.input_size, 3)
    assert ours.dtype == np.float32
    # Same uint8 pixels, so the only difference is float rounding in the normalisation.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_resize_truncates_long_side_and_rounds_crop_half_to_even():
    # 100x67 -> shorter side floor(64 / 0.875) = 73, longer int(73 * 100 / 67) = int(108.96)
    # = 108 (rounding would give 109), crop offset int(round(44 / 2)) = 22 and
    # int(round(9 / 2)) = 4 (half to even).
    image = fixed_image(100, 67)
    prep = Preprocessing(64, 0.875, "bicubic")
    resized = image.resize((108, 73), Image.Resampling.BICUBIC)
    expected = np.asarray(resized.crop((22, 4, 86, 68)))
    np.testing.assert_array_equal(np.asarray(resize_center_crop(image, prep)), expected)
