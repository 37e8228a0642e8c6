"""A converted random-weight checkpoint gives, through `predict_efficientnet`, the same top-k
classes and probabilities as the PyTorch model it came from, on the same preprocessed image.

The reference is efficientnet_pytorch's b0 (TF SAME padding frozen at `image_size`, BN eps
1e-3) with random weights and random BN statistics, at 64 px so the test stays fast.
"""

from __future__ import annotations

import json

import efficientnet_pytorch
import numpy as np
import pytest
import torch
from infer_helpers import random_image
from PIL import Image

from flax_effnet import Preprocessing, save_pretrained
from flax_effnet.convert import convert_state_dict
from flax_effnet.infer.cli import predict_main
from flax_effnet.infer.predict import imagenet_class_names
from flax_effnet.preprocessing import INCEPTION_MEAN, INCEPTION_STD, eval_transform

SIZE = 64
PREP = Preprocessing(
    SIZE, crop_pct=0.875, interpolation="bicubic", mean=INCEPTION_MEAN, std=INCEPTION_STD
)
TOP_K = 5


@pytest.fixture(scope="module")
def torch_model():
    """Random weights, random BN affine, and BN statistics measured on images.

    With made-up BN statistics a random 16-block network forgets its input: every image
    gets nearly the same logits and a wrong kernel layout can go unnoticed. Statistics
    measured in one train-mode pass (momentum 1: running = batch) keep every layer's
    activations input-dependent and unit-scale, as in a trained network.
    """
    torch.manual_seed(0)
    model = efficientnet_pytorch.EfficientNet.from_name("efficientnet-b0", image_size=SIZE)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    calib = np.stack([eval_transform(random_image(80, 72, seed=s), PREP) for s in range(16)])
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.2)
            m.momentum = 1.0
        model._global_params = model._global_params._replace(drop_connect_rate=0.0)
        model.train()(torch.from_numpy(calib).permute(0, 3, 1, 2))
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(torch_model, tmp_path_factory):
    model, variables, info = convert_state_dict(torch_model.state_dict())
    assert (info.format, info.variant, model.padding) == ("efficientnet_pytorch", "b0", "same")
    # No class names: a 1000-class checkpoint gets the packaged ImageNet names.
    return save_pretrained(
        tmp_path_factory.mktemp("ckpt") / "b0_random",
        model,
        variables,
        PREP,
        source={"format": "efficientnet_pytorch", "note": "random weights"},
    )


def test_predict_gives_the_torch_models_top_k(torch_model, checkpoint, tmp_path, capsys):
    paths = []
    for i, (w, h) in enumerate([(120, 90), (70, 100), (64, 64)]):
        paths.append(tmp_path / f"img{i}.png")
        random_image(w, h, seed=40 + i).save(paths[-1])

    rc = predict_main([str(checkpoint), *map(str, paths), "--json", "--top-k", str(TOP_K)])
    assert rc == 0
    ours = json.loads(capsys.readouterr().out)["predictions"]

    # The reference: the PyTorch model on the same preprocessed images.
    x = np.stack([eval_transform(Image.open(p), PREP) for p in paths])
    with torch.no_grad():
        probs = torch.softmax(torch_model(torch.from_numpy(x).permute(0, 3, 1, 2)), dim=-1)
    ref_p, ref_i = (t.numpy() for t in torch.topk(probs, TOP_K + 1, dim=-1))
    # Consecutive top-k logits are apart (float noise is ~1e-5), so the order is a real test.
    assert np.min(-np.diff(np.log(ref_p), axis=1)) > 2e-4
    assert len({tuple(i) for i in ref_i}) == len(paths), (
        "input-independent outputs: test has no power"
    )
    names = imagenet_class_names()
    assert [p["path"] for p in ours] == [str(p) for p in paths]
    for pred, rp, ri in zip(ours, ref_p, ref_i):
        assert [c["index"] for c in pred["top_k"]] == ri[:TOP_K].tolist()
        assert [c["label"] for c in pred["top_k"]] == [names[i] for i in ri[:TOP_K]]
        np.testing.assert_allclose(
            [c["probability"] for c in pred["top_k"]], rp[:TOP_K], rtol=1e-3, atol=2e-6
        )
