"""Cross-entropy with the gold targets, with label smoothing (Szegedy et al. 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mgkd.losses.base import LossPlugin, register
from mgkd.outputs import ModelOutput, TargetBatch


@register
class LabelSmoothing(LossPlugin):
    """(1 - s) * NLL(gold) + s * mean over the vocabulary of -log p, per non-padding token.

    With smoothing 0 this is plain cross-entropy; alone it is the teacher-free
    baseline of a generation.
    """

    name = "label_smoothing"
    description = "cross-entropy with the gold targets, label-smoothed; the teacher-free baseline"
    tasks = ("translation", "classification")

    def __init__(self, *, smoothing: float = 0.1) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = float(smoothing)

    def __call__(self, student: ModelOutput, teacher: ModelOutput | None, batch: TargetBatch) -> torch.Tensor:
        # Token targets (B, T) with (B, T, V) logits, or one label per example (B,) with (B, C) logits:
        # flattened alike; padding tokens are skipped by `ignore_index`.
        logits = student.logits
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(),
            batch.targets.reshape(-1),
            ignore_index=batch.ignore_index,
            label_smoothing=self.smoothing,
        )
