"""The model registry: every family and every named model, one way in.

A *family* is one linen module class plus the fields that describe its weights (what a weights
directory's config.json saves); compute fields (dtype, depthwise_impl) are never saved, the
caller picks them at load time. A *model name* is timm's name where timm has the model
(`efficientnet_b0`, `tf_efficientnet_b0`, `mobilenetv2_100`, `rexnet_100`, ...) and our own
where it has none (`rexnet_lite_100`); it fixes the module fields that make that model and its
default eval preprocessing (timm's pretrained cfg for that name).

    model = flax_effnet.create_model("mobilenetv2_100", num_classes=5)
    flax_effnet.list_models("rexnet*")

Each family module registers itself when imported, and `flax_effnet/__init__.py` imports every
family module, so `import flax_effnet` fills the registry.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import types
from typing import Any, Callable, Mapping

from flax import linen as nn

from flax_effnet.preprocessing import Preprocessing

# Dataclass fields of every linen module that are not the module's own settings.
_LINEN_FIELDS = frozenset({"parent", "name"})
# Weight fields that do not change the architecture: a model fine-tuned to 5 classes with
# another dropout rate is still `mobilenetv2_100`.
_NOT_ARCHITECTURE = frozenset({"num_classes", "dropout_rate", "drop_path_rate", "bn_momentum"})


@dataclasses.dataclass(frozen=True)
class Family:
    """One linen module class and the fields its weights depend on.

    Attributes:
      name: short id saved in config.json ('efficientnet', 'mobilenetv2', ...).
      module: the linen module class.
      weight_fields: the module fields saved beside the weights (architecture, BN settings,
        classifier size, regularisation defaults); never compute fields such as dtype.
      decode: field -> function turning its JSON value back into a field value (e.g.
        EfficientNet's `variant` dict -> `VariantSpec`). Dataclass values are encoded with
        `dataclasses.asdict`; everything else must already be JSON-able.
    """

    name: str
    module: type[nn.Module]
    weight_fields: tuple[str, ...]
    decode: Mapping[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)

    def encode(self, module: nn.Module) -> dict[str, Any]:
        """The JSON-able weight fields of `module`."""
        out = {}
        for f in self.weight_fields:
            value = getattr(module, f)
            out[f] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out

    def build(self, fields: Mapping[str, Any], **overrides: Any) -> nn.Module:
        """The module from saved (JSON) fields, then `overrides`; unknown fields are errors."""
        values = {k: self.decode[k](v) if k in self.decode else v for k, v in fields.items()}
        values.update(overrides)
        unknown = sorted(set(values) - set(module_fields(self.module)))
        if unknown:
            raise ValueError(
                f"{self.module.__name__} has no field(s) {', '.join(unknown)}; "
                f"known: {', '.join(module_fields(self.module))}"
            )
        return self.module(**values)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A named model: its family, the module fields that make it, its eval preprocessing."""

    name: str
    family: str
    fields: Mapping[str, Any]
    preprocessing: Preprocessing


_FAMILIES: dict[str, Family] = {}
_BY_CLASS: dict[type, Family] = {}
_MODELS: dict[str, ModelEntry] = {}


def module_fields(cls: type[nn.Module]) -> tuple[str, ...]:
    """The settable fields of a linen module class, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _LINEN_FIELDS and f.init)


def register_family(family: Family) -> Family:
    """Add a family; registering a second, different family under a taken name is an error."""
    missing = [f for f in family.weight_fields if f not in module_fields(family.module)]
    if missing:
        raise ValueError(
            f"family {family.name}: {family.module.__name__} has no field(s) {missing}"
        )
    known = _FAMILIES.get(family.name)
    if known is not None and known != family:
        raise ValueError(f"family {family.name!r} is already registered ({known.module.__name__})")
    _FAMILIES[family.name] = family
    _BY_CLASS[family.module] = family
    return family


def get_family(name: str) -> Family:
    """The family registered under `name`."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def family_of(module: nn.Module | type[nn.Module]) -> Family:
    """The family of a module (or module class)."""
    cls = module if isinstance(module, type) else type(module)
    for klass in cls.__mro__:
        if klass in _BY_CLASS:
            return _BY_CLASS[klass]
    raise ValueError(
        f"{cls.__name__} is not a registered model family; known: "
        + ", ".join(f"{f.name} ({f.module.__name__})" for f in _FAMILIES.values())
    )


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add a named model; its fields must be fields of its family's module."""
    family = get_family(entry.family)
    unknown = sorted(set(entry.fields) - set(module_fields(family.module)))
    if unknown:
        raise ValueError(f"model {entry.name}: {family.module.__name__} has no field(s) {unknown}")
    if entry.name in _MODELS and _MODELS[entry.name] != entry:
        raise ValueError(f"model name {entry.name!r} is already registered")
    entry = dataclasses.replace(entry, fields=types.MappingProxyType(dict(entry.fields)))
    _MODELS[entry.name] = entry
    return entry


def model_entry(name: str) -> ModelEntry:
    """The registry entry of a model name."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
      name: a model name (`list_models()`), e.g. 'efficientnet_b0' or 'mobilenetv2_100'.
      **overrides: module fields to set on top of the model's, e.g. `num_classes=10`,
        `dtype=jnp.bfloat16`, `depthwise_impl='conv'`.

    Raises:
      ValueError: unknown name (the message lists the known ones) or unknown field.
    """
    entry = model_entry(name)
    family = get_family(entry.family)
    return family.build({}, **{**entry.fields, **overrides})


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern (`'mobilenetv2_*'`), sorted."""
    return sorted(fnmatch.filter(_MODELS, pattern))


def families() -> tuple[Family, ...]:
    """Every registered family."""
    return tuple(_FAMILIES.values())


def find_model_name(module: nn.Module) -> str | None:
    """The registered name of the architecture `module` has, or None (e.g. a custom width).

    Every weight field but the classifier size and the regularisation rates must equal the
    named model's, defaults included.
    """
    family = family_of(module)
    compared = [f for f in family.weight_fields if f not in _NOT_ARCHITECTURE]
    for entry in _MODELS.values():
        if entry.family == family.name:
            named = family.build({}, **entry.fields)
            if all(getattr(module, f) == getattr(named, f) for f in compared):
                return entry.name
    return None
