"""The context a loss plugin builds its data view in (`LossPlugin.build_view`).

Plugins on a teacher-made view (`seq_kd`, `pseudo_label`) need the teacher's
decoded outputs and the task's data, which live above the losses package; the
generation hands them this object, which satisfies `mgkd.losses.base.ViewContext`,
so no plugin imports generations or tasks code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mgkd.config import EvalConfig
from mgkd.generations.pseudo_targets import DecodeSettings, TeacherOutputs, teacher_outputs, to_split
from mgkd.tasks.translation import PreparedData, SplitData
from mgkd.tasks.translation.monolingual import read_sources, stable_subset


@dataclass
class GenerationViewContext:
    """The teacher, the prepared data and where teacher-made data is stored, with what plugins do with them."""

    teacher: nn.Module
    teacher_sha256: str
    data: PreparedData
    eval: EvalConfig
    cache_dir: Path  # where teacher-derived data is stored, keyed by teacher checksum
    device: torch.device
    seed: int
    events: Callable[[dict[str, Any]], None]

    def teacher_outputs(
        self, examples: Sequence[tuple[str, str]], *, beam_size: int, n_best: int, label: str
    ) -> TeacherOutputs:
        """The teacher's n best outputs for (id, source text) examples, decoded once and stored by checksum.

        An mgkd teacher's tokenizer is the data's; an external teacher brings its own and ignores it.
        """
        e = self.eval
        settings = DecodeSettings(beam_size, n_best, e.max_len_a, e.max_len_b, e.length_penalty)
        return teacher_outputs(
            self.teacher, self.teacher_sha256, examples, self.data.tokenizer, settings, self.cache_dir,
            device=self.device, batch_size=e.decode_batch_size, events=self.events, label=label,
        )  # fmt: skip

    def to_split(self, ids: list[str], sources: list[str], targets: list[str]) -> SplitData:
        """(source, teacher output) texts as a split, tokenized with the student's (the data's) tokenizer."""
        return to_split(ids, sources, targets, self.data.tokenizer)

    def unlabeled_sources(
        self, source: str, max_words: int, max_sentences: int | None, param: str
    ) -> tuple[list[tuple[str, str]], dict[str, int]]:
        """(id, text) of source-only sentences (`mgkd.tasks.translation.monolingual`) and counts of what was dropped."""
        sentences, counts = read_sources(source, self.data, max_words, max_sentences, param)
        return [(s.id, s.text) for s in sentences], counts

    def subset(self, ids: list[str], cap: int | None) -> list[int]:
        """Positions of at most `cap` ids, chosen by a hash of the id (the same for every teacher)."""
        return stable_subset(ids, cap)
