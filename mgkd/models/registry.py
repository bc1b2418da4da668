"""Architectures declare themselves: what the rest of mgkd may know about a model, in one place.

Each architecture's file registers its class with `@register(...)`: its
registry name, its task, the output lists its forward fills on request (what
the internal-representation loss can match), its layer stacks (what the shrink
schedule makes fewer and layer cutting copies), its hidden width, a one-line
description and its config check. The schedule, the `internal` loss, layer
cutting, the lineage table and the CLI read these declarations, so adding an
architecture is its own file plus its test (see tests/unit/test_architecture_registry.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from mgkd.config import ModelConfig
from mgkd.errors import MgkdError

# The output lists a forward may fill (`mgkd.outputs`), by (side, feature) as layer maps name them.
# The decoder's cross-attention is no layer-map feature: it is left out.
FEATURE_FIELDS: dict[tuple[str, str], str] = {
    ("encoder", "hidden"): "encoder_hidden",
    ("encoder", "attention"): "encoder_attention",
    ("decoder", "hidden"): "decoder_hidden",
    ("decoder", "attention"): "decoder_self_attention",
}
SEQ2SEQ_LAYERS = (("encoder", "encoder_layers"), ("decoder", "decoder_layers"))
ENCODER_LAYERS = SEQ2SEQ_LAYERS[:1]


def _no_check(cfg: ModelConfig) -> None:
    return None


def _model_width(cfg: ModelConfig, side: str) -> int:
    return cfg.d_model


@dataclass(frozen=True)
class Architecture:
    """One architecture's declaration (see the module docstring)."""

    name: str
    task: str  # the ExperimentConfig.task whose batches it reads
    description: str
    cls: type[nn.Module]
    # Output fields (`mgkd.outputs`) its forward fills on request (return_hidden/return_attention).
    exposes: frozenset[str]
    # Its layer stacks, bottom-up: (side, the ModelConfig field holding the stack's layer count).
    layers: tuple[tuple[str, str], ...]
    # True when `init: cut` may copy a teacher's layers into it: its stacks live under `<side>.<i>`
    # in the state dict and every layer of a stack has one shape.
    cuttable: bool = False
    # The config check of this architecture's sizes; raises ValueError (or MgkdError) saying what to change.
    check: Callable[[ModelConfig], None] = _no_check
    # The width of a side's hidden states (what an internal-loss projection maps from or to).
    hidden_width: Callable[[ModelConfig, str], int] = _model_width
    # How many entries each exposed per-layer list holds for a side (None: one per layer of the stack).
    feature_layers: Callable[[ModelConfig, str], int] | None = None
    # Extra constructor arguments the data supplies (e.g. a classifier's num_classes).
    data_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def features(self) -> frozenset[tuple[str, str]]:
        """The (side, feature) pairs a layer map may name for this architecture."""
        return frozenset(key for key, name in FEATURE_FIELDS.items() if name in self.exposes)

    def layer_count(self, cfg: ModelConfig, side: str) -> int:
        """How many layers of `side` a layer map may name (1-based indices run 1..this)."""
        if self.feature_layers is not None:
            return self.feature_layers(cfg, side)
        fields = dict(self.layers)
        return int(getattr(cfg, fields[side])) if side in fields else 0

    def summary(self, sizes: dict[str, Any]) -> str:
        """A short size label, e.g. `d128 2+2` (encoder+decoder layers) or `d128 4L` (one stack)."""
        counts = [str(sizes.get(f, "?")) for _, f in self.layers]
        depth = f"{counts[0]}L" if len(counts) == 1 else "+".join(counts)
        return f"d{sizes.get('d_model', '?')} {depth}"


_ARCHITECTURES: dict[str, Architecture] = {}
M = TypeVar("M", bound=type[nn.Module])


def register(
    name: str,
    *,
    task: str,
    description: str,
    exposes: frozenset[str] | set[str],
    layers: tuple[tuple[str, str], ...],
    cuttable: bool = False,
    check: Callable[[ModelConfig], None] = _no_check,
    hidden_width: Callable[[ModelConfig, str], int] = _model_width,
    feature_layers: Callable[[ModelConfig, str], int] | None = None,
    data_args: tuple[str, ...] = (),
) -> Callable[[M], M]:
    """Class decorator: make a model class a configurable architecture under `name`."""

    def add(cls: M) -> M:
        unknown = set(exposes) - set(FEATURE_FIELDS.values()) - {"decoder_cross_attention"}
        if unknown:
            raise TypeError(f"architecture {name!r} exposes unknown output field(s) {sorted(unknown)}")
        if name in _ARCHITECTURES and _ARCHITECTURES[name].cls is not cls:
            raise ValueError(f"architecture {name!r} is already registered by {_ARCHITECTURES[name].cls.__qualname__}")
        _ARCHITECTURES[name] = Architecture(
            name, task, description, cls, frozenset(exposes), tuple(layers), cuttable, check, hidden_width,
            feature_layers, tuple(data_args),
        )  # fmt: skip
        return cls

    return add


def unregister(name: str) -> None:
    """Remove an architecture (for tests that register a throwaway one)."""
    _ARCHITECTURES.pop(name, None)


def architectures() -> dict[str, Architecture]:
    """Every registered architecture by name (a copy)."""
    return dict(_ARCHITECTURES)


def architecture(name: str) -> Architecture:
    """The declaration of `name`; raises MgkdError naming the known ones."""
    if name not in _ARCHITECTURES:
        raise MgkdError(f"unknown model arch {name!r}; known architectures: {', '.join(sorted(_ARCHITECTURES))}")
    return _ARCHITECTURES[name]


def task_architectures(task: str) -> frozenset[str]:
    """The architectures of one task (a config pairing a task with another's model is refused)."""
    return frozenset(a.name for a in _ARCHITECTURES.values() if a.task == task)


def check_model(cfg: ModelConfig, where: str = "model") -> None:
    """Raise MgkdError unless `cfg.arch` is registered and its sizes pass the architecture's check."""
    arch = architecture(cfg.arch)
    try:
        arch.check(cfg)
    except ValueError as e:
        raise MgkdError(f"{where}: {e}") from None


def model_label(arch: str | None, sizes: dict[str, Any]) -> str:
    """The arch and its sizes as tables show them: `transformer d128 2+2`, `transformer_classifier d128 4L`.

    `sizes` holds ModelConfig fields (d_model, encoder_layers, ...); an arch this
    install does not declare (an external teacher's `hf:<type>`) shows both stacks.
    """
    if arch in _ARCHITECTURES:
        return f"{arch} {_ARCHITECTURES[arch].summary(sizes)}"
    enc, dec = sizes.get("encoder_layers", "?"), sizes.get("decoder_layers", "?")
    return f"{arch or '?'} d{sizes.get('d_model', '?')} {enc}+{dec}"
