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
leaves a half-written directory behind. Overwriting replaces only a directory that is itself
a weights directory and holds nothing else (`check_replaceable`): the new one is written
first, then swapped in, then the old one is deleted, so `-o . --overwrite` cannot empty the
current directory.
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
import jax.numpy as jnp
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


def check_replaceable(directory: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to write `directory` unless it is new, or `overwrite` is set and it is a weights
    directory holding only what `save_pretrained` writes (nothing of the user's is lost).

    Raises:
      FileExistsError: it exists and may not be replaced; the message says why.
    """
    out = Path(directory)
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (or --overwrite) to replace it")
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; it is not replaced")
    try:
        read_config(out)
    except NotAPretrainedDirError as e:
        raise FileExistsError(
            f"{out} exists and is not a flax_effnet weights directory ({e}); --overwrite replaces "
            "only a weights directory: choose a new output path"
        ) from None
    extra = sorted(p.name for p in out.iterdir() if p.name not in (CONFIG_FILE, VARIABLES_FILE))
    if extra:
        raise FileExistsError(
            f"{out} is a weights directory but also holds {', '.join(extra[:5])}"
            f"{' ...' if len(extra) > 5 else ''}; --overwrite does not delete other files: "
            "move them or choose a new output path"
        )


def _swap_in(new: Path, out: Path) -> None:
    """Move the finished directory `new` to `out`, replacing an old `out` only once `new` is
    complete: old -> backup, new -> out, then delete the backup (restored if the move fails)."""
    if not out.exists():
        os.replace(new, out)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    backup.rmdir()
    os.replace(out, backup)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(backup, out)
        raise
    shutil.rmtree(backup)


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
    module of any registered family.

    Raises:
      FileExistsError: `directory` exists and may not be replaced (see `check_replaceable`).
    """
    out = Path(directory)
    check_replaceable(out, overwrite)
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
        _swap_in(tmp, out)
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


def _build_model(config: dict, directory, overrides: Mapping[str, Any]) -> nn.Module:
    """The module config.json describes (its family's class), with `overrides` applied."""
    path = Path(directory) / CONFIG_FILE
    fields = dict(config["model"])
    name = fields.pop("family", None) if config["format_version"] >= 2 else _V1_FAMILY
    if name is None:
        raise NotAPretrainedDirError(f"{path}: format_version 2 but no model family in 'model'")
    try:
        model = get_family(name).build(fields, **overrides)
        model.network  # an unknown variant name fails here, not at first use
    except (TypeError, ValueError) as e:
        raise NotAPretrainedDirError(f"{path}: its model description is not valid: {e}") from None
    return model


def _read_variables(directory) -> dict:
    path = Path(directory) / VARIABLES_FILE
    try:
        return unflatten_variables(load_file(str(path)))
    except FileNotFoundError:
        raise NotAPretrainedDirError(f"{directory} has {CONFIG_FILE} but no {VARIABLES_FILE}") from None
    except Exception as e:  # SafetensorError, OSError, ValueError: cut short or not safetensors
        raise NotAPretrainedDirError(
            f"{path} is corrupt or truncated (safetensors said: {e}); convert or export the "
            "weights again"
        ) from None


def check_variables(model, variables: Mapping, input_size: int, directory="") -> None:
    """Every variable the model declares is present with its shape, and nothing else is.

    A weights directory whose variables do not fit its config (edited, mixed up with another
    directory) fails here with the paths named, not inside `model.apply`. Shapes come from
    `jax.eval_shape`, which computes nothing.

    Raises:
      NotAPretrainedDirError: the variables and the model disagree.
    """
    x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(shapes), sep="/").items()}
    have = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(dict(variables), sep="/").items()}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or unexpected or wrong:
        problems = [f"missing {k} {want[k]}" for k in missing[:5]]
        problems += [f"unexpected {k} {have[k]}" for k in unexpected[:5]]
        problems += [f"{k}: expected {want[k]}, found {have[k]}" for k in wrong[:5]]
        total = len(missing) + len(unexpected) + len(wrong)
        raise NotAPretrainedDirError(
            f"{Path(directory) / VARIABLES_FILE} does not fit the model in its {CONFIG_FILE} "
            f"({total} problems): " + "; ".join(problems) + (" ..." if total > len(problems) else "")
        )


def load_pretrained_full(directory: str | os.PathLike, **model_overrides: Any) -> Pretrained:
    """Load everything in a weights directory. `model_overrides` set compute fields such as
    `dtype` or `depthwise_impl` (or `num_classes=0` to drop the classifier).

    Raises:
      NotAPretrainedDirError: not a weights directory, or its config or variables are damaged
        or do not fit each other; the message says which.
    """
    config = read_config(directory)
    model = _build_model(config, directory, model_overrides)
    try:
        preprocessing = Preprocessing.from_dict(config["preprocessing"])
    except (KeyError, TypeError, ValueError) as e:
        raise NotAPretrainedDirError(
            f"{Path(directory) / CONFIG_FILE}: its preprocessing is not valid: {e}"
        ) from None
    variables = _read_variables(directory)
    if not model.num_classes:
        variables.get("params", {}).pop("classifier", None)
    check_variables(model, variables, preprocessing.input_size, directory)
    class_names = config.get("class_names")
    return Pretrained(
        model=model,
        variables=variables,
        preprocessing=preprocessing,
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
