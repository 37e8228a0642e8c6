"""A converted random-weight checkpoint gives, through `predict_efficientnet`, the same top-k
classes and probabilities as the PyTorch model it came from, on the same preprocessed image.

The reference is efficientnet_pytorch's b0 (TF SAME padding frozen at `image_size`, BN eps
1e-3) with random weights and random BN statistics, at 64 px so the test stays fast.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from infer_helpers import random_image
from PIL import Image

from flax_effnet import EfficientNet, Preprocessing, save_pretrained, scale_network
from flax_effnet.infer.cli import predict_main
from flax_effnet.infer.predict import imagenet_class_names
from flax_effnet.preprocessing import INCEPTION_MEAN, INCEPTION_STD, eval_transform

efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")

SIZE = 64
PREP = Preprocessing(
    SIZE, crop_pct=0.875, interpolation="bicubic", mean=INCEPTION_MEAN, std=INCEPTION_STD
)
TOP_K = 5


# --- STAND-IN for flax_effnet.convert ------------------------------------------------------
# Until the converter lands (convert branch), this small explicit table maps an
# efficientnet_pytorch b0 state_dict onto our variables. Replace it with
# `flax_effnet.convert` when merging; the test below should not need any other change.


def _conv(w):  # torch OIHW -> flax HWIO
    return w.transpose(2, 3, 1, 0)


def _depthwise(w):  # torch (C, 1, k, k) -> ours (k, k, 1, C)
    return w.transpose(2, 3, 1, 0)


def _dense_1x1(w):  # SE 1x1 conv (out, in, 1, 1) -> Dense (in, out)
    return w[:, :, 0, 0].T


def _bn(torch_prefix: str, flax_path: str) -> dict:
    return {
        f"params/{flax_path}/scale": (f"{torch_prefix}.weight", None),
        f"params/{flax_path}/bias": (f"{torch_prefix}.bias", None),
        f"batch_stats/{flax_path}/mean": (f"{torch_prefix}.running_mean", None),
        f"batch_stats/{flax_path}/var": (f"{torch_prefix}.running_var", None),
    }


def standin_key_table() -> dict[str, tuple[str, object]]:
    """flax '/'-path -> (efficientnet_pytorch key, layout transform) for b0."""
    table = {"params/stem/conv/kernel": ("_conv_stem.weight", _conv), **_bn("_bn0", "stem/bn")}
    for i, spec in enumerate(scale_network("b0").blocks):  # efficientnet_pytorch's list is flat
        t, f = f"_blocks.{i}", f"blocks_{spec.stage}_{spec.index}"
        if spec.expanded_channels != spec.in_channels:
            table[f"params/{f}/conv_exp/kernel"] = (f"{t}._expand_conv.weight", _conv)
            table.update(_bn(f"{t}._bn0", f"{f}/bn_exp"))
        table[f"params/{f}/conv_dw/kernel"] = (f"{t}._depthwise_conv.weight", _depthwise)
        table.update(_bn(f"{t}._bn1", f"{f}/bn_dw"))
        for ours, theirs in (("reduce", "_se_reduce"), ("expand", "_se_expand")):
            table[f"params/{f}/se/{ours}/kernel"] = (f"{t}.{theirs}.weight", _dense_1x1)
            table[f"params/{f}/se/{ours}/bias"] = (f"{t}.{theirs}.bias", None)
        table[f"params/{f}/conv_pwl/kernel"] = (f"{t}._project_conv.weight", _conv)
        table.update(_bn(f"{t}._bn2", f"{f}/bn_pwl"))
    table["params/head/conv/kernel"] = ("_conv_head.weight", _conv)
    table.update(_bn("_bn1", "head/bn"))
    table["params/classifier/kernel"] = ("_fc.weight", lambda w: w.T)  # Linear (out, in)
    table["params/classifier/bias"] = ("_fc.bias", None)
    return table


def standin_convert(state_dict: dict, model: EfficientNet, size: int) -> dict:
    """Strict: every flax leaf filled with the right shape, every torch tensor used."""
    import jax
    from flax import traverse_util

    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    )
    expected = traverse_util.flatten_dict(shapes, sep="/")
    table = standin_key_table()
    assert set(table) == set(expected), set(table) ^ set(expected)
    torch_keys = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    assert {k for k, _ in table.values()} == torch_keys
    flat = {}
    for path, (key, fn) in table.items():
        value = state_dict[key].detach().numpy()
        value = fn(value) if fn else value
        assert value.shape == expected[path].shape, (path, key, value.shape, expected[path].shape)
        flat[path] = np.ascontiguousarray(value, np.float32)
    return traverse_util.unflatten_dict(flat, sep="/")


# --- end of stand-in ---------------------------------------------------------------------


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
    model = EfficientNet("b0", num_classes=1000, padding="same", bn_epsilon=1e-3)
    variables = standin_convert(torch_model.state_dict(), model, SIZE)
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
