"""Which format, family and architecture a state_dict is.

Format: each format's stem-conv key (`marker`) is looked for at the end of the keys; what
precedes it is a wrapper prefix (`module.`, `_orig_mod.`, `model.`, ...) to strip. Formats
sharing a marker are told apart by a key pattern (`signature`, `excludes`): torchvision's
EfficientNet has `.block.` keys, its MobileNetV2 `.conv.` keys. Two pairs hold identical
keys: timm's `efficientnet_bX` and `tf_efficientnet_bX` (hints decide: an `arch` field, a
neighbouring config.json, the file name, or the caller's `format=`), and torchvision's and
seed 002's MobileNetV2 (the head width decides: only the seed scales it below width 1).

Architecture: for EfficientNet, stem width, head width and blocks per stage identify b0-b7.
For the other families, the checkpoint's keys and shapes must equal the full table of one
candidate model (the registered ones, then a grid of widths). The full key table then checks
every shape either way.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Mapping, Sequence

from flax_effnet.registry import find_model_name, get_family, list_models, model_entry
from flax_effnet.specs import scale_network

from flax_effnet.convert.errors import UnknownFormatError, UnknownVariantError
from flax_effnet.convert.formats import FORMATS, KNOWN_VARIANTS, FamilyFormat, SourceFormat
from flax_effnet.convert.formats.base import IGNORED_SUFFIXES, variant_name

# Formats with identical keys, tried in this order when both match (the first whose
# architecture fits the shapes wins).
_KEY_TWINS = (("torchvision_mobilenet_v2", "seed002"),)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What detection decided: the module fields (family's), a label and how it was found."""

    fields: dict[str, Any]
    label: str
    note: str


@dataclasses.dataclass(frozen=True)
class Signature:
    """What identifies a variant: stem width, head width, blocks per stage."""

    stem: int
    head: int
    blocks: tuple[int, ...]

    def __str__(self):
        return f"stem {self.stem}, head {self.head}, blocks per stage {list(self.blocks)}"


def variant_signature(variant: str) -> Signature:
    net = scale_network(variant)
    counts = collections.Counter(b.stage for b in net.blocks)
    return Signature(net.stem_channels, net.head_channels, tuple(counts[s] for s in sorted(counts)))


def find_prefix(keys: Sequence[str], marker: str) -> str | None:
    """The wrapper prefix in front of `marker`, '' if none, None if the marker is absent."""
    found = [k[: -len(marker)] for k in keys if k.endswith(marker)]
    found = [p for p in found if p == "" or p.endswith(".")]
    if not found:
        return None
    # Several candidates (a model nested in a model): the shortest prefix that most keys share.
    return max(found, key=lambda p: (sum(k.startswith(p) for k in keys), -len(p)))


def _supported() -> str:
    return "; ".join(f"{f.name} ({f.description}; stem key {f.marker!r})" for f in FORMATS.values())


def recognises(fmt, keys: Sequence[str], prefix: str) -> bool:
    """Whether the keys (under `prefix`) have the format's signature and none of its excluded keys."""
    stripped = [k[len(prefix):] for k in keys if k.startswith(prefix)]
    if fmt.signature and not any(re.match(fmt.signature, k) for k in stripped):
        return False
    return not (fmt.excludes and any(re.search(fmt.excludes, k) for k in stripped))


def _recognised(keys: Sequence[str]) -> str:
    groups = collections.Counter(k.split(".")[0] for k in keys)
    top = ", ".join(f"{g} ({n})" for g, n in groups.most_common(8))
    return f"{len(keys)} tensors; top-level names: {top}; first keys: {list(keys)[:5]}"


def _timm_kind(hints: Sequence[str]) -> tuple[str | None, str | None]:
    """'timm_tf' or 'timm' from the first hint that names an EfficientNet, with that hint."""
    for hint in hints:
        h = hint.lower()
        if "tf_efficientnet" in h or "tf-efficientnet" in h:
            return "timm_tf", hint
        if "efficientnet" in h:
            return "timm", hint
    return None, None


def detect_format(
    keys: Sequence[str], hints: Sequence[str] = (), format: str | None = None
) -> tuple[list[SourceFormat | FamilyFormat], str, list[str]]:
    """Find the source format and the key prefix.

    Args:
      keys: the state_dict's keys.
      hints: strings that may name the architecture, most trusted first.
      format: a format name to use instead of detecting one.

    Returns:
      (formats to try in order: one, or key twins that only the shapes tell apart; prefix to
      strip; notes saying what was assumed).

    Raises:
      UnknownFormatError: no supported format's keys, or `format` does not match the keys.
    """
    keys = list(keys)
    notes = []
    if format is not None:
        if format not in FORMATS:
            raise UnknownFormatError(f"unknown --format {format!r}; supported: {', '.join(FORMATS)}")
        fmt = FORMATS[format]
        prefix = find_prefix(keys, fmt.marker)
        if prefix is None:
            raise UnknownFormatError(
                f"--format {format}: no key ends in {fmt.marker!r}, so this is not a {format} "
                f"checkpoint. Recognised: {_recognised(keys)}. Supported formats: {_supported()}"
            )
        notes.append(f"format {format} given by the caller")
        return [fmt], prefix, notes + _prefix_note(prefix)

    matches = {}
    for fmt in FORMATS.values():
        prefix = find_prefix(keys, fmt.marker)
        if prefix is not None and recognises(fmt, keys, prefix):
            matches[fmt.name] = (fmt, prefix)
    # A format found under a longer prefix than another is a model nested in that one (effdet's
    # timm backbone under `backbone.`): the outer model is what the file holds.
    matches = {
        n: (f, p) for n, (f, p) in matches.items()
        if not any(p != q and p.startswith(q) for _, q in matches.values())
    }
    if not matches:
        raise UnknownFormatError(
            f"not a checkpoint of a supported format. Recognised: {_recognised(keys)}. "
            f"Supported formats: {_supported()}"
        )
    for twins in _KEY_TWINS:
        if set(matches) == set(twins):
            prefix = matches[twins[0]][1]
            notes.append(f"{' / '.join(twins)} keys detected from key {prefix + matches[twins[0]][0].marker!r}")
            return [matches[t][0] for t in twins], prefix, notes + _prefix_note(prefix)
    if set(matches) == {"timm", "timm_tf"}:
        kind, hint = _timm_kind(hints)
        if kind is None:
            kind = "timm"
            notes.append(
                "timm keys; efficientnet_bX and tf_efficientnet_bX hold identical tensors and nothing "
                "in or beside the file names the architecture: ASSUMED timm efficientnet_bX "
                "(symmetric padding, BN eps 1e-5). Pass --format timm_tf for tf_efficientnet_bX."
            )
        else:
            notes.append(f"timm keys; {kind} chosen from {hint!r}")
        fmt, prefix = matches[kind]
        return [fmt], prefix, notes + _prefix_note(prefix)
    if len(matches) > 1:
        raise UnknownFormatError(
            f"keys of several formats at once ({', '.join(matches)}); pass --format. "
            f"Recognised: {_recognised(keys)}"
        )
    fmt, prefix = next(iter(matches.values()))
    notes.append(f"format {fmt.name} detected from key {prefix + fmt.marker!r}")
    return [fmt], prefix, notes + _prefix_note(prefix)


def _prefix_note(prefix: str) -> list[str]:
    return [f"stripped key prefix {prefix!r}"] if prefix else []


def observed_signature(fmt: SourceFormat, shapes: Mapping[str, tuple]) -> Signature:
    """Stem width, head width and blocks per stage as the tensors show them."""
    stem = shapes.get(f"{fmt.stem[0]}.weight")
    head = shapes.get(f"{fmt.head[0]}.weight")
    return Signature(
        stem[0] if stem else -1,
        head[0] if head else -1,
        tuple(fmt.blocks_per_stage(shapes)),
    )


def detect_variant(fmt: SourceFormat, shapes: Mapping[str, tuple]) -> str:
    """The variant (b0-b7) whose stem, head and depth match the tensors.

    Raises:
      UnknownVariantError: no variant matches; the message lists every variant's signature.
    """
    seen = observed_signature(fmt, shapes)
    for v in KNOWN_VARIANTS:
        if variant_signature(v) == seen:
            return v
    table = "; ".join(f"{v}: {variant_signature(v)}" for v in KNOWN_VARIANTS)
    raise UnknownVariantError(
        f"{fmt.name} checkpoint with {seen} matches no EfficientNet variant "
        f"({'head conv ' + repr(fmt.head[0]) + ' missing; ' if seen.head < 0 else ''}"
        f"known: {table}). Pass --variant to check it against one variant's full key table."
    )


def architecture(
    fmt: SourceFormat | FamilyFormat, shapes: Mapping[str, tuple], given: str | None = None
) -> Architecture:
    """The module fields of the model the checkpoint holds.

    Args:
      fmt: the format.
      shapes: torch key (prefix stripped) -> shape.
      given: the caller's choice instead of detection: a registered model name of the
        format's family, or for EfficientNet also 'b0'..'b7'.

    Raises:
      UnknownVariantError: nothing fits (detection), or `given` is no model of this family.
    """
    if given is not None:
        return _given_architecture(fmt, given)
    if isinstance(fmt, SourceFormat):
        variant = detect_variant(fmt, shapes)
        return Architecture(fmt.fields(variant), variant, f"variant {variant} detected from {observed_signature(fmt, shapes)}")
    return _matching_candidate(fmt, shapes)


def _given_architecture(fmt, given: str) -> Architecture:
    try:
        entry = model_entry(given)
    except ValueError:
        entry = None
    if isinstance(fmt, SourceFormat):
        variant = entry.fields["variant"] if entry is not None and entry.family == "efficientnet" else given
        try:
            variant = variant_name(variant)
        except ValueError as e:
            raise UnknownVariantError(f"{fmt.name} is an EfficientNet format: {e}") from None
        return Architecture(fmt.fields(variant), variant, f"variant {variant} given by the caller")
    if entry is None or entry.family != fmt.family:
        what = "not a registered model" if entry is None else f"a {entry.family} model"
        raise UnknownVariantError(
            f"{given!r} is {what}; a {fmt.name} checkpoint holds a {fmt.family} model. "
            f"Known: {', '.join(registered_names(fmt.family))}"
        )
    return Architecture({**entry.fields, **fmt.settings}, given, f"model {given} given by the caller")


def registered_names(family: str) -> list[str]:
    return [n for n in list_models() if model_entry(n).family == family]


def _matching_candidate(fmt: FamilyFormat, shapes: Mapping[str, tuple]) -> Architecture:
    """The first candidate whose full table (classifier aside) has exactly the checkpoint's keys
    and shapes."""
    body = {
        k: s for k, s in shapes.items()
        if not k.endswith(IGNORED_SUFFIXES) and not any(k.startswith(c + ".") for c in fmt.classifier)
    }  # fmt: skip
    family = get_family(fmt.family)
    for candidate in fmt.candidates():
        fields = {**candidate, **fmt.settings}
        rows = fmt.table(family.build(fields, num_classes=0), None, 0)
        if len(rows) == len(body) and all(body.get(r.torch_key) == r.torch_shape for r in rows):
            model = family.build(fields)
            name = find_model_name(model)
            label = name or ", ".join(f"{k} {v}" for k, v in candidate.items())
            return Architecture(fields, label, f"{label} detected from {fmt.observed(shapes)}")
    raise UnknownVariantError(
        f"{fmt.name} checkpoint with {fmt.observed(shapes)} matches no {family.module.__name__} "
        f"this format describes (tried {', '.join(registered_names(fmt.family))} and widths in "
        "steps of 0.05). Pass --model NAME to check it against one model's full key table."
    )
