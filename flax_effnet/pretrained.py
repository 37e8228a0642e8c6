"""Saved-weights directories: variables plus everything needed to use them.

A directory holds `variables.safetensors` (flat '/'-joined paths such as
`params/stem/conv/kernel` and `batch_stats/stem/bn/mean`; safetensors never unpickles) and
`config.json`:

    {"format": "flax_effnet", "format_version": 2,
     "model": {"family": "efficientnet" | "mobilenetv2" | ..., and the family's weight fields
               (EfficientNet: variant, num_classes, padding, bn_epsilon, bn_momentum, ...)},
     "preprocessing": {input_size, crop_pct, interpolation, mean, std},
     "class_names": [...] or null,
     "source": {free-form provenance: format, file, sha256, ...}}

The converter and the trainer's export write it; `load_pretrained` and the predictor read it,
for any registered family (`flax_effnet.registry`). Version-1 directories (written before
there were other families; no "family") are read as EfficientNet.
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

from flax import linen as nn

from flax_effnet.preprocessing import Preprocessing
from flax_effnet.registry import family_of, get_family

FORMAT = "flax_effnet"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CONFIG_FILE = "config.json"
VARIABLES_FILE = "variables.safetensors"
# Version 1 knew one family.
_V1_FAMILY = "efficientnet"


class NotAPretrainedDirError(ValueError):
    """The directory is not one written by `save_pretrained`."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """What a saved directory holds, parsed."""

    model: nn.Module
    variables: dict
    preprocessing: Preprocessing
    class_names: tuple[str, ...] | None
    source: dict


def model_config(model: nn.Module) -> dict:
    """The family and the JSON-able fields of a model that the weights depend on; compute
    settings (dtype, depthwise_impl) are the caller's choice at load time."""
    family = family_of(model)
    return {"family": family.name, **family.encode(model)}


def flatten_variables(variables: Mapping) -> dict[str, np.ndarray]:
    """{'params': {'stem': {'conv': {'kernel': x}}}} -> {'params/stem/conv/kernel': x}."""
    flat = traverse_util.flatten_dict(jax.device_get(dict(variables)), sep="/")
    return {k: np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}


def unflatten_variables(flat: Mapping[str, np.ndarray]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def save_pretrained(
    directory: str | os.PathLike,
    model: nn.Module,
    variables: Mapping,
    preprocessing: Preprocessing,
    *,
    class_names: list[str] | tuple[str, ...] | None = None,
    source: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write variables and config atomically to `directory`; returns its path. `model` is a
    module of any registered family."""
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
    if config.get("format_version") not in READABLE_VERSIONS:
        raise NotAPretrainedDirError(
            f"{path} has format_version {config.get('format_version')}; this flax_effnet reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))}"
        )
    return config


def _build_model(config: dict, path: Path, overrides: dict) -> nn.Module:
    """The module config.json describes, with `overrides` applied."""
    fields = dict(config["model"])
    name = fields.pop("family", None) if config["format_version"] >= 2 else _V1_FAMILY
    if name is None:
        raise NotAPretrainedDirError(f"{path}: format_version 2 but no model family in 'model'")
    try:
        return get_family(name).build(fields, **overrides)
    except ValueError as e:
        raise NotAPretrainedDirError(f"{path}: {e}") from None


def load_pretrained_full(directory: str | os.PathLike, **model_overrides: Any) -> Pretrained:
    """Load everything in a weights directory. `model_overrides` set compute fields such as
    `dtype` or `depthwise_impl` (or `num_classes=0` to drop the classifier)."""
    config = read_config(directory)
    model = _build_model(config, Path(directory) / CONFIG_FILE, model_overrides)
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


def load_pretrained(directory: str | os.PathLike, **model_overrides: Any) -> tuple[nn.Module, dict]:
    """`(model, variables)` from a directory written by the converter or the trainer.

    Example:
      model, variables = load_pretrained("b0_flax")
      logits = model.apply(variables, images)
    """
    loaded = load_pretrained_full(directory, **model_overrides)
    return loaded.model, loaded.variables
