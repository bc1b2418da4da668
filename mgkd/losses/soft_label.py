"""Soft-label (word-level) knowledge distillation (Hinton et al. 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mgkd.losses.base import LossPlugin, TeacherNeeds, register
from mgkd.models.transformer import Seq2SeqOutput
from mgkd.tasks.translation import PAD, Batch


def soft_label_kd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T) * T^2, summed over the vocabulary, averaged over mask tokens."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B, T)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0) * t * t


@register
class SoftLabel(LossPlugin):
    """Token-level KL between the temperature-softened teacher and student distributions.

    Mixed with the label loss by the terms' weights: alpha on this term,
    1 - alpha on `label_smoothing`. The T^2 factor keeps gradient scale
    comparable across temperatures.
    """

    name = "soft_label"
    description = "token-level KL(teacher_T || student_T) * T^2 over non-padding tokens"
    teacher_needs = TeacherNeeds(logits=True)

    def __init__(self, *, temperature: float = 2.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, student: Seq2SeqOutput, teacher: Seq2SeqOutput | None, batch: Batch) -> torch.Tensor:
        if teacher is None:
            raise ValueError("soft_label needs a teacher; generation 0 has none")
        return soft_label_kd(student.logits, teacher.logits, batch.tgt_out.ne(PAD), self.temperature)
