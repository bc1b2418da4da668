"""What models return and what losses read from a batch, whatever the task; what a generation reports.

A bottom module: models build these outputs, losses read them and the
`TargetBatch` protocol, generations pass them along; a task's steps report
their test outputs (`TestOutputs`) and progress (`Events`) to the recipe that
runs them; none of those layers imports another for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch


@dataclass
class Seq2SeqOutput:
    logits: torch.Tensor  # (B, T, V)
    # Filled on request: per layer, (B, L, D) hidden states and (B, H, Lq, Lk) attention.
    encoder_hidden: list[torch.Tensor] = field(default_factory=list)
    decoder_hidden: list[torch.Tensor] = field(default_factory=list)
    encoder_attention: list[torch.Tensor] = field(default_factory=list)
    decoder_self_attention: list[torch.Tensor] = field(default_factory=list)
    decoder_cross_attention: list[torch.Tensor] = field(default_factory=list)
    # A cached teacher's signal: its k best log-probs per target token (B, T, k) and their token ids.
    topk_logprobs: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # (B, C)
    # Filled on request: per layer, (B, L, D) hidden states and (B, H, L, L) attention probabilities.
    encoder_hidden: list[torch.Tensor] = field(default_factory=list)
    encoder_attention: list[torch.Tensor] = field(default_factory=list)
    # What soft_label reads from a cached teacher; never set for classifiers (their teachers run online).
    topk_logprobs: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None


# Either output: losses read `logits` and, on request, the per-layer lists.
ModelOutput = Seq2SeqOutput | ClassifierOutput


class TargetBatch(Protocol):
    """What a loss reads from a batch of any task (translation's `Batch`, classification's `ClassBatch`).

    Targets are per token for a seq2seq task ((B, T) ids, `ignore_index` where
    a row has no token) and one per example for a classifier ((B,) class ids);
    the logits a model gives for a batch have the targets' shape plus a last
    dimension of scores, so one expression serves both.
    """

    src: torch.Tensor  # (B, S) source token ids, PAD-padded

    @property
    def targets(self) -> torch.Tensor:
        """The gold targets: (B, T) token ids, or (B,) class ids."""
        ...

    @property
    def target_mask(self) -> torch.Tensor:
        """True where `targets` holds a real target (shape of `targets`)."""
        ...

    @property
    def ignore_index(self) -> int:
        """The target id cross-entropy skips: PAD for token targets, -100 (no class has it) for labels."""
        ...

    def readout_mask(self) -> torch.Tensor:
        """(B, S) True at the source positions whose encoder states the prediction reads.

        Every real token for a seq2seq model (its decoder attends to all of
        them); [CLS] alone for a classifier. The internal-representation loss
        compares encoder hidden states there.
        """
        ...


# How a generation talks to whoever runs it: one dict per event ("step", "epoch", "decode", ...).
Events = Callable[[dict[str, Any]], None]


@dataclass
class TestOutputs:
    """What a selected model gives on the test split: its metrics, the file of its outputs, the first 50 rows."""

    metrics: dict[str, float]
    path: Path
    samples: list[dict[str, str]] = field(default_factory=list)
