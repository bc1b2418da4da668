"""An ensemble of generations (BAN-E): the average of its members' log-probabilities.

Born-Again Networks report that the ensemble of a lineage's generations beats
each member. The ensemble is a model like the others: it scores targets
(`forward`, so it can teach a next generation) and decodes incrementally (each
member keeps its own decoder state), so `mgkd.models.decoding` works on it
unchanged. Members must share the vocabulary; their architectures may differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mgkd.errors import MgkdError
from mgkd.outputs import Seq2SeqOutput


@dataclass
class EnsembleState:
    members: list[Any]


class EnsembleSeq2Seq(nn.Module):
    """Log-linear ensemble: log p(y) = sum_i w_i log p_i(y) (renormalised by the decoder's log-softmax)."""

    def __init__(self, members: list[nn.Module], weights: list[float] | None = None) -> None:
        super().__init__()
        if not members:
            raise MgkdError("an ensemble needs at least one member")
        vocab = {m.vocab_size for m in members}  # type: ignore[union-attr]
        if len(vocab) != 1:
            raise MgkdError(f"ensemble members must share one vocabulary, got sizes {sorted(vocab)}")
        self.members = nn.ModuleList(members)
        self.vocab_size = vocab.pop()
        w = torch.tensor(weights if weights is not None else [1.0] * len(members), dtype=torch.float32)
        if w.numel() != len(members) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise MgkdError(f"ensemble weights must be {len(members)} non-negative numbers, got {weights}")
        self.register_buffer("weights", w / w.sum(), persistent=False)

    def _mix(self, logits: list[torch.Tensor]) -> torch.Tensor:
        logp = torch.stack([F.log_softmax(x.float(), dim=-1) for x in logits])  # (M, ..., V)
        shape = (-1,) + (1,) * (logp.dim() - 1)
        return (logp * self.weights.view(shape)).sum(0)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, return_hidden: bool = False,
                return_attention: bool = False) -> Seq2SeqOutput:  # fmt: skip
        if return_hidden or return_attention:
            raise MgkdError("an ensemble teacher exposes log-probabilities only; internal losses need one teacher")
        return Seq2SeqOutput(logits=self._mix([m(src, tgt_in).logits for m in self.members]))

    def init_state(self, src: torch.Tensor) -> EnsembleState:
        return EnsembleState([m.init_state(src) for m in self.members])

    def decode_step(self, tokens: torch.Tensor, state: EnsembleState, step: int) -> torch.Tensor:
        return self._mix([m.decode_step(tokens, s, step) for m, s in zip(self.members, state.members)])

    def select_state(self, state: EnsembleState, rows: torch.Tensor) -> EnsembleState:
        return EnsembleState([m.select_state(s, rows) for m, s in zip(self.members, state.members)])
