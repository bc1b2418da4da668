"""Pseudo-labels on unlabeled sources: self-training with a noisy student.

The teacher translates source sentences that have no reference (Xie et al.
2020, "Self-training with Noisy Student improves ImageNet classification";
He et al. 2020, "Revisiting Self-Training for Neural Machine Translation"),
and the student learns those translations from a *noised* copy of the source
(token dropout and adjacent swaps, He et al.'s "noisy self-training"): the
noise makes the student more than a copy of its teacher.

Each step draws a batch of pseudo-labeled pairs beside the gold batch, of
`ratio` times the gold token budget, so `ratio` is the pseudo-labeled share of
the data per step. Mix with the gold loss by the terms' weights:
`[{name: pseudo_label, weight: w}, {name: label_smoothing, weight: 1}]`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TypeVar

import torch

from mgkd.errors import MgkdError
from mgkd.losses.base import LossPlugin, TeacherNeeds, ViewContext, ViewData, register
from mgkd.losses.sequence import token_cross_entropy
from mgkd.outputs import ModelOutput, TargetBatch
from mgkd.vocabulary import EOS, PAD

PARAM = "loss 'pseudo_label' params.source"
# The parallel corpus's own verses in none of its splits (mgkd.tasks.translation.monolingual).
HELDOUT = "builtin:heldout"
B = TypeVar("B", bound=TargetBatch)  # a batch dataclass: the noise gives back the same type


@dataclass(frozen=True)
class SourceNoise:
    """Noise on a batch's source side: drop tokens, then swap adjacent ones.

    Each source token (never EOS or padding) is dropped with probability
    `dropout`; then, scanning left to right, each adjacent pair is swapped with
    probability `swap` (a swapped token moves once). The random draws come
    from the given generator and do not depend on the rates, so a seeded
    generator gives the same noise every run; zero rates give the batch back
    unchanged.
    """

    dropout: float = 0.1
    swap: float = 0.1

    def __call__(self, batch: B, generator: torch.Generator) -> B:
        src = batch.src.cpu()
        drop_draw = torch.rand(src.shape, generator=generator)
        swap_draw = torch.rand(src.shape, generator=generator)
        lengths = (src != PAD).sum(1) - 1  # tokens before EOS
        rows: list[list[int]] = []
        for r in range(src.size(0)):
            n = int(lengths[r])
            tokens = src[r, :n].tolist()
            keep = (drop_draw[r, :n] >= self.dropout).tolist()
            kept = [t for t, k in zip(tokens, keep) if k]
            swap = (swap_draw[r, : len(kept)] < self.swap).tolist()
            i = 0
            while i < len(kept) - 1:
                if swap[i]:
                    kept[i], kept[i + 1] = kept[i + 1], kept[i]
                    i += 2
                else:
                    i += 1
            rows.append(kept)
        out = torch.full((len(rows), max(len(k) for k in rows) + 1), PAD, dtype=src.dtype)
        for r, kept in enumerate(rows):
            out[r, : len(kept)] = torch.tensor(kept, dtype=src.dtype)
            out[r, len(kept)] = EOS
        return dataclasses.replace(batch, src=out.to(batch.src.device))  # type: ignore[type-var]


@register
class PseudoLabel(LossPlugin):
    """Cross-entropy of the student, on noised sources, on the teacher's translations of unlabeled text.

    Params: `source` ("builtin:heldout", "builtin:<bible.db code>" or a text
    file, see `mgkd.tasks.translation.monolingual`), `max_sentences` and `max_words` (which
    sentences the teacher labels), `ratio` (pseudo-labeled tokens per gold token
    each step), `token_dropout` and `token_swap` (the noise), `beam_size` of the
    teacher's search, `smoothing` on the pseudo-labels.
    """

    name = "pseudo_label"
    description = "cross-entropy on the teacher's translations of unlabeled sources, noised (noisy self-training)"
    view = "unlabeled"
    teacher_needs = TeacherNeeds(pseudo_targets=True)

    def __init__(
        self,
        *,
        source: str = HELDOUT,
        max_sentences: int | None = 2000,
        max_words: int = 20,
        ratio: float = 0.5,
        token_dropout: float = 0.1,
        token_swap: float = 0.1,
        beam_size: int = 1,
        smoothing: float = 0.0,
    ) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ValueError("source must be builtin:heldout, builtin:<bible.db code> or a text file path")
        if max_sentences is not None and max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1 or null (all), got {max_sentences}")
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        if ratio <= 0:
            raise ValueError(f"ratio (pseudo-labeled tokens per gold token) must be > 0, got {ratio}")
        for key, p in (("token_dropout", token_dropout), ("token_swap", token_swap)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {p}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.source = source.strip()
        self.max_sentences = max_sentences
        self.max_words = int(max_words)
        self.ratio = float(ratio)
        self.noise = SourceNoise(float(token_dropout), float(token_swap))
        self.beam_size = int(beam_size)
        self.smoothing = float(smoothing)

    def unlabeled_sources(self) -> dict[str, str]:
        # A missing or unreadable file must stop the run before generation 0 trains: the schedule checks it.
        return {PARAM: self.source}

    def __call__(self, student: ModelOutput, teacher: ModelOutput | None, batch: TargetBatch) -> torch.Tensor:
        return token_cross_entropy(student.logits, batch.targets, self.smoothing)

    def build_view(self, ctx: ViewContext) -> ViewData:
        t0 = time.perf_counter()
        examples, counts = ctx.unlabeled_sources(self.source, self.max_words, self.max_sentences, PARAM)
        out = ctx.teacher_outputs(examples, beam_size=self.beam_size, n_best=1, label="pseudo_label")
        # An empty output teaches the student to stop at once: leave those out.
        labeled = [(i, s, out.hypotheses[i][0][1]) for i, s in examples if out.hypotheses[i][0][1].strip()]
        if not labeled:
            raise MgkdError(
                f"pseudo_label: the teacher translated all {len(examples)} sentences of {self.source!r} to empty "
                "text (an untrained teacher?); train the teacher longer or drop the pseudo_label term"
            )
        split = ctx.to_split([x[0] for x in labeled], [x[1] for x in labeled], [x[2] for x in labeled])
        noisy = self.noise.dropout > 0 or self.noise.swap > 0
        metrics = {
            "pseudo_label_sentences": float(len(split)),
            "pseudo_label_leak_dropped": float(counts["leak_dropped"]),
            "pseudo_label_decode_s": out.seconds,
            "pseudo_label_cached": float(out.cached),
            "pseudo_label_cache_rejected": float(out.rejected is not None),
            "pseudo_label_view_s": time.perf_counter() - t0,
        }
        return ViewData(split, aligned=False, token_ratio=self.ratio, noise=self.noise if noisy else None,
                        artifact=out.path, metrics=metrics)  # fmt: skip
