"""What a source format is, and how its key table expands into tensors.

A format names the PyTorch module behind each Flax module (jax-resnet style: an explicit table,
no guessing from key order). Its table expands those module pairs into one row per tensor:
torch key, Flax collection/path, layout transform and both shapes, computed from the model's
network spec, so every Flax leaf of the model appears exactly once.

Every format belongs to one family (`flax_effnet.registry`). The EfficientNet formats are
`SourceFormat`s (stem, blocks, head; b0-b7 told apart by a signature of widths and depths);
the other families' formats are `FamilyFormat`s, whose architecture is found by matching the
checkpoint's shapes against the full tables of candidate models. Both offer `family`,
`marker`, `signature`/`excludes` (for detection), `classifier`, `table(model, classifier,
num_classes)` and `eval_preprocessing(model)`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

from flax import linen as nn

from flax_effnet.preprocessing import Preprocessing
from flax_effnet.registry import find_model_name, list_models, model_entry
from flax_effnet.specs import BlockSpec, NetworkSpec, resolve_variant, scale_network

from flax_effnet.convert import layout

# Variants the converter identifies from the tensors (the ones all six sources define).
KNOWN_VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")

# The roles of one MBConv block, in Flax names (`flax_effnet.model.MBConv`).
BLOCK_ROLES = ("conv_exp", "bn_exp", "conv_dw", "bn_dw", "se/reduce", "se/expand", "conv_pwl", "bn_pwl")

# BatchNorm buffers that carry no weights; read by nobody on purpose.
IGNORED_SUFFIXES = (".num_batches_tracked",)

# What the PyTorch-trained families share: symmetric `(k-1)//2` padding and torch's BN
# defaults (eps 1e-5, momentum 0.1 = Flax 0.9).
TORCH_BN = {"padding": "symmetric", "bn_epsilon": 1e-5, "bn_momentum": 0.9}
# Widths a `FamilyFormat` tries after the registered models: 0.25 ... 2.0 in steps of 0.05.
WIDTH_GRID = tuple(round(0.05 * i, 2) for i in range(5, 41))


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    """One PyTorch EfficientNet implementation's naming and conventions.

    Attributes:
      name: short id used by `--format` ('torchvision', 'timm', ...).
      description: one line for help texts and errors.
      padding: 'symmetric' (torch `(k-1)//2`) or 'same' (TF SAME).
      stem: torch module names of the stem (conv, bn).
      head: torch module names of the head (conv, bn).
      classifier: candidate names of the final Linear (the first present is used).
      block: (block spec, global block index) -> {Flax role: torch module name}; roles that the
        block does not have (no expansion when the ratio is 1) are left out.
      blocks_per_stage: torch keys (prefix stripped) -> observed number of blocks per stage.
      bn_epsilon, bn_momentum: variant -> BatchNorm epsilon and *Flax* momentum (1 - torch's).
      preprocessing: variant -> eval preprocessing of the weights this format ships.
      reference: where the PyTorch code lives (for messages and --verify).
      signature: a regex some key (prefix stripped) must match, where another format shares
        the marker (torchvision's MobileNetV2 has `features.0.0.weight` too).
      excludes: a regex no key may match.
    """

    name: str
    description: str
    padding: str
    stem: tuple[str, str]
    head: tuple[str, str]
    classifier: tuple[str, ...]
    block: Callable[[BlockSpec, int], dict[str, str]]
    blocks_per_stage: Callable[[Mapping[str, tuple]], tuple[int, ...]]
    bn_epsilon: Callable[[str], float]
    bn_momentum: Callable[[str], float]
    preprocessing: Callable[[str], Preprocessing]
    reference: str
    signature: str | None = None
    excludes: str | None = None
    family: str = "efficientnet"

    @property
    def marker(self) -> str:
        """The key every checkpoint of this format holds: the stem conv's weight."""
        return f"{self.stem[0]}.weight"

    def fields(self, variant: str) -> dict[str, Any]:
        """The EfficientNet fields of `variant` in this format (padding and BN settings)."""
        return dict(
            variant=variant,
            padding=self.padding,
            bn_epsilon=self.bn_epsilon(variant),
            bn_momentum=self.bn_momentum(variant),
        )

    def table(self, model: nn.Module, classifier: str | None, num_classes: int) -> list["Row"]:
        return key_table(self, scale_network(model.variant), classifier, num_classes)

    def eval_preprocessing(self, model: nn.Module) -> Preprocessing:
        return self.preprocessing(model.variant)


@dataclasses.dataclass(frozen=True)
class FamilyFormat:
    """One PyTorch layout of a family other than EfficientNet.

    Attributes:
      name, description, reference: as in `SourceFormat`.
      family: the registry family the weights load into ('mobilenetv2', 'rexnet', ...).
      marker: a key every checkpoint of this format holds (the stem conv's weight); what
        precedes it is a wrapper prefix.
      signature, excludes: regexes that tell formats sharing a marker apart.
      classifier: candidate torch names of the final layer.
      settings: module fields every model of the format has (padding, BN epsilon/momentum).
      candidates: the architectures (module fields) detection tries, in order: the
        registered models first, then a grid of widths.
      table: (model, classifier or None, num_classes) -> every row of the model's tensors.
      preprocessing: (model, registered name or None) -> eval preprocessing of its weights.
      observed: shapes -> what identifies the architecture, said in words (for errors).
    """

    name: str
    description: str
    family: str
    reference: str
    marker: str
    classifier: tuple[str, ...]
    settings: Mapping[str, Any]
    candidates: Callable[[], Iterable[dict]]
    table: Callable[[nn.Module, str | None, int], list["Row"]]
    preprocessing: Callable[[nn.Module, str | None], Preprocessing]
    observed: Callable[[Mapping[str, tuple]], str]
    signature: str | None = None
    excludes: str | None = None

    def eval_preprocessing(self, model: nn.Module) -> Preprocessing:
        return self.preprocessing(model, find_model_name(model))


@dataclasses.dataclass(frozen=True)
class Row:
    """One tensor: where it comes from, where it goes, and the shapes on both sides."""

    torch_key: str
    flax_path: str  # 'params/stem/conv/kernel', 'batch_stats/stem/bn/mean'
    transform: Callable
    flax_shape: tuple[int, ...]

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return layout.torch_shape(self.transform, self.flax_shape)


def conv_rows(torch: str, flax: str, k: int, cin: int, cout: int) -> list[Row]:
    return [Row(f"{torch}.weight", f"params/{flax}/kernel", layout.conv_kernel, (k, k, cin, cout))]


def depthwise_rows(torch: str, flax: str, k: int, c: int) -> list[Row]:
    return [Row(f"{torch}.weight", f"params/{flax}/kernel", layout.depthwise_kernel, (k, k, 1, c))]


def bn_rows(torch: str, flax: str, c: int) -> list[Row]:
    ident = layout.identity
    return [
        Row(f"{torch}.weight", f"params/{flax}/scale", ident, (c,)),
        Row(f"{torch}.bias", f"params/{flax}/bias", ident, (c,)),
        Row(f"{torch}.running_mean", f"batch_stats/{flax}/mean", ident, (c,)),
        Row(f"{torch}.running_var", f"batch_stats/{flax}/var", ident, (c,)),
    ]


def dense_rows(torch: str, flax: str, cin: int, cout: int, transform: Callable) -> list[Row]:
    return [
        Row(f"{torch}.weight", f"params/{flax}/kernel", transform, (cin, cout)),
        Row(f"{torch}.bias", f"params/{flax}/bias", layout.identity, (cout,)),
    ]


def block_rows(spec: BlockSpec, names: Mapping[str, str]) -> list[Row]:
    """Rows of one MBConv block, given its {Flax role: torch module} names; blocks without
    expansion (ratio 1) or without SE (MobileNetV2) have no such roles."""
    pre = f"blocks_{spec.stage}_{spec.index}"
    e, k = spec.expanded_channels, spec.kernel_size
    has_exp = spec.expanded_channels != spec.in_channels
    expected = set(BLOCK_ROLES) - (set() if has_exp else {"conv_exp", "bn_exp"})
    expected -= set() if spec.se_channels else {"se/reduce", "se/expand"}
    if set(names) != expected:  # a table bug, not a user error
        raise AssertionError(f"{pre}: table gives roles {sorted(names)}, block has {sorted(expected)}")
    rows = []
    if has_exp:
        rows += conv_rows(names["conv_exp"], f"{pre}/conv_exp", 1, spec.in_channels, e)
        rows += bn_rows(names["bn_exp"], f"{pre}/bn_exp", e)
    rows += depthwise_rows(names["conv_dw"], f"{pre}/conv_dw", k, e)
    rows += bn_rows(names["bn_dw"], f"{pre}/bn_dw", e)
    if spec.se_channels:
        rows += dense_rows(names["se/reduce"], f"{pre}/se/reduce", e, spec.se_channels, layout.pointwise_to_dense)
        rows += dense_rows(names["se/expand"], f"{pre}/se/expand", spec.se_channels, e, layout.pointwise_to_dense)
    rows += conv_rows(names["conv_pwl"], f"{pre}/conv_pwl", 1, e, spec.out_channels)
    rows += bn_rows(names["bn_pwl"], f"{pre}/bn_pwl", spec.out_channels)
    return rows


@dataclasses.dataclass(frozen=True)
class Layout:
    """The torch names of a stem / MBConv blocks / head network (what `key_table` reads of a
    `SourceFormat`), for layouts that are not EfficientNet formats (MobileNetV2's)."""

    stem: tuple[str, str]
    head: tuple[str, str]
    block: Callable[[BlockSpec, int], dict[str, str]]


def key_table(fmt: SourceFormat | Layout, net: NetworkSpec, classifier: str | None, num_classes: int) -> list[Row]:
    """Every tensor of `net` in format `fmt`: the full torch key -> Flax path table.

    Args:
      fmt: the source format (or a `Layout`).
      net: the scaled network (`scale_network(variant)`).
      classifier: torch name of the classifier Linear, or None to leave the classifier out.
      num_classes: classifier outputs (ignored when `classifier` is None).
    """
    rows = conv_rows(fmt.stem[0], "stem/conv", 3, 3, net.stem_channels)
    rows += bn_rows(fmt.stem[1], "stem/bn", net.stem_channels)
    for i, spec in enumerate(net.blocks):
        rows += block_rows(spec, fmt.block(spec, i))
    rows += conv_rows(fmt.head[0], "head/conv", 1, net.blocks[-1].out_channels, net.head_channels)
    rows += bn_rows(fmt.head[1], "head/bn", net.head_channels)
    if classifier is not None:
        rows += dense_rows(classifier, "classifier", net.head_channels, num_classes, layout.linear_kernel)
    return rows


def registered_fields(family: str) -> list[dict]:
    """The architecture fields of every registered model of `family`, in name order."""
    return [dict(model_entry(n).fields) for n in list_models() if model_entry(n).family == family]


def count_by_stage(keys, pattern: str, offset: int = 0) -> tuple[int, ...]:
    """Blocks per stage from keys matching `pattern` with groups (stage, index); the first
    stage is numbered `offset` in the keys."""
    seen: dict[int, set] = {}
    rx = re.compile(pattern)
    for key in keys:
        m = rx.match(key)
        if m:
            seen.setdefault(int(m.group(1)) - offset, set()).add(m.group(2))
    return tuple(len(seen.get(s, ())) for s in range(max(seen) + 1)) if seen else ()


def variant_name(variant) -> str:
    return resolve_variant(variant).name
