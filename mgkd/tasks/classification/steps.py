"""Classification's part of a generation: the classifier's forward on a batch, validation, and the test split.

The generation recipe (`mgkd.generations.recipe`) calls these hooks; the loop
itself (teacher, optimizer, resume, selection, checkpoint) is shared with
every task. A classifier learns from one label per example (view gold only):
there is no decoding, no teacher cache and no teacher-made data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mgkd.outputs import Events, TestOutputs
from mgkd.tasks.base import StepSpec
from mgkd.tasks.classification import (
    CLASSIFICATION,
    ClassificationData,
    classification_scores,
    iterate_batches,
)


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, data: ClassificationData, split: str, max_tokens: int,
                   device: torch.device) -> tuple[dict[str, float], np.ndarray]:  # fmt: skip
    """Mean cross-entropy, accuracy, macro-F1 (and the configured extras) on a split, and its predictions."""
    was = model.training
    model.eval()
    s = data.splits[split]
    pred = np.zeros(len(s), dtype=np.int64)
    total = 0.0
    for batch in iterate_batches(s, max_tokens, shuffle=False):
        b = batch.to(device)
        logits = model(b.src, b.segments).logits.float()
        total += float(F.cross_entropy(logits, b.labels, reduction="sum"))
        pred[b.indices] = logits.argmax(-1).cpu().numpy()
    model.train(was)
    scores = classification_scores(s.labels, pred, data.num_classes, data.extra_metrics)
    return {"loss": total / max(1, len(s)), **scores}, pred


def write_predictions(path: Path, test: Any, names: list[str], pred: np.ndarray) -> Path:
    """The test split's TSV: id, text, text pair, gold label, predicted label."""
    clean = lambda x: (x or "").replace("\t", " ").replace("\n", " ")  # noqa: E731
    rows = ["id\ttext\ttext_pair\tlabel\tprediction"] + [
        "\t".join((i, clean(a), clean(b), names[g], names[p]))
        for i, a, b, g, p in zip(test.ids, test.texts, test.pairs, test.labels, pred)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


class ClassificationSteps:
    """The recipe's hooks for classification: validation and test
    give loss, accuracy, macro-F1 (and MCC where configured); the checkpoint carries the label names."""

    task = CLASSIFICATION

    def model_sizes(self, data: ClassificationData) -> dict[str, int]:
        return {"vocab_size": data.vocab_size, "num_classes": data.num_classes}

    def validate(self, student: torch.nn.Module, data: ClassificationData, spec: StepSpec,
                 device: torch.device) -> dict[str, float]:  # fmt: skip
        scores, _ = evaluate_split(student, data, "valid", spec.train.max_tokens, device)
        return {f"valid_{k}": v for k, v in scores.items()}

    def checkpoint_meta(self, data: ClassificationData) -> dict[str, Any]:
        return {"labels": data.label_names}

    def test(self, student: torch.nn.Module, data: ClassificationData, spec: StepSpec, device: torch.device,
             out_dir: Path, events: Events) -> TestOutputs:  # fmt: skip
        t0 = time.perf_counter()
        scores, pred = evaluate_split(student, data, "test", spec.train.max_tokens, device)
        test = data.splits["test"]
        examples_per_s = len(test) / max(1e-9, time.perf_counter() - t0)
        names = data.label_names
        path = write_predictions(out_dir / "test_predictions.tsv", test, names, pred)
        metrics = {**{f"test_{k}": v for k, v in scores.items() if k != "loss"}, "test_loss": scores["loss"],
                   "eval_examples_per_s": examples_per_s}  # fmt: skip
        samples = [
            {"source": a if b is None else f"{a} ||| {b}", "reference": names[g], "hypothesis": names[p]}
            for a, b, g, p in list(zip(test.texts, test.pairs, test.labels, pred))[:50]
        ]
        return TestOutputs(metrics, path, samples)


# The hooks the recipe runs for this task (mgkd.tasks finds them here by name).
STEPS = ClassificationSteps()
