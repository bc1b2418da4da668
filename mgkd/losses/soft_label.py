"""Soft-label (word-level) knowledge distillation (Hinton et al. 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mgkd.losses.base import LossPlugin, TeacherNeeds, register
from mgkd.outputs import ModelOutput, TargetBatch


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


def top_k_kd(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_indices: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Soft-label KD restricted to the teacher's top-k tokens.

    The teacher's distribution at temperature T is renormalised over its k best
    tokens (`teacher_logprobs` (B, T, k) at T=1, which is all a cached teacher
    keeps; the normaliser cancels); the student's log-probs are its full-vocabulary
    ones at T, read at those k tokens. With k = vocabulary size this equals
    `soft_label_kd`.
    """
    t = temperature
    log_p_t = F.log_softmax(teacher_logprobs.float() / t, dim=-1)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1).gather(-1, teacher_indices.long())
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0) * t * t


@register
class SoftLabel(LossPlugin):
    """Token-level KL between the temperature-softened teacher and student distributions.

    Mixed with the label loss by the terms' weights: alpha on this term,
    1 - alpha on `label_smoothing`. The T^2 factor keeps gradient scale
    comparable across temperatures. `final_temperature` anneals T linearly over
    the generation's budget; `top_k` > 0 uses only the teacher's k best tokens
    per position (what a cached teacher stores).
    """

    name = "soft_label"
    description = "token-level KL(teacher_T || student_T) * T^2 over non-padding tokens; optional top-k, T schedule"
    # Classification: the same KL over the classes, one distribution per example (logits (B, C)).
    tasks = ("translation", "classification")

    def __init__(self, *, temperature: float = 2.0, final_temperature: float | None = None, top_k: int = 0) -> None:
        if temperature <= 0 or (final_temperature is not None and final_temperature <= 0):
            raise ValueError(f"temperatures must be > 0, got {temperature} and {final_temperature}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: the full distribution), got {top_k}")
        self.temperature = float(temperature)
        self.final_temperature = None if final_temperature is None else float(final_temperature)
        self.top_k = int(top_k)
        # An instance attribute: what this configuration needs from the teacher.
        self.teacher_needs = TeacherNeeds(top_k=self.top_k) if self.top_k else TeacherNeeds(logits=True)

    teacher_needs = TeacherNeeds(logits=True)

    def current_temperature(self) -> float:
        if self.final_temperature is None:
            return self.temperature
        return self.temperature + (self.final_temperature - self.temperature) * self.progress

    def __call__(self, student: ModelOutput, teacher: ModelOutput | None, batch: TargetBatch) -> torch.Tensor:
        if teacher is None:
            raise ValueError("soft_label needs a teacher; generation 0 has none")
        mask = batch.target_mask  # per token, or one distribution per example for a classifier
        t = self.current_temperature()
        if not self.top_k:
            return soft_label_kd(student.logits, teacher.logits, mask, t)
        if teacher.topk_logprobs is not None and teacher.topk_logprobs.size(-1) >= self.top_k:
            values, indices = teacher.topk_logprobs[..., : self.top_k], teacher.topk_indices[..., : self.top_k]
        else:
            values, indices = F.log_softmax(teacher.logits.float(), dim=-1).topk(self.top_k, dim=-1)
        return top_k_kd(student.logits, values, indices, mask, t)
