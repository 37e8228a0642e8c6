"""A tiny TFDS dataset in ArrayRecord format, written by TFDS's own builder without TensorFlow.

`build_patterns_tfds(data_dir)` prepares `patterns_tfds` (train and validation splits of the
built-in patterns, 6 classes) exactly as `tfds build --file_format=array_record` would: the
trainer then reads it with `tfds.data_source`, like imagenet2012.

Images are handed to tfds as PIL images, which it PNG-encodes with PIL (encoding numpy arrays
would need TensorFlow). tfds 4.9.x on Python >= 3.9 looks up `importlib_resources` when
building without depending on the backport: the standard library's `importlib.resources` is
the same API (the same workaround as tests/test_evaluate.py on main).
"""

from __future__ import annotations

import importlib.resources
import sys
from pathlib import Path

import numpy as np

from flax_effnet.train import default_dataset

NAME = "patterns_tfds"


def _tfds():
    if "importlib_resources" not in sys.modules:
        try:
            import importlib_resources  # noqa: F401 - the backport, when installed
        except ImportError:
            sys.modules["importlib_resources"] = importlib.resources
    import tensorflow_datasets as tfds

    return tfds


def build_patterns_tfds(data_dir: str | Path, train: int = 8, val: int = 2) -> str:
    """Prepare `patterns_tfds` under `data_dir` (per class: `train` / `val` images); returns its name."""
    tfds = _tfds()
    per_split = {"train": train, "validation": val}

    class PatternsTfds(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=list(default_dataset.CLASSES)),
                }),
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: self._generate_examples(split) for split in per_split}

        def _generate_examples(self, split):
            split_id = 0 if split == "train" else 1
            for label, pattern in enumerate(default_dataset.CLASSES):
                for i in range(per_split[split]):
                    rng = np.random.default_rng([0, split_id, label, i])
                    yield f"{pattern}_{i}", {"image": default_dataset.render(pattern, rng), "label": label}

    builder = PatternsTfds(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    assert builder.name == NAME, builder.name
    return NAME
