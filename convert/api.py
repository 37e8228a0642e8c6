"""Python API: a PyTorch state_dict (or file) -> `(module, variables, info)`, for every family.

Conversion is strict (after big_vision's `merge_params`): every Flax leaf is filled exactly
once from the format's key table, every torch key is consumed or ignored on purpose
(`num_batches_tracked`; the classifier when `num_classes` replaces it), and anything else is
reported by name with the expected and the found shape.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from flax import linen as nn

from flax_effnet.layers import dense_init
from flax_effnet.preprocessing import Preprocessing
from flax_effnet.pretrained import check_replaceable, save_pretrained, unflatten_variables
from flax_effnet.registry import find_model_name, get_family, list_models, model_entry

from flax_effnet.convert import pretrained_cfg
from flax_effnet.convert.detect import architecture, detect_format
from flax_effnet.convert.errors import ConversionError, KeyMismatchError, UnknownVariantError
from flax_effnet.convert.formats import effdet
from flax_effnet.convert.formats.base import IGNORED_SUFFIXES
from flax_effnet.convert.io import read_checkpoint, sha256, to_numpy

CONVERTER = "flax_effnet.convert 1"
_MAX_LISTED = 20  # per kind of problem in an error message


@dataclasses.dataclass
class ConversionInfo:
    """What the converter decided, for the report, the saved config and `--verify`.

    Attributes:
      format: source format name (`flax_effnet.convert.FORMATS`: 'torchvision', 'timm',
        'timm_tf', 'efficientnet_pytorch', 'seed000', 'seed004', 'torchvision_mobilenet_v2',
        'seed002', 'timm_mobilenetv2', 'timm_mobilenetv1', 'timm_rexnet', 'seed003',
        'seed003_lite').
      variant: the architecture in words: 'b0'..'b7' for EfficientNet, the registered model
        name or the distinguishing fields ('width 0.5, scale_head True') otherwise.
      family: the model family (`flax_effnet.registry`), e.g. 'efficientnet'.
      model_name: the registered model whose architecture the weights have (e.g.
        'tf_efficientnet_b0'), or None when no registered model matches (torchvision's b5-b7
        keep BN eps 1e-3 with symmetric padding, which no timm name has).
      num_classes: classifier size of the Flax model (0: no classifier).
      classifier: 'converted', 'new' (freshly initialised for `num_classes`), or 'none'.
      padding, bn_epsilon, bn_momentum: the Flax model's settings (momentum in Flax's sense).
      preprocessing: eval preprocessing of these weights.
      preprocessing_source: where `preprocessing` came from (the format's default, a timm
        pretrained_cfg beside the file, an AdvProp tag in its name).
      prefix: key prefix that was stripped ('module.', ...).
      notes: everything detected or assumed, one sentence each.
      ignored: torch keys deliberately not converted.
      num_tensors: torch tensors converted.
      file: provenance when converted from a file (name, sha256, container, EMA, dtypes, kind).
    """

    format: str
    variant: str
    num_classes: int
    classifier: str
    padding: str
    bn_epsilon: float
    bn_momentum: float
    preprocessing: Preprocessing
    preprocessing_source: str = ""
    family: str = "efficientnet"
    model_name: str | None = None
    prefix: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    num_tensors: int = 0
    file: dict[str, Any] = dataclasses.field(default_factory=dict)

    def source(self) -> dict:
        """The provenance block saved in config.json's 'source'."""
        return {
            "format": self.format,
            "family": self.family,
            "model_name": self.model_name,
            "variant": self.variant,
            "classifier": self.classifier,
            "prefix": self.prefix,
            **self.file,
            "preprocessing_from": self.preprocessing_source,
            "notes": list(self.notes),
            "converter": CONVERTER,
        }


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + (",)" if len(shape) == 1 else ")")


def _mismatch_error(fmt, variant, missing, mismatched, unexpected, hint="") -> KeyMismatchError:
    lines = [
        f"{fmt.name} checkpoint ({fmt.description}), "
        f"{'variant' if fmt.family == 'efficientnet' else 'model'} {variant}: the tensors do not match "
        f"the {fmt.name} key table"
    ]

    def listed(title, items, render):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend("    " + render(x) for x in items[:_MAX_LISTED])
            if len(items) > _MAX_LISTED:
                lines.append(f"    ... and {len(items) - _MAX_LISTED} more")

    listed("missing keys", missing, lambda m: f"{m[0]!r}: expected shape {_fmt_shape(m[1])}")
    listed("wrong shapes", mismatched, lambda m: f"{m[0]!r}: expected shape {_fmt_shape(m[1])}, found {_fmt_shape(m[2])}")
    listed("unexpected keys", unexpected, lambda m: f"{m[0]!r}: shape {_fmt_shape(m[1])}")
    if hint:
        lines.append(hint)
    return KeyMismatchError("\n".join(lines), missing, [u[0] for u in unexpected], mismatched)


def _detect_architecture(formats, shapes, given, notes):
    """The first of `formats` (key twins, in order) whose architecture fits the shapes."""
    errors = []
    for fmt in formats:
        try:
            arch = architecture(fmt, shapes, given)
        except UnknownVariantError as e:
            errors.append(e)
            continue
        if len(formats) > 1:
            others = ", ".join(f.name for f in formats if f is not fmt)
            notes.append(f"format {fmt.name}: the shapes fit its architecture ({others} has the same "
                         "keys; where both fit, the networks are the same)")
        notes.append(arch.note)
        return fmt, arch
    raise errors[0]


def _classifier_width(fmt, model) -> int:
    """The number of features the model's classifier reads (from the format's own table)."""
    rows = fmt.table(model, fmt.classifier[0], 1)
    return next(r.flax_shape[0] for r in rows if r.flax_path == "params/classifier/kernel")


def _fill(fmt, label, rows, tensors, prefix, dropped, hint="") -> tuple[dict, set, list]:
    """Fill every Flax leaf of `rows` from `tensors` (keys under `prefix`): returns (flat Flax
    variables, torch keys consumed, keys ignored on purpose: BN counters and `dropped`).

    Raises:
      KeyMismatchError: any row missing or of the wrong shape, or any key left unconsumed
        (keys outside `prefix` included).
    """
    stripped = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    flat: dict[str, np.ndarray] = {}
    missing, mismatched, consumed = [], [], set()
    for row in rows:
        if row.flax_path in flat:  # a table bug: two torch keys for one Flax leaf
            raise AssertionError(f"{fmt.name}: Flax leaf {row.flax_path} filled twice")
        value = stripped.get(row.torch_key)
        if value is None:
            missing.append((prefix + row.torch_key, row.torch_shape))
            continue
        consumed.add(row.torch_key)
        if tuple(value.shape) != row.torch_shape:
            mismatched.append((prefix + row.torch_key, row.torch_shape, tuple(value.shape)))
            continue
        flat[row.flax_path] = np.ascontiguousarray(row.transform(value))
    ignored = sorted(k for k in stripped if k.endswith(IGNORED_SUFFIXES)) + list(dropped)
    unexpected = [
        (prefix + k, tuple(stripped[k].shape)) for k in sorted(stripped) if k not in consumed and k not in set(ignored)
    ] + [(k, tuple(v.shape)) for k, v in tensors.items() if not k.startswith(prefix)]
    if missing or mismatched or unexpected:
        raise _mismatch_error(fmt, label, missing, mismatched, unexpected, hint)
    return flat, consumed, ignored


def _convert_detector(fmt, arch, tensors, prefix, notes, num_classes, hints, hint=""):
    """`convert_state_dict` for EfficientDet: the class count is the class head's outputs per
    anchor; `num_classes` N replaces that head's prediction conv with a fresh N-way one. `hint`
    ends a key-mismatch error (what was matched against)."""
    family = get_family(fmt.family)
    # effdet's DetBenchTrain / DetBenchPredict save their anchors beside `model.`: derived from
    # the input size, rebuilt from the model's AnchorSpec, so not weights.
    bench = sorted(k for k in tensors if not k.startswith(prefix) and k.endswith("anchors.boxes"))
    if bench:
        notes.append(f"effdet bench wrapper: {', '.join(bench)} not converted (anchors follow from the model's AnchorSpec)")
        tensors = {k: v for k, v in tensors.items() if k not in bench}
    stripped = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    shapes = {k: tuple(v.shape) for k, v in stripped.items()}
    base = family.build(arch.fields)
    found = effdet.checkpoint_classes(base, shapes)
    dropped: list[str] = []
    if num_classes is None:
        if found is None:
            key = f"{effdet.CLASS_PREDICT}.conv_pw.weight"
            raise _mismatch_error(
                fmt, arch.label, [], [(prefix + key, (f"{base.anchors.num_anchors} * num_classes", base.fpn_channels, 1, 1), shapes.get(key))], []
            )
        num_classes, classifier, state = found, effdet.CLASS_PREDICT, "converted"
    elif num_classes < 1:
        raise ConversionError(f"a detector needs num_classes >= 1, got {num_classes}")
    else:
        classifier, state = None, "new"
        dropped = sorted(k for k in stripped if k.startswith(effdet.CLASS_PREDICT + "."))
        notes.append(f"checkpoint class prediction conv dropped ({', '.join(dropped) or 'none present'}); "
                     f"new {num_classes}-class one initialised (seed 0, class bias at prior 0.01)")
    model = family.build(arch.fields, num_classes=num_classes)
    name = find_model_name(model)
    if name is not None:
        # tf_efficientdet_d6 and _d7 hold the same tensors: a name that came with the file decides.
        twins = effdet.twin_names(model, [n for n in list_models("*efficientdet_*")])
        named = [t for t in twins if any(t in h.lower() for h in hints)]
        pick = max(named, key=len) if named else name
        if pick != name:
            model = family.build({**model_entry(pick).fields}, num_classes=num_classes)
            name = pick
            notes.append(f"model {pick} chosen from the names that came with the file ({', '.join(twins)} hold the same tensors)")
        elif len(twins) > 1:
            notes.append(f"{', '.join(twins)} hold the same tensors and nothing names one: ASSUMED {name}; "
                         f"pass --model {' or --model '.join(t for t in twins if t != name)} otherwise")
    rows = fmt.table(model, classifier, num_classes)
    flat, consumed, ignored = _fill(fmt, name or arch.label, rows, tensors, prefix, dropped, hint)
    if classifier is None:
        flat.update(effdet.new_class_predict(model, num_classes))
    info = _conversion_info(
        fmt, model, family, variant=name or arch.label, num_classes=num_classes,
        classifier=state, model_name=name, prefix=prefix, notes=notes,
        ignored=bench + [prefix + k for k in ignored], num_tensors=len(consumed),
    )
    return model, unflatten_variables(flat), info


def _conversion_info(fmt, model, family, **fields) -> ConversionInfo:
    """The report of a conversion: what the format and the built model fix, plus `fields`."""
    return ConversionInfo(
        format=fmt.name,
        padding=model.padding,
        bn_epsilon=model.bn_epsilon,
        bn_momentum=model.bn_momentum,
        preprocessing=fmt.eval_preprocessing(model),
        preprocessing_source=f"{fmt.name} default for this architecture",
        family=family.name,
        **fields,
    )


def convert_state_dict(
    state_dict: Mapping[str, Any],
    format: str | None = None,
    variant: str | None = None,
    *,
    num_classes: int | None = None,
    hints: tuple[str, ...] | list[str] = (),
) -> tuple[nn.Module, dict, ConversionInfo]:
    """Convert an in-memory PyTorch state_dict.

    Args:
      state_dict: torch key -> tensor (torch.Tensor or numpy array), optionally wrapped in a
        prefix such as 'module.'.
      format: source format name; detected from the keys when None.
      variant: the architecture instead of detecting it: a registered model name of the
        format's family ('mobilenetv2_100', 'rexnet_130', 'tf_efficientnet_b3', ...) or, for
        EfficientNet, 'b0'..'b7'. Detected from the shapes when None.
      num_classes: None keeps the checkpoint's classifier; N > 0 drops it and attaches a
        freshly initialised N-way classifier (for fine-tuning); 0 drops it (a backbone).
      hints: strings that may name the architecture (decide timm vs tf_ timm).

    Returns:
      (model, variables, info): `model.apply(variables, x)` reproduces the PyTorch model;
      `model` is of the format's family (EfficientNet, MobileNetV2, ReXNet, ...).

    Raises:
      UnknownFormatError, UnknownVariantError, KeyMismatchError (all ConversionError).
    """
    tensors = {str(k): to_numpy(v) for k, v in state_dict.items()}
    if variant is not None:
        hints = (variant, *hints)  # 'tf_efficientnet_b0' also decides timm vs timm_tf
    formats, prefix, notes = detect_format(list(tensors), hints, format)
    stripped = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    shapes = {k: tuple(v.shape) for k, v in stripped.items()}
    try:
        fmt, arch = _detect_architecture(formats, shapes, variant, notes)
    except UnknownVariantError:
        # A detector checkpoint a few tensors off a registered model: name those tensors.
        close = effdet.closest_model(shapes) if variant is None and formats[0].family == "efficientdet" else None
        if close is None:
            raise
        name, fit, total = close
        fmt, arch = formats[0], architecture(formats[0], shapes, name)
        hint = f"  No registered model has these shapes; the closest, {name}, fits {fit} of its {total} tensors."
        return _convert_detector(fmt, arch, tensors, prefix, notes, num_classes, hints, hint)
    if fmt.family == "efficientdet":
        return _convert_detector(fmt, arch, tensors, prefix, notes, num_classes, hints)
    family = get_family(fmt.family)
    label = arch.label
    features = _classifier_width(fmt, family.build(arch.fields))

    present = [c for c in fmt.classifier if f"{c}.weight" in stripped or f"{c}.bias" in stripped]
    dropped: list[str] = []
    if num_classes is None:
        if not present:
            raise _mismatch_error(
                fmt, label, [(f"{fmt.classifier[0]}.weight", ("num_classes", features))], [], [],
                hint="  No classifier: pass --num-classes N (num_classes=N) to attach a new N-way "
                "classifier, or 0 to convert the backbone only.",
            )
        classifier = present[0]
        w = stripped.get(f"{classifier}.weight")
        # A Linear (N, C), or a 1x1 conv (N, C, 1, 1) on pooled features (clovaai's ReXNet).
        num_classes = int(w.shape[0]) if w is not None and w.ndim in (2, 4) else -1
        if num_classes <= 0:
            raise _mismatch_error(
                fmt, label, [], [(f"{classifier}.weight", ("num_classes", features), shapes.get(f"{classifier}.weight"))], []
            )
        classifier_state = "converted"
    else:
        if num_classes < 0:
            raise ConversionError(f"num_classes must be >= 0, got {num_classes}")
        classifier = None
        dropped = sorted(k for k in stripped if any(k.startswith(c + ".") for c in present))
        classifier_state = "new" if num_classes else "none"
        notes.append(
            f"checkpoint classifier dropped ({', '.join(dropped) or 'none present'}); "
            + (f"new {num_classes}-way classifier initialised (seed 0)" if num_classes else "no classifier (backbone)")
        )
    model = family.build(arch.fields, num_classes=num_classes)
    flat, consumed, ignored = _fill(fmt, label, fmt.table(model, classifier, num_classes), tensors, prefix, dropped)

    if classifier is None and num_classes:
        # Same initialiser as a freshly built model's classifier.
        kernel = dense_init(jax.random.key(0), (features, num_classes))
        flat["params/classifier/kernel"] = np.asarray(kernel, np.float32)
        flat["params/classifier/bias"] = np.zeros((num_classes,), np.float32)

    info = _conversion_info(
        fmt, model, family, variant=label, num_classes=num_classes,
        classifier=classifier_state, model_name=find_model_name(model), prefix=prefix,
        notes=notes, ignored=[prefix + k for k in ignored], num_tensors=len(consumed),
    )
    return model, unflatten_variables(flat), info


def convert_file(
    src: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    format: str | None = None,
    variant: str | None = None,
    num_classes: int | None = None,
    use_ema: bool = False,
    unsafe: bool = False,
    overwrite: bool = False,
) -> tuple[nn.Module, dict, ConversionInfo]:
    """Convert a checkpoint file, and write a weights directory when `out` is given.

    Args:
      src: `.pth`/`.pt`/`.bin` (torch) or `.safetensors` file.
      out: directory to write (config.json + variables.safetensors) for `load_pretrained`;
        written to a temporary sibling and renamed, so a failure leaves nothing behind.
      format, variant, num_classes: as in `convert_state_dict`.
      use_ema: take EMA weights from a container holding both (default: regular weights).
      unsafe: allow pickled modules / TorchScript (executes code from the file).
      overwrite: replace an existing `out`, if it is a weights directory holding nothing else.

    Returns:
      (model, variables, info).
    """
    if out is not None:
        check_replaceable(out, overwrite)  # before reading: refuse an output that may not be replaced
    ckpt = read_checkpoint(src, use_ema=use_ema, unsafe=unsafe)
    model, variables, info = convert_state_dict(
        ckpt.tensors, format, variant, num_classes=num_classes, hints=tuple(ckpt.hints)
    )
    info.notes = ckpt.notes + info.notes
    info.preprocessing, info.preprocessing_source, prep_notes = pretrained_cfg.resolve(
        info.preprocessing, ckpt.pretrained_cfg, ckpt.hints, info.format
    )
    info.notes += prep_notes
    if not ckpt.container:
        info.notes.insert(0, "plain state_dict" + (" (EMA weights)" if ckpt.ema else ""))
    info.file = {
        "file": Path(src).name,
        "sha256": sha256(src),
        "container": ckpt.container,
        "weights": "ema" if ckpt.ema else "regular",
        "file_kind": ckpt.kind,
        "stored_dtypes": ckpt.source_dtypes or ["float32"],
    }
    if out is not None:
        save_pretrained(out, model, variables, info.preprocessing, source=info.source(), overwrite=overwrite)
    return model, variables, info
