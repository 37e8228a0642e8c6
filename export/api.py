"""Export a weights directory and check the written file against the Flax model.

`export_pretrained` is the whole of `export_efficientnet`: nothing is left at the output path
unless the exported file, read back from disk and run (ONNX Runtime for ONNX, a fresh
`jax.export.deserialize` for StableHLO), matches the Flax model on a random batch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from collections.abc import Sequence

import jax
import numpy as np

from flax_effnet.export import onnx_format, stablehlo
from flax_effnet.export.errors import ExportError, OutputPathError, VerificationError
from flax_effnet.export.graph import check_layout, image_size, output_names, serving_metadata
from flax_effnet.infer.predict import resolve_weights_dir
from flax_effnet.pretrained import Pretrained, load_pretrained_full

FORMATS = ("onnx", "stablehlo")
# The layout a format gets unless asked: ONNX's own convention (what ONNX Runtime image
# pipelines and timm/torchvision exports use), and JAX's.
DEFAULT_LAYOUT = {"onnx": "nchw", "stablehlo": "nhwc"}
METADATA_SUFFIX = ".json"
# float32: an exported graph sums in another order than XLA (and, for ONNX, with other
# depthwise and BN kernels); measured up to 1.2e-4 on b3 logits of magnitude ~45 at 48 px.
RELATIVE_TOLERANCE = 1e-4


def verify_tolerance(reference: Sequence[np.ndarray]) -> float:
    """1e-4, scaled by the largest output magnitude when that is above 1."""
    peak = max(float(np.max(np.abs(r))) for r in reference)
    return RELATIVE_TOLERANCE * max(1.0, peak)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What was written and how closely it matches the Flax model."""

    path: Path
    metadata_path: Path | None  # StableHLO's JSON beside the artifact
    format: str
    layout: str
    input_size: tuple[int, int]
    outputs: list[str]
    max_abs_diff: float
    tolerance: float
    verify_batch: int
    export_seconds: float
    verify_seconds: float


def sidecar_path(path: Path) -> Path:
    """Where the StableHLO artifact's metadata goes: `model.stablehlo` -> `model.stablehlo.json`."""
    return path.with_name(path.name + METADATA_SUFFIX)


def check_output_path(path: Path, overwrite: bool) -> None:
    """Refuse an output that exists (unless `overwrite`), is a directory, or whose folder
    cannot be made or written; creates the folder.

    Raises:
      OutputPathError: the message says which.
    """
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory; -o names the file to write")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputPathError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputPathError(f"cannot create the folder of {path}: {e.strerror or e}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write to {path.parent}")


def _temp_sibling(path: Path) -> Path:
    """An empty file beside `path`, with the permissions a plain `open(path, 'w')` would
    give (mkstemp makes it 0600)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    return Path(name)


def _random_batch(batch: int, input_size, seed: int) -> np.ndarray:
    """Normalised-image-like values (standard normal), NHWC."""
    h, w = image_size(input_size)
    return np.random.default_rng(seed).standard_normal((batch, h, w, 3)).astype(np.float32)


def _compare(reference: list[np.ndarray], exported: list[np.ndarray]) -> float:
    if len(reference) != len(exported) or any(
        r.shape != e.shape for r, e in zip(reference, exported)
    ):
        raise VerificationError(
            f"exported outputs {[e.shape for e in exported]} do not have the Flax model's "
            f"shapes {[r.shape for r in reference]}"
        )
    return max(float(np.max(np.abs(r - e))) for r, e in zip(reference, exported))


def export_pretrained(
    directory: str | os.PathLike,
    output: str | os.PathLike,
    *,
    to: str = "onnx",
    layout: str | None = None,
    input_size: int | Sequence[int] | None = None,
    overwrite: bool = False,
    verify_batch: int = 2,
    seed: int = 0,
) -> ExportResult:
    """Export the model of a weights directory, verify the written file, then move it into
    place.

    Args:
      directory: a weights directory (converter output, or a trainer workdir with export/).
      output: the file to write; StableHLO also writes `output + '.json'` (the metadata).
      to: 'onnx' or 'stablehlo'.
      layout: 'nchw' or 'nhwc'; default `DEFAULT_LAYOUT[to]`.
      input_size: int or (height, width); default the saved preprocessing's input size.
      overwrite: replace existing output files.
      verify_batch: rows of the random verification batch (the exported batch dim is dynamic).
      seed: of the verification batch.

    Raises:
      NotAPretrainedDirError: `directory` is not a (readable) weights directory.
      OutputPathError: the output cannot be written.
      ExportError: a bad option, or a missing exporter package.
      VerificationError: the written file differs from the Flax model above the tolerance;
        nothing is left at `output`.
    """
    if to not in FORMATS:
        raise ExportError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    layout = check_layout(layout or DEFAULT_LAYOUT[to])
    if verify_batch < 1:
        raise ExportError(f"verify batch must be positive, got {verify_batch}")
    (onnx_format if to == "onnx" else stablehlo).check_available()
    pretrained: Pretrained = load_pretrained_full(resolve_weights_dir(directory))
    size = image_size(input_size if input_size is not None else pretrained.preprocessing.input_size)
    out = Path(output)
    check_output_path(out, overwrite)
    meta_out = sidecar_path(out) if to == "stablehlo" else None
    if meta_out is not None:
        check_output_path(meta_out, overwrite)

    model, variables = pretrained.model, pretrained.variables
    x = _random_batch(verify_batch, size, seed)
    reference = [np.asarray(r) for r in jax.tree_util.tree_leaves(jax.jit(model.apply)(variables, x))]
    x_in = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "nchw" else x

    temps: list[Path] = []
    try:
        start = time.perf_counter()
        tmp = _temp_sibling(out)
        temps.append(tmp)
        if to == "onnx":
            proto = onnx_format.to_onnx(
                model,
                variables,
                input_size=size,
                layout=layout,
                preprocessing=pretrained.preprocessing,
                class_names=pretrained.class_names,
                source=pretrained.source,
            )
            onnx_format.save_onnx(proto, tmp)
            names = [o.name for o in proto.graph.output]
        else:
            exported = stablehlo.to_stablehlo(model, variables, input_size=size, layout=layout)
            stablehlo.save_stablehlo(exported, tmp)
            names = output_names(model, reference if len(reference) > 1 else reference[0])
            metadata = serving_metadata(
                model,
                pretrained.preprocessing,
                pretrained.class_names,
                input_size=size,
                layout=layout,
                outputs=names,
                source=pretrained.source,
            )
            metadata["platforms"] = list(exported.platforms)
            meta_tmp = _temp_sibling(meta_out)
            temps.append(meta_tmp)
            meta_tmp.write_text(json.dumps(metadata, indent=2) + "\n")
        export_seconds = time.perf_counter() - start

        start = time.perf_counter()
        if to == "onnx":
            got = onnx_format.run_onnx(tmp, x_in)
        else:
            got = stablehlo.run_stablehlo(stablehlo.load_stablehlo(tmp), x_in)
        diff = _compare(reference, got)
        tolerance = verify_tolerance(reference)
        verify_seconds = time.perf_counter() - start
        if not diff <= tolerance:  # NaN fails too
            raise VerificationError(
                f"the exported {to} file differs from the Flax model by {diff:.3g} "
                f"(tolerance {tolerance:.3g}); nothing was written"
            )
        if meta_out is not None:
            os.replace(meta_tmp, meta_out)
        os.replace(tmp, out)
    finally:
        for t in temps:
            t.unlink(missing_ok=True)
    return ExportResult(
        path=out,
        metadata_path=meta_out,
        format=to,
        layout=layout,
        input_size=size,
        outputs=names,
        max_abs_diff=diff,
        tolerance=tolerance,
        verify_batch=verify_batch,
        export_seconds=export_seconds,
        verify_seconds=verify_seconds,
    )
