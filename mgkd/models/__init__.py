"""Architectures by registry name, and how a config becomes a model.

Importing this package registers the built-in architectures (each file's
`@register` declaration, see `mgkd.models.registry`).
"""

from __future__ import annotations

from torch import nn

from mgkd.config import ModelConfig
from mgkd.models import bigru, classifier, transformer  # noqa: F401  (registration)
from mgkd.models.registry import Architecture, architecture, architectures, check_model, task_architectures


def check_arch(name: str) -> None:
    """Raise MgkdError unless `name` is a registered architecture (naming the known ones)."""
    architecture(name)


def build_model(cfg: ModelConfig, vocab_size: int, num_classes: int | None = None) -> nn.Module:
    """The model a config describes; `num_classes` (from the data's labels) for classifiers only."""
    arch = architecture(cfg.arch)
    extra = {"num_classes": num_classes}
    return arch.cls(cfg, vocab_size, **{k: extra[k] for k in arch.data_args})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "Architecture",
    "architecture",
    "architectures",
    "build_model",
    "check_arch",
    "check_model",
    "count_parameters",
    "task_architectures",
]
