"""effdet EfficientDet checkpoints -> Flax, against effdet 0.4.1 itself.

Per-level class and box outputs at non-square sizes, with random weights, randomised BN
statistics and affine, random conv biases (the class prior included) and random BiFPN edge
weights with negative ones (so the fusion's ReLU matters): tf_efficientdet_d0 (TF SAME, redundant
biases), efficientdet_d0 (symmetric padding, no biases, BN eps 1e-5) through the CLI and a
weights directory, and a small 'sum'-fusion (D6+) BiFPN at a size that is not a multiple of 128
(ceil-halved levels: 3 -> 5 style nearest upsampling and odd SAME pooling). Then containers,
bench prefixes, class counts, the D6/D7 twins and named errors.

Gate (issue 14): max |difference| <= 1e-4 * max(1, max |output|) for every level's outputs.
"""

import functools
import json

import jax
import numpy as np
from flax import traverse_util
import pytest
import torch

import convert_refs as R
from flax_effnet import EfficientDet, create_model, list_models, load_pretrained
from flax_effnet.convert import convert_state_dict
from flax_effnet.convert.cli import main
from flax_effnet.convert.errors import KeyMismatchError, UnknownVariantError
from flax_effnet.convert.formats.effdet import CLASS_PREDICT, EFFDET, table

GATE = 1e-4
# timm's layers use `torch.jit.script`, which torch 2.13 deprecates at import.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@functools.lru_cache(maxsize=1)
def _effdet():
    from conftest import register_torchvision_ops

    register_torchvision_ops()
    import effdet

    return effdet


@torch.no_grad()
def reference(name, hw, seed=0, num_classes=None, **config):
    """A randomised effdet model built for input size `hw`, and a batch for it (NCHW)."""
    effdet = _effdet()
    cfg = effdet.get_efficientdet_config(name)
    cfg.image_size = hw
    if num_classes is not None:
        cfg.num_classes = num_classes
    for k, v in config.items():
        setattr(cfg, k, v)
    m = effdet.EfficientDet(cfg, pretrained_backbone=False)
    g = torch.Generator().manual_seed(seed)
    edges = [p for n, p in m.named_parameters() if n.endswith("edge_weights")]
    for p in edges:
        p.copy_(torch.rand(p.shape, generator=g) * 1.6 - 0.3)
    if edges:  # some negative for sure: relu(w) must zero them
        edges[0][0] = -0.7
        edges[-1][-1] = -0.2
    x = np.random.default_rng(seed).standard_normal((2, 3, *hw)).astype(np.float32)
    return R.randomize(m, x, seed), x


@torch.no_grad()
def compare(m, x, model, variables) -> dict:
    """Per (head, level): max |difference| and max |effdet output|; asserts the gate."""
    ref_cls, ref_box = m(torch.from_numpy(x))
    cls, box = jax.jit(lambda v, x: model.apply(v, x))(variables, x.transpose(0, 2, 3, 1))
    out = {}
    for head, ours, refs in (("class", cls, ref_cls), ("box", box, ref_box)):
        assert len(ours) == len(refs)
        for level, (a, r) in enumerate(zip(ours, refs), start=3):
            r = r.numpy().transpose(0, 2, 3, 1)
            assert a.shape == r.shape, (head, level)
            out[f"{head} P{level}"] = (float(np.abs(np.asarray(a) - r).max()), float(np.abs(r).max()))
    worst = max(d / max(1.0, s) for d, s in out.values())
    print(f"max |diff| {max(d for d, _ in out.values()):.2e}, max |output| "
          f"{max(s for _, s in out.values()):.2f}, worst diff / max(1, |output|) {worst:.2e}:",
          {k: f"{d:.2e} of {s:.2f}" for k, (d, s) in out.items()})
    assert worst <= GATE, out
    return out


@pytest.mark.slow
def test_tf_efficientdet_d0_outputs_match_effdet():
    m, x = reference("tf_efficientdet_d0", (256, 384))
    model, variables, info = convert_state_dict(m.state_dict())
    assert isinstance(model, EfficientDet)
    assert (info.format, info.model_name, info.num_classes, info.classifier) == ("effdet", "tf_efficientdet_d0", 90, "converted")
    assert (model.padding, model.redundant_bias, model.backbone_bn_epsilon) == ("same", True, 1e-3)
    out = compare(m, x, model, variables)
    assert out["class P3"][1] > 1 and out["box P7"][1] > 0.05  # the outputs are not trivial


@pytest.mark.slow
def test_efficientdet_d0_file_through_cli_matches_effdet(tmp_path, capsys):
    """A plain state_dict file -> `convert_torch_weights --verify` -> weights directory ->
    `load_pretrained` gives effdet's outputs."""
    m, x = reference("efficientdet_d0", (128, 256), seed=1)
    src = tmp_path / "efficientdet_d0.pth"
    torch.save(m.state_dict(), src)
    assert main([str(src), "-o", str(tmp_path / "out"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "effdet efficientdet_d0 (family efficientdet, model efficientdet_d0)" in out
    # --verify builds effdet's efficientdet_d0 by name and loads the file's tensors into it.
    assert "verify vs effdet.efficientdet.EfficientDet at 128x128" in out and "top-1 agrees" in out
    assert float(out.split("max |logit diff| ")[1].split(",")[0]) < 1e-4
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model"]["family"] == "efficientdet" and config["model"]["padding"] == "symmetric"
    assert config["preprocessing"]["input_size"] == 512
    # 'conv': XLA's grouped convolution, the GPU path (the test above runs the CPU 'shift' one).
    model, variables = load_pretrained(tmp_path / "out", depthwise_impl="conv")
    assert (model.redundant_bias, model.backbone_bn_epsilon) == (False, 1e-5)
    compare(m, x, model, variables)


@pytest.mark.slow
def test_sum_fusion_at_a_size_that_is_not_a_multiple_of_128():
    """D6+'s 'bifpn_sum' (no edge weights), shrunk; 200x328 gives levels 25x41 ... 2x3, so the
    BiFPN upsamples 4 -> 7 -> 13 -> 25 (torch's floor index rule) and pools odd sizes."""
    small = dict(fpn_channels=32, fpn_cell_repeats=2, box_class_repeats=2)
    m, x = reference("tf_efficientdet_d0", (200, 328), seed=2, fpn_name="bifpn_sum", **small)
    model = create_model("tf_efficientdet_d0", fusion="sum", depthwise_impl="conv", **small)
    tensors = {k: v.numpy() for k, v in m.state_dict().items()}
    from flax_effnet.convert.api import _fill
    from flax_effnet.pretrained import unflatten_variables

    flat, consumed, _ = _fill(EFFDET, "sum", table(model, CLASS_PREDICT, 90), tensors, "", [])
    assert not any(k.endswith("edge_weights") for k in consumed)
    compare(m, x, model, unflatten_variables(flat))


@pytest.mark.slow
def test_train_mode_batch_statistics_match_effdet():
    """Train mode: every BN normalises with its own batch's statistics, the heads' BNs one level
    each, and the running means move as torch's do (momentum 0.01 = Flax 0.99 in the BiFPN and
    heads, timm's 0.1 = 0.9 in the backbone). Stochastic depth off on both sides."""
    small = dict(fpn_channels=32, fpn_cell_repeats=2, box_class_repeats=2)
    m, x = reference("tf_efficientdet_d0", (128, 192), seed=3, backbone_args=dict(drop_path_rate=0.0), **small)
    model = create_model("tf_efficientdet_d0", drop_path_rate=0.0, **small)
    tensors = {k: v.numpy().copy() for k, v in m.state_dict().items()}  # torch updates in place
    from flax_effnet.convert.api import _fill
    from flax_effnet.pretrained import unflatten_variables

    flat, _, _ = _fill(EFFDET, "train", table(model, CLASS_PREDICT, 90), tensors, "", [])
    variables = unflatten_variables(flat)
    m.train()
    with torch.no_grad():
        ref_cls, ref_box = m(torch.from_numpy(x))
    run = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    (cls, box), updates = run(variables, x.transpose(0, 2, 3, 1))
    worst = 0.0
    for ours, ref in zip(cls + box, ref_cls + ref_box):
        r = ref.numpy().transpose(0, 2, 3, 1)
        worst = max(worst, np.abs(np.asarray(ours) - r).max() / max(1.0, np.abs(r).max()))
    print(f"train mode: worst diff / max(1, |output|) {worst:.2e}")
    assert worst <= GATE
    new = {k: v.numpy() for k, v in m.state_dict().items()}
    stats = traverse_util.flatten_dict(updates["batch_stats"], sep="/")
    for row in table(model, CLASS_PREDICT, 90):
        if row.flax_path.endswith("/mean"):
            got = np.asarray(stats[row.flax_path.removeprefix("batch_stats/")])
            assert not np.allclose(new[row.torch_key], tensors[row.torch_key])  # it moved
            np.testing.assert_allclose(got, new[row.torch_key], rtol=1e-4, atol=1e-5, err_msg=row.torch_key)


@pytest.mark.parametrize("name", list_models("*efficientdet_*"))
def test_key_table_is_effdets_state_dict(name):
    """Every key and torch shape of effdet's model of that name, and nothing else (built on
    the meta device: shapes, no memory). test_efficientdet.py checks the Flax side."""
    with torch.device("meta"):
        m = _effdet().create_model(name, pretrained=False, pretrained_backbone=False)
    ref = {k: tuple(v.shape) for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {r.torch_key: r.torch_shape for r in table(create_model(name), CLASS_PREDICT, 90)} == ref


@functools.lru_cache(maxsize=1)
def _state_dicts():
    """Weights of a tf_efficientdet_d0 and of its 'EMA' (another seed); no forward needed."""
    effdet = _effdet()
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = effdet.create_model("tf_efficientdet_d0", pretrained=False, pretrained_backbone=False, num_classes=5)
        out.append(m)
    return out


def _flat(variables):
    from flax_effnet.pretrained import flatten_variables

    return flatten_variables(variables)


def test_containers_and_bench_prefixes(tmp_path):
    """timm's trainer container (state_dict / state_dict_ema / arch) and effdet's bench wrappers
    (`model.` plus their anchor boxes) convert to the same variables as the bare model."""
    from flax_effnet.convert import convert_file

    m, ema = _state_dicts()
    _, plain, info = convert_state_dict(m.state_dict())
    assert info.num_classes == 5  # any class count: read from the class head
    want = _flat(plain)
    _, ema_plain, _ = convert_state_dict(ema.state_dict())

    bench = _effdet().DetBenchTrain(m)
    src = tmp_path / "bench.pth"
    torch.save(bench.state_dict(), src)
    _, variables, info = convert_file(src)
    assert info.prefix == "model." and "anchors.boxes" in info.ignored
    assert all(np.array_equal(want[k], v) for k, v in _flat(variables).items()) and _flat(variables).keys() == want.keys()

    # effdet's AdvProp releases (`tf_efficientdet_dX_ap`) have the same tensors; the file name
    # brings their mean = std = 0.5.
    src = tmp_path / "tf_efficientdet_d0_ap-d0cdbd0a.pth"
    torch.save(m.state_dict(), src)
    _, _, info = convert_file(src)
    assert info.model_name == "tf_efficientdet_d0" and info.preprocessing.mean == (0.5, 0.5, 0.5)

    src = tmp_path / "train.pth.tar"
    torch.save({"state_dict": m.state_dict(), "state_dict_ema": ema.state_dict(), "arch": "tf_efficientdet_d0", "epoch": 3}, src)
    for use_ema, expect in ((False, want), (True, _flat(ema_plain))):
        _, variables, info = convert_file(src, use_ema=use_ema)
        got = _flat(variables)
        assert got.keys() == expect.keys() and all(np.array_equal(expect[k], got[k]) for k in got)
        assert info.file["weights"] == ("ema" if use_ema else "regular")


def test_new_class_count_replaces_only_the_class_prediction():
    m, _ = _state_dicts()
    model, variables, info = convert_state_dict(m.state_dict(), num_classes=3)
    assert (model.num_classes, info.classifier) == (3, "new")
    predict = variables["params"]["class_net"]["predict"]["conv_pw"]
    assert predict["kernel"].shape == (1, 1, 64, 27)
    np.testing.assert_allclose(predict["bias"], -np.log(99.0), rtol=1e-6)
    assert any("class_net.predict.conv_pw.weight" in n for n in info.notes)


def test_d6_and_d7_hold_the_same_tensors_a_name_decides():
    """No torch model: a zero-filled checkpoint of D7's table (views, no memory)."""
    d7 = create_model("tf_efficientdet_d7")
    sd = {r.torch_key: np.broadcast_to(np.float32(0), r.torch_shape) for r in table(d7, CLASS_PREDICT, 90)}
    model, _, info = convert_state_dict(sd, hints=["file name: tf_efficientdet_d7_53-6d1d7a95.pth"])
    assert info.model_name == "tf_efficientdet_d7" and model.anchors.anchor_scale == 5.0
    assert info.preprocessing.input_size == 1536
    model, _, info = convert_state_dict(sd)
    assert info.model_name == "tf_efficientdet_d6" and any("ASSUMED tf_efficientdet_d6" in n for n in info.notes)


def test_wrong_and_extra_keys_are_named(tmp_path, capsys):
    m, _ = _state_dicts()
    sd = dict(m.state_dict())
    sd["fpn.cell.0.fnode.9.combine.edge_weights"] = torch.ones(2)
    sd["class_net.conv_rep.0.conv_dw.weight"] = torch.ones(64, 1, 5, 5)
    with pytest.raises(KeyMismatchError) as e:
        convert_state_dict(sd)  # no registered model fits; the closest one's table names them
    msg = str(e.value)
    assert "the closest, tf_efficientdet_d0, fits 672 of its 673 tensors" in msg
    assert "'fpn.cell.0.fnode.9.combine.edge_weights': shape (2,)" in msg
    assert "'class_net.conv_rep.0.conv_dw.weight': expected shape (64, 1, 3, 3), found (64, 1, 5, 5)" in msg
    del sd["fpn.cell.0.fnode.9.combine.edge_weights"], sd["class_net.conv_rep.0.conv_dw.weight"]
    with pytest.raises(KeyMismatchError, match="(?s)missing keys.*'class_net.conv_rep.0.conv_dw.weight'"):
        convert_state_dict(sd, variant="tf_efficientdet_d0")  # --model: that model's table
    with pytest.raises(UnknownVariantError, match="BiFPN width 64, 3 cells, weighted fusion, with conv biases"):
        convert_state_dict({k: v for k, v in sd.items() if not k.startswith("box_net.")})  # nothing close
    src = tmp_path / "broken.pth"
    sd["box_net.extra.weight"] = torch.ones(3)
    torch.save(sd, src)
    assert main([str(src), "-o", str(tmp_path / "out")]) == 1
    assert "box_net.extra.weight" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
