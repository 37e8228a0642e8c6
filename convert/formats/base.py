"""What a source format is, and how its key table expands into tensors.

A format names the PyTorch module behind each Flax module (jax-resnet style: an explicit table,
no guessing from key order). `key_table` expands those module pairs into one row per tensor:
torch key, Flax collection/path, layout transform and both shapes, computed from the scaled
network spec, so every Flax leaf of `EfficientNet` appears exactly once.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping

from flax_effnet.preprocessing import Preprocessing
from flax_effnet.specs import BlockSpec, NetworkSpec, resolve_variant

from flax_effnet.convert import layout

# Variants the converter identifies from the tensors (the ones all six sources define).
KNOWN_VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")

# The roles of one MBConv block, in Flax names (`flax_effnet.model.MBConv`).
BLOCK_ROLES = ("conv_exp", "bn_exp", "conv_dw", "bn_dw", "se/reduce", "se/expand", "conv_pwl", "bn_pwl")

# BatchNorm buffers that carry no weights; read by nobody on purpose.
IGNORED_SUFFIXES = (".num_batches_tracked",)


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

    @property
    def marker(self) -> str:
        """The key every checkpoint of this format holds: the stem conv's weight."""
        return f"{self.stem[0]}.weight"


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


def _conv(torch: str, flax: str, k: int, cin: int, cout: int) -> list[Row]:
    return [Row(f"{torch}.weight", f"params/{flax}/kernel", layout.conv_kernel, (k, k, cin, cout))]


def _depthwise(torch: str, flax: str, k: int, c: int) -> list[Row]:
    return [Row(f"{torch}.weight", f"params/{flax}/kernel", layout.depthwise_kernel, (k, k, 1, c))]


def _bn(torch: str, flax: str, c: int) -> list[Row]:
    ident = layout.identity
    return [
        Row(f"{torch}.weight", f"params/{flax}/scale", ident, (c,)),
        Row(f"{torch}.bias", f"params/{flax}/bias", ident, (c,)),
        Row(f"{torch}.running_mean", f"batch_stats/{flax}/mean", ident, (c,)),
        Row(f"{torch}.running_var", f"batch_stats/{flax}/var", ident, (c,)),
    ]


def _dense(torch: str, flax: str, cin: int, cout: int, transform: Callable) -> list[Row]:
    return [
        Row(f"{torch}.weight", f"params/{flax}/kernel", transform, (cin, cout)),
        Row(f"{torch}.bias", f"params/{flax}/bias", layout.identity, (cout,)),
    ]


def block_rows(spec: BlockSpec, names: Mapping[str, str]) -> list[Row]:
    """Rows of one MBConv block, given its {Flax role: torch module} names."""
    pre = f"blocks_{spec.stage}_{spec.index}"
    e, k = spec.expanded_channels, spec.kernel_size
    has_exp = spec.expanded_channels != spec.in_channels
    expected = set(BLOCK_ROLES) - (set() if has_exp else {"conv_exp", "bn_exp"})
    if set(names) != expected:  # a table bug, not a user error
        raise AssertionError(f"{pre}: table gives roles {sorted(names)}, block has {sorted(expected)}")
    rows = []
    if has_exp:
        rows += _conv(names["conv_exp"], f"{pre}/conv_exp", 1, spec.in_channels, e)
        rows += _bn(names["bn_exp"], f"{pre}/bn_exp", e)
    rows += _depthwise(names["conv_dw"], f"{pre}/conv_dw", k, e)
    rows += _bn(names["bn_dw"], f"{pre}/bn_dw", e)
    rows += _dense(names["se/reduce"], f"{pre}/se/reduce", e, spec.se_channels, layout.pointwise_to_dense)
    rows += _dense(names["se/expand"], f"{pre}/se/expand", spec.se_channels, e, layout.pointwise_to_dense)
    rows += _conv(names["conv_pwl"], f"{pre}/conv_pwl", 1, e, spec.out_channels)
    rows += _bn(names["bn_pwl"], f"{pre}/bn_pwl", spec.out_channels)
    return rows


def key_table(fmt: SourceFormat, net: NetworkSpec, classifier: str | None, num_classes: int) -> list[Row]:
    """Every tensor of `net` in format `fmt`: the full torch key -> Flax path table.

    Args:
      fmt: the source format.
      net: the scaled network (`scale_network(variant)`).
      classifier: torch name of the classifier Linear, or None to leave the classifier out.
      num_classes: classifier outputs (ignored when `classifier` is None).
    """
    rows = _conv(fmt.stem[0], "stem/conv", 3, 3, net.stem_channels)
    rows += _bn(fmt.stem[1], "stem/bn", net.stem_channels)
    for i, spec in enumerate(net.blocks):
        rows += block_rows(spec, fmt.block(spec, i))
    rows += _conv(fmt.head[0], "head/conv", 1, net.blocks[-1].out_channels, net.head_channels)
    rows += _bn(fmt.head[1], "head/bn", net.head_channels)
    if classifier is not None:
        rows += _dense(classifier, "classifier", net.head_channels, num_classes, layout.linear_kernel)
    return rows


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
