"""Which format and which variant a state_dict is.

Format: each format's stem-conv key (`SourceFormat.marker`) is looked for at the end of the keys;
what precedes it is a wrapper prefix (`module.`, `_orig_mod.`, `model.`, ...) to strip.
timm's `efficientnet_bX` and `tf_efficientnet_bX` hold identical tensors, so hints decide
(an `arch` field, a neighbouring config.json, the file name) or the caller's `format=`.
Variant: stem width, head width and blocks per stage identify b0-b7; the full key table
then checks every shape.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Mapping, Sequence

from flax_effnet.specs import scale_network

from flax_effnet.convert.errors import UnknownFormatError, UnknownVariantError
from flax_effnet.convert.formats import FORMATS, KNOWN_VARIANTS, SourceFormat


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
) -> tuple[SourceFormat, str, list[str]]:
    """Find the source format and the key prefix.

    Args:
      keys: the state_dict's keys.
      hints: strings that may name the architecture, most trusted first.
      format: a format name to use instead of detecting one.

    Returns:
      (format, prefix to strip, notes saying what was assumed).

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
        return fmt, prefix, notes + _prefix_note(prefix)

    matches = {}
    for fmt in FORMATS.values():
        prefix = find_prefix(keys, fmt.marker)
        if prefix is not None:
            matches[fmt.name] = (fmt, prefix)
    if not matches:
        raise UnknownFormatError(
            f"not an EfficientNet checkpoint of a supported format. Recognised: {_recognised(keys)}. "
            f"Supported formats: {_supported()}"
        )
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
        return fmt, prefix, notes + _prefix_note(prefix)
    if len(matches) > 1:
        raise UnknownFormatError(
            f"keys of several formats at once ({', '.join(matches)}); pass --format. "
            f"Recognised: {_recognised(keys)}"
        )
    fmt, prefix = next(iter(matches.values()))
    notes.append(f"format {fmt.name} detected from key {prefix + fmt.marker!r}")
    return fmt, prefix, notes + _prefix_note(prefix)


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
