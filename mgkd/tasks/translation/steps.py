"""Translation's part of a generation: the student's forward on a batch, validation, and the test split decoded.

The generation recipe (`mgkd.generations.recipe`) calls these hooks (`STEPS`);
everything else of the loop (teacher, optimizer, resume, selection, checkpoint)
is shared with every task.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mgkd.models.decoding import translate
from mgkd.outputs import Events, TestOutputs
from mgkd.tasks.base import StepSpec
from mgkd.tasks.translation import PAD, TRANSLATION, PreparedData, iterate_batches
from mgkd.tasks.translation.eval_sets import score_test_sets


@torch.no_grad()
def validation_loss(model: torch.nn.Module, data: PreparedData, max_tokens: int, device: torch.device) -> float:
    """Token-mean cross-entropy (no smoothing) of the gold valid targets."""
    was = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in iterate_batches(data.splits["valid"], max_tokens, shuffle=False):
        b = batch.to(device)
        logits = model(b.src, b.tgt_in).logits
        total += float(
            F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), b.tgt_out.reshape(-1), ignore_index=PAD, reduction="sum"
            )
        )
        tokens += b.target_tokens
    model.train(was)
    return total / max(1, tokens)


def decode_split(
    model: torch.nn.Module,
    data: PreparedData,
    split: str,
    spec: StepSpec,
    device: torch.device,
    limit: int | None = None,
    beam_size: int | None = None,
    events: Events | None = None,
) -> tuple[list[str], float]:
    """Detokenized outputs for a split (or its first `limit` sentences) and sentences/second."""
    s = data.splits[split]
    n = len(s) if limit is None else min(limit, len(s))
    t0 = time.perf_counter()
    done = [0]

    def on_batch(k: int) -> None:
        done[0] += k
        if events:
            events({"type": "decode", "split": split, "done": done[0], "total": n})

    hyps = translate(
        model, s.src[:n], data.tokenizer.decode, spec.eval.max_len_a, spec.eval.max_len_b,
        spec.eval.decode_batch_size, beam_size or spec.eval.beam_size, spec.eval.length_penalty, device, on_batch,
    )  # fmt: skip
    return hyps, n / max(1e-9, time.perf_counter() - t0)


def translation_samples(test: Any, hyps: list[str]) -> list[dict[str, str]]:
    """The first 50 test translations, for the MLflow record."""
    return [
        {"source": s, "reference": r, "hypothesis": h}
        for s, r, h in zip(test.sources[:50], test.targets[:50], hyps[:50])
    ]


class TranslationSteps:
    """The recipe's hooks for translation: valid loss (and BLEU/chrF of greedy outputs on request), the test
    split decoded and scored."""

    task = TRANSLATION

    def model_sizes(self, data: PreparedData) -> dict[str, int]:
        return {"vocab_size": data.vocab_size}

    def validate(self, student: torch.nn.Module, data: PreparedData, spec: StepSpec,
                 device: torch.device) -> dict[str, float]:  # fmt: skip
        m = {"valid_loss": validation_loss(student, data, spec.train.max_tokens, device)}
        if spec.eval.valid_bleu_sentences:
            hyps, _ = decode_split(student, data, "valid", spec, device, spec.eval.valid_bleu_sentences, beam_size=1)
            scores = data.scoring.score(hyps, data.splits["valid"].targets[: len(hyps)])
            m["valid_bleu"], m["valid_chrf"] = scores["bleu"], scores["chrf"]
        return m

    def checkpoint_meta(self, data: PreparedData) -> dict[str, Any]:
        return {}

    def test(self, student: torch.nn.Module, data: PreparedData, spec: StepSpec, device: torch.device,
             out_dir: Path, events: Events) -> TestOutputs:  # fmt: skip
        # The test split and every named test set (eval.test_sets), each scored and written to its own TSV.
        held_out = score_test_sets(data, lambda split: decode_split(student, data, split, spec, device, events=events),
                                   out_dir)  # fmt: skip
        metrics = {**held_out.metrics, "decode_sentences_per_s": held_out.sentences_per_s}
        samples = translation_samples(data.splits["test"], held_out.hypotheses)
        return TestOutputs(metrics, held_out.translations, samples)


# The hooks the recipe runs for this task (mgkd.tasks finds them here by name).
STEPS = TranslationSteps()
