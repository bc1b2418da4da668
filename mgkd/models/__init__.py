"""Architectures by registry name, and how a config becomes a model."""

from __future__ import annotations

from torch import nn

from mgkd.config import ModelConfig
from mgkd.errors import MgkdError
from mgkd.models.bigru import BiGRUSeq2Seq
from mgkd.models.classifier import TransformerClassifier
from mgkd.models.transformer import TransformerSeq2Seq
from mgkd.outputs import Seq2SeqOutput

MODELS: dict[str, type[nn.Module]] = {
    "transformer": TransformerSeq2Seq,
    "bigru": BiGRUSeq2Seq,
    # task classification: an encoder with a [CLS] head; its class count comes from the data.
    "transformer_classifier": TransformerClassifier,
}
# The architectures of each task (a config pairing a task with another's model is refused).
TASK_ARCHS: dict[str, frozenset[str]] = {
    "translation": frozenset({"transformer", "bigru"}),
    "classification": frozenset({"transformer_classifier"}),
}


def check_arch(name: str) -> None:
    if name not in MODELS:
        raise MgkdError(f"unknown model arch {name!r}; known architectures: {', '.join(sorted(MODELS))}")


def exposed_features(arch: str) -> frozenset[str]:
    """The internal features (Seq2SeqOutput fields) an architecture returns on request.

    A loss plugin's `check` reads this to refuse, before anything trains, a
    teacher or student that cannot give what it matches (e.g. attention from a model without it).
    """
    check_arch(arch)
    return frozenset(getattr(MODELS[arch], "exposes", frozenset()))


def build_model(cfg: ModelConfig, vocab_size: int, num_classes: int | None = None) -> nn.Module:
    """The model a config describes; `num_classes` (from the data's labels) for classifiers only."""
    check_arch(cfg.arch)
    if cfg.arch in TASK_ARCHS["classification"]:
        return MODELS[cfg.arch](cfg, vocab_size, num_classes)
    return MODELS[cfg.arch](cfg, vocab_size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "TASK_ARCHS", "Seq2SeqOutput", "build_model", "check_arch", "count_parameters", "exposed_features"]
