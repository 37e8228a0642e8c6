"""predict and evaluate for every family: a saved MobileNetV1/V2, ReXNet or ReXNet-lite
directory loads as its own family with its variables, and the predictor classifies with it
(that a family's forward pass is right is the equivalence tests' job)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from infer_helpers import TINY_PREP, random_variables, write_images

from flax_effnet import MobileNetV1, MobileNetV2, ReXNet, ReXNetLite, save_pretrained
from flax_effnet.infer.cli import evaluate_main
from flax_effnet.infer.predict import Predictor

CLASSES = ("cat", "dog", "fish")
# Small members of each family (32 px input: compiles in seconds).
MODELS = {
    "mobilenetv1": MobileNetV1(width=0.25, num_classes=3),
    "mobilenetv2": MobileNetV2(width=0.35, depth=0.3, num_classes=3),
    "rexnet": ReXNet(width=0.5, depth=0.3, num_classes=3),
    "rexnet_lite": ReXNetLite(width=1.0, num_classes=3),
}


def _save(directory, model, seed=0):
    variables = random_variables(model, TINY_PREP.input_size, seed)
    save_pretrained(directory, model, variables, TINY_PREP, class_names=list(CLASSES), source={"format": "test"})
    return variables


@pytest.mark.parametrize("family", sorted(MODELS))
def test_predict_uses_the_saved_family(family, tmp_path):
    model = MODELS[family]
    variables = _save(tmp_path / "w", model)
    predictor = Predictor.load(tmp_path / "w", batch_size=4)
    assert predictor.pretrained.model == model
    for a, b in zip(jax.tree.leaves(predictor.pretrained.variables), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)
    paths = write_images(tmp_path / "img", 3)
    result = predictor.predict(paths, top_k=3)
    assert not result.errors and [p.path for p in result.predictions] == [str(p) for p in paths]
    for p in result.predictions:
        probs = [c.probability for c in p.classes]
        assert sorted(c.label for c in p.classes) == sorted(CLASSES)
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    # Random weights and different images: not one constant answer.
    assert len({tuple(c.probability for c in p.classes) for p in result.predictions}) == 3


def test_evaluate_cli_on_a_rexnet_directory(tmp_path, capsys):
    _save(tmp_path / "w", MODELS["rexnet"], seed=1)
    root = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        write_images(root / name, 2, seed=c)
    rc = evaluate_main([str(tmp_path / "w"), str(root), "--json", "--batch-size", "4", "--no-progress"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 6 and 0.0 <= report["top1"] <= 1.0 and report["top5"] == 1.0
