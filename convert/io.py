"""Reading checkpoint files safely: safetensors, torch zip/legacy pickles, containers, prefixes.

Pickles are loaded with `torch.load(weights_only=True)` only, which unpickles tensors and plain
containers but refuses arbitrary classes. A whole pickled `nn.Module` or a TorchScript archive
carries code that runs on load; both are refused unless the caller passes `unsafe=True`.
Tensors come back as numpy arrays; floating ones (fp16, bf16, fp64) as float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import ml_dtypes  # bfloat16 for numpy: bf16 safetensors files read without torch
import numpy as np

from flax_effnet.convert.errors import CheckpointReadError, ConversionError, UnsafeCheckpointError

# Container keys, tried in this order. timm's train script saves 'state_dict' and
# 'state_dict_ema'; many trainers use 'model' / 'model_ema'.
REGULAR_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict", "model_ema_state_dict", "ema_model")
# Entries of a checkpoint dict that may name the architecture (timm: 'arch', 'args.model').
_ARCH_KEYS = ("arch", "architecture", "model_name", "model_type")


@dataclasses.dataclass
class Checkpoint:
    """A state_dict read from a file, with what was learnt on the way.

    Attributes:
      tensors: torch key -> numpy array (floating tensors as float32).
      container: the key path the state_dict was found under ('' for a plain state_dict).
      ema: whether these are EMA weights.
      hints: strings that may name the architecture (arch fields, config.json, file name).
      source_dtypes: the floating dtypes the file stored ('float16', ...).
      kind: 'safetensors', 'torch' (weights-only pickle), 'pickled-module' or 'torchscript'.
      notes: human-readable remarks (e.g. which container was used).
      pretrained_cfg: (timm pretrained_cfg dict, where it was found) when the file or a
        neighbouring config.json has one: the preprocessing the weights were trained with.
    """

    tensors: dict[str, np.ndarray]
    container: str = ""
    ema: bool = False
    hints: list[str] = dataclasses.field(default_factory=list)
    source_dtypes: list[str] = dataclasses.field(default_factory=list)
    kind: str = "torch"
    notes: list[str] = dataclasses.field(default_factory=list)
    pretrained_cfg: tuple[dict, str] | None = None


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ConversionError(
            "reading PyTorch checkpoints needs torch: pip install 'flax-effnet[convert]' "
            "(install the CPU build first: pip install torch==2.13.0)"
        ) from None
    return torch


def _is_float(dtype: np.dtype) -> bool:
    """numpy floats, and ml_dtypes' bfloat16, which numpy does not count as floating."""
    return np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16


def to_numpy(value) -> np.ndarray:
    """A torch tensor or array -> numpy; floating dtypes become float32."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch for numpy input
        t = value.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        return t.numpy()
    arr = np.asarray(value)
    return arr.astype(np.float32) if _is_float(arr.dtype) else arr


def _dtype_name(value) -> str:
    return str(getattr(value, "dtype", "")).removeprefix("torch.")


def _is_tensor(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (dict, list))


def _arch_hints(obj: Mapping) -> list[str]:
    hints = [str(obj[k]) for k in _ARCH_KEYS if isinstance(obj.get(k), str)]
    args = obj.get("args")
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if isinstance(args, Mapping):
        hints += [str(args[k]) for k in ("model", "arch", "model_name") if isinstance(args.get(k), str)]
    return hints


def unwrap_container(obj: Any, use_ema: bool = False) -> tuple[dict, str, bool, list[str]]:
    """Find the state_dict inside a checkpoint object.

    Returns:
      (state_dict, container key path, is_ema, architecture hints).

    Raises:
      ConversionError: no state_dict found, or EMA weights asked for and absent (or only EMA
        weights present and not asked for).
    """
    path, hints, ema = [], [], False
    for _ in range(4):  # containers nest at most a few levels ({'model': {'state_dict': ...}})
        if not isinstance(obj, Mapping):
            break
        hints += _arch_hints(obj)
        tensors = {k: v for k, v in obj.items() if _is_tensor(v)}
        if tensors and len(tensors) == len(obj):
            break
        regular = [k for k in REGULAR_KEYS if isinstance(obj.get(k), Mapping)]
        emas = [k for k in EMA_KEYS if isinstance(obj.get(k), Mapping)]
        if use_ema and not ema:
            if not emas:
                raise ConversionError(
                    f"--use-ema: no EMA weights in this file (looked for {', '.join(EMA_KEYS)}; "
                    f"found entries {sorted(map(str, obj))[:12]})"
                )
            key, ema = emas[0], True
        elif regular:
            key = regular[0]
        elif emas and not ema:
            raise ConversionError(
                f"this file holds only EMA weights (under {emas[0]!r}); pass --use-ema to convert them"
            )
        elif tensors:  # a state_dict with a few non-tensor extras
            break
        else:
            raise ConversionError(
                "no state_dict found: expected a dict of tensors or a container with one of "
                f"{', '.join(REGULAR_KEYS + EMA_KEYS)}; found entries {sorted(map(str, obj))[:12]}"
            )
        path.append(key)
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"expected a state_dict (a dict of tensors), found {type(obj).__name__}")
    state = {str(k): v for k, v in obj.items() if _is_tensor(v)}
    if not state:
        raise ConversionError("the checkpoint holds no tensors")
    return state, ".".join(path), ema, hints


def _neighbour_config(path: Path) -> tuple[list[str], tuple[dict, str] | None]:
    """Architecture names and the timm `pretrained_cfg` from a config.json beside the file
    (how the Hugging Face hub ships timm weights)."""
    cfg = path.parent / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return [], None
    if not isinstance(data, dict) or data.get("format") == "flax_effnet":
        return [], None
    hints = [str(data[k]) for k in ("architecture", "arch", "model_name") if isinstance(data.get(k), str)]
    pc = data.get("pretrained_cfg")
    if isinstance(pc, dict) and isinstance(pc.get("architecture"), str):
        hints.append(pc["architecture"])
    found = (pc, str(cfg)) if isinstance(pc, dict) else None
    return [f"config.json: {h}" for h in hints], found


def _is_safetensors(path: Path) -> bool:
    # safetensors: 8-byte little-endian header length, then a JSON header starting with '{'.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path, use_ema: bool) -> Checkpoint:
    """No torch needed: numpy reads every dtype, bf16 through ml_dtypes (imported above)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError: header or data cut short
        raise CheckpointReadError(
            f"cannot read {path}: it is not a valid safetensors file (truncated or corrupt?): {e}"
        ) from None
    ckpt = _finish(raw, kind="safetensors", use_ema=use_ema)
    ckpt.hints += [str(v) for k, v in metadata.items() if k in _ARCH_KEYS]
    return ckpt


def _torchscript_names(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _unsafe_message(path: Path, what: str) -> str:
    return (
        f"{path} is {what}. Loading it executes Python code stored in the file, which can do anything "
        "your user account can. Only weights are needed: re-save them with "
        "`torch.save(model.state_dict(), 'weights.pth')`, or pass --unsafe (unsafe=True) if you "
        "trust where the file came from."
    )


def _finish(raw: Mapping, kind: str, use_ema: bool = False) -> Checkpoint:
    state, container, ema, hints = unwrap_container(raw, use_ema)
    dtypes = sorted({_dtype_name(v) for v in state.values()} - {"float32", "int64", "int32", "long"})
    tensors = {k: to_numpy(v) for k, v in state.items()}
    notes = []
    if use_ema and not ema:
        notes.append("--use-ema: the file holds a single state_dict; converted it (EMA or not cannot be told)")
    if container:
        notes.append(f"state_dict taken from {container!r}" + (" (EMA weights)" if ema else " (regular weights)"))
        also = [k for k in EMA_KEYS if not ema and isinstance(raw, Mapping) and isinstance(raw.get(k), Mapping)]
        if also:
            notes.append(f"the file also holds EMA weights under {also[0]!r}; --use-ema converts those")
    if dtypes:
        notes.append(f"stored as {', '.join(dtypes)}; converted to float32")
    return Checkpoint(tensors, container, ema, hints, dtypes, kind, notes)


def read_checkpoint(path: str | os.PathLike, *, use_ema: bool = False, unsafe: bool = False) -> Checkpoint:
    """Read a checkpoint file into numpy tensors.

    Args:
      path: a `.pth`/`.pt`/`.bin` torch file (zip or legacy pickle) or a `.safetensors` file.
      use_ema: take the EMA weights of a container that holds both.
      unsafe: allow pickled modules and TorchScript archives (runs code from the file).

    Returns:
      A `Checkpoint`.

    Raises:
      CheckpointReadError: missing, empty, truncated or corrupt file.
      UnsafeCheckpointError: pickled objects or TorchScript without `unsafe`.
      ConversionError: no state_dict in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointReadError(f"{path} is empty")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        ckpt = _read_safetensors(path, use_ema)
    else:
        ckpt = _read_torch(path, use_ema=use_ema, unsafe=unsafe)
    hints, pretrained_cfg = _neighbour_config(path)
    ckpt.hints += hints + [f"file name: {path.name}"]
    ckpt.pretrained_cfg = ckpt.pretrained_cfg or pretrained_cfg
    return ckpt


def _read_torch(path: Path, *, use_ema: bool, unsafe: bool) -> Checkpoint:
    torch = _import_torch()
    if _torchscript_names(path):
        if not unsafe:
            raise UnsafeCheckpointError(_unsafe_message(path, "a TorchScript archive"))
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise CheckpointReadError(f"cannot read TorchScript archive {path}: {e}") from None
        ckpt = _finish(dict(module.state_dict()), kind="torchscript")
        ckpt.hints.append(getattr(module, "original_name", ""))
        return ckpt
    kind = "torch"
    try:
        # argparse.Namespace is how timm's train script stores `args`; it only sets attributes.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" not in msg and "GLOBAL" not in msg:
            raise CheckpointReadError(
                f"cannot read {path}: truncated, corrupt, or not a PyTorch checkpoint{_unpickler_reason(msg)}"
            ) from None
        if not unsafe:
            what = "a pickled Python object, not just tensors"
            detail = _first_global(msg)
            raise UnsafeCheckpointError(_unsafe_message(path, what + (f" ({detail})" if detail else ""))) from None
        obj, kind = _load_unsafe(torch, path), "pickled-object"
    except ConversionError:
        raise
    except Exception as e:  # RuntimeError from the zip reader, EOFError, ValueError, ...
        raise CheckpointReadError(
            f"cannot read {path}: truncated, corrupt, or not a PyTorch checkpoint "
            f"({type(e).__name__}: {_first_line(str(e))})"
        ) from None
    hints, pretrained_cfg = [], None
    if isinstance(obj, torch.nn.Module):
        cfg = getattr(obj, "pretrained_cfg", None) or {}
        hints += [type(obj).__module__ + "." + type(obj).__name__]
        if isinstance(cfg, Mapping) and isinstance(cfg.get("architecture"), str):
            hints.append(cfg["architecture"])
        if isinstance(cfg, Mapping) and cfg.get("mean") is not None:
            pretrained_cfg = (dict(cfg), f"the pickled module's pretrained_cfg ({path.name})")
        obj = dict(obj.state_dict())
        kind = "pickled-module"
    ckpt = _finish(obj, kind=kind, use_ema=use_ema)
    ckpt.hints += hints
    ckpt.pretrained_cfg = pretrained_cfg
    return ckpt


def _load_unsafe(torch, path: Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointReadError(
            f"--unsafe: cannot unpickle {path} ({type(e).__name__}: {_first_line(str(e))}); "
            "the classes it refers to must be importable"
        ) from None


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0][:300] if msg.strip() else ""


def _unpickler_reason(msg: str) -> str:
    """The unpickler's own reason from torch's weights_only error, without its advice to
    retry with weights_only=False (which would run code from an untrusted file)."""
    for line in msg.splitlines():
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip()[:200]
            return f" ({reason})" if reason else ""
    return ""


def _first_global(msg: str) -> str:
    for line in msg.splitlines():
        if "Unsupported global" in line:
            return line.strip()[:200]
    return ""
