"""The distances of internal-representation KD: hidden states by cosine or MSE, attention by KL.

Each takes the student's and the teacher's tensors of one mapped layer and a
mask of the positions to compare, and returns the mean over those positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Probabilities are clamped before the log: masked keys have probability 0.
_EPS = 1e-12


def hidden_cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over mask positions of 1 - cos(student, teacher); states (B, L, D), mask (B, L) True = real token.

    Cosine ignores the states' scale, which differs between models of different
    width and depth (the residual stream grows layer by layer).
    """
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)
    m = mask.to(cos.dtype)
    return ((1.0 - cos) * m).sum() / m.sum().clamp_min(1.0)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over mask positions and the D dimensions of the squared error."""
    sq = (student.float() - teacher.float()).pow(2).mean(-1)
    m = mask.to(sq.dtype)
    return (sq * m).sum() / m.sum().clamp_min(1.0)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over the keys, averaged over heads and mask (non-padding) query positions.

    Attention is (B, H, Lq, Lk) probabilities; mask (B, Lq). Keys at padding
    have probability 0 in both, so they add nothing (0 * log 0 is taken as 0).
    With different head counts there is no head-to-head correspondence, so
    both sides are first averaged over their heads and the mean distributions
    compared; by convexity this KL is at most the mean per-head KL, a looser
    signal than matching heads one by one.
    """
    s, t = student.float(), teacher.float()
    if s.size(1) != t.size(1):
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    kl = (torch.xlogy(t, t) - t * s.clamp_min(_EPS).log()).sum(-1).mean(1)  # (B, Lq)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0)


DISTANCES = {"cosine": hidden_cosine, "mse": hidden_mse, "kl": attention_kl}
