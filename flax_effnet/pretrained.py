"""Saved-weights directories: variables plus everything needed to use them.

A directory holds `variables.safetensors` (flat '/'-joined paths such as
`params/stem/conv/kernel` and `batch_stats/stem/bn/mean`; safetensors never unpickles) and
`config.json`:

    {"format": "flax_effnet", "format_version": 1,
     "model": {EfficientNet fields: variant, num_classes, padding, bn_epsilon, bn_momentum, ...},
     "preprocessing": {input_size, crop_pct, interpolation, mean, std},
     "class_names": [...] or null,
     "source": {free-form provenance: format, file, sha256, ...}}

The converter and the trainer's export write it; `load_pretrained` and the predictor read it.
Writes go to a temporary sibling directory that is renamed into place, so a failure never
leaves a half-written directory behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from flax_effnet.model import EfficientNet
from flax_effnet.preprocessing import Preprocessing
from flax_effnet.specs import VariantSpec

FORMAT = "flax_effnet"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
VARIABLES_FILE = "variables.safetensors"
# EfficientNet fields that describe the weights; compute settings (dtype, depthwise_impl) are
# the caller's choice at load time.
_MODEL_FIELDS = ("variant", "num_classes", "padding", "bn_epsilon", "bn_momentum", "dropout_rate", "drop_path_rate")


class NotAPretrainedDirError(ValueError):
    """The directory is not one written by `save_pretrained`."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """What a saved directory holds, parsed."""

    model: EfficientNet
    variables: dict
    preprocessing: Preprocessing
    class_names: tuple[str, ...] | None
    source: dict


def model_config(model: EfficientNet) -> dict:
    """The JSON-able fields of a model that the weights depend on."""
    cfg = {f: getattr(model, f) for f in _MODEL_FIELDS}
    if isinstance(cfg["variant"], VariantSpec):
        cfg["variant"] = dataclasses.asdict(cfg["variant"])
    return cfg


def flatten_variables(variables: Mapping) -> dict[str, np.ndarray]:
    """{'params': {'stem': {'conv': {'kernel': x}}}} -> {'params/stem/conv/kernel': x}."""
    flat = traverse_util.flatten_dict(jax.device_get(dict(variables)), sep="/")
    return {k: np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}


def unflatten_variables(flat: Mapping[str, np.ndarray]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def save_pretrained(
    directory: str | os.PathLike,
    model: EfficientNet,
    variables: Mapping,
    preprocessing: Preprocessing,
    *,
    class_names: list[str] | tuple[str, ...] | None = None,
    source: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write variables and config atomically to `directory`; returns its path."""
    out = Path(directory)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (or --overwrite) to replace it")
    if class_names is not None and model.num_classes and len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {model.num_classes}-class model")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(flatten_variables(variables), str(tmp / VARIABLES_FILE))
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model_config(model),
            "preprocessing": dataclasses.asdict(preprocessing),
            "class_names": list(class_names) if class_names is not None else None,
            "source": source or {},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_config(directory: str | os.PathLike) -> dict:
    """Parse and check `config.json`; a clear error if this is not our directory."""
    path = Path(directory) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotAPretrainedDirError(
            f"{directory} is not a flax_effnet weights directory (no {CONFIG_FILE}); "
            "make one with convert_torch_weights or train_efficientnet"
        ) from None
    except json.JSONDecodeError as e:
        raise NotAPretrainedDirError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise NotAPretrainedDirError(f"{path} was not written by flax_effnet (format != {FORMAT!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise NotAPretrainedDirError(
            f"{path} has format_version {config.get('format_version')}; this flax_effnet reads {FORMAT_VERSION}"
        )
    return config


def load_pretrained_full(directory: str | os.PathLike, **model_overrides: Any) -> Pretrained:
    """Load everything in a weights directory. `model_overrides` set compute fields such as
    `dtype` or `depthwise_impl` (or `num_classes=0` to drop the classifier)."""
    config = read_config(directory)
    model_cfg = dict(config["model"])
    if isinstance(model_cfg["variant"], dict):
        model_cfg["variant"] = VariantSpec(**model_cfg["variant"])
    model_cfg.update(model_overrides)
    model = EfficientNet(**model_cfg)
    try:
        flat = load_file(str(Path(directory) / VARIABLES_FILE))
    except FileNotFoundError:
        raise NotAPretrainedDirError(f"{directory} has {CONFIG_FILE} but no {VARIABLES_FILE}") from None
    variables = unflatten_variables(flat)
    if not model.num_classes:
        variables["params"].pop("classifier", None)
    class_names = config.get("class_names")
    return Pretrained(
        model=model,
        variables=variables,
        preprocessing=Preprocessing.from_dict(config["preprocessing"]),
        class_names=tuple(class_names) if class_names else None,
        source=config.get("source", {}),
    )


def load_pretrained(directory: str | os.PathLike, **model_overrides: Any) -> tuple[EfficientNet, dict]:
    """`(model, variables)` from a directory written by the converter or the trainer.

    Example:
      model, variables = load_pretrained("b0_flax")
      logits = model.apply(variables, images)
    """
    loaded = load_pretrained_full(directory, **model_overrides)
    return loaded.model, loaded.variables
