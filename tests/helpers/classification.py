"""Classification test data: the preset, a tiny sentiment CSV and tiny overrides (shared by every layer)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "configs" / "classification.yaml"

POSITIVE = ["great", "love", "wonderful", "excellent", "happy"]
NEGATIVE = ["awful", "hate", "terrible", "boring", "sad"]
FILLER = "the a this movie film plot actor scene was is it and but really very quite so story end".split()


def sentiment_csv(path: Path, n: int = 720) -> Path:
    """Short reviews whose label is carried by one sentiment word among filler words (neutral: none)."""
    rng = random.Random(0)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            label = ("positive", "negative", "neutral")[i % 3]
            words = rng.choices(FILLER, k=rng.randint(4, 9))
            if label != "neutral":
                words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
            w.writerow([" ".join(words), label])
    return path


TINY_CLASSIFICATION = [
    "classification.max_length=24",
    "classification.extra_metrics=[mcc]",
    "tokenizer.vocab_size=120",
    "split.valid_fraction=0.1",
    "split.test_fraction=0.1",
    "model.d_model=32",
    "model.n_heads=2",
    "model.ff_dim=64",
    "model.encoder_layers=2",
    "model.max_positions=32",
    "train.max_epochs=4",
    "train.max_tokens=320",
    "train.lr=0.003",
    "train.warmup_steps=5",
    "train.log_every_steps=5",
    "train.threads=1",
    "generations.student.train={max_epochs: 2, warmup_steps: 5}",
    "ray.cpus_per_generation=1",
]
