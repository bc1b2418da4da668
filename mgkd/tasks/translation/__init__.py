"""Machine translation: corpus -> deterministic splits -> sentencepiece -> batches -> BLEU/chrF.

`prepare` runs once per lineage on the driver; its result (`PreparedData`) is
plain data (arrays, strings, the sentencepiece model as bytes) that Ray ships to
whichever worker trains a generation.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from mgkd.config import ExperimentConfig, ModelConfig
from mgkd.errors import MgkdError
from mgkd.files import write_atomic
from mgkd.tasks.base import Metric, TensorBatch, TokenizedData
from mgkd.tasks.text import SPLITS, length_batches, split_pairs, train_sentencepiece
from mgkd.tasks.translation.corpus import Pair, read_corpus, warn_length_filter
from mgkd.tasks.translation.eval_sets import TEST_SET_PREFIX, Scoring, fixed_sets, remove_overlap
from mgkd.vocabulary import BOS, EOS, PAD, pad_sources


@dataclass
class SplitData:
    """One split; `digest` is the sha256 of its ids and texts (the MLflow dataset digest)."""

    ids: list[str]
    sources: list[str]
    targets: list[str]
    # Token ids without BOS/EOS; the source gets EOS appended at batching time.
    src: list[np.ndarray]
    tgt: list[np.ndarray]
    digest: str = ""

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PreparedData(TokenizedData[SplitData]):
    """Everything a generation needs from the task, ready to ship to a worker. Its splits: train, valid, test,
    then each named test set as "test/<name>" (eval.test_sets)."""

    # How translations are scored (sacrebleu tokenizer, chrF word order) and its signatures.
    scoring: Scoring = field(default_factory=Scoring)
    # train_valid_overlap, train_test_overlap, and pairs dropped by corpus.max_tokens_per_side.
    counts: dict[str, int] = field(default_factory=dict)

    task = "translation"  # the registered task this data belongs to (mgkd.tasks.TASKS)

    def summary(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {"data_hash": self.data_hash, "vocab_size": self.vocab_size}
        for name, s in self.splits.items():
            # A named test set "test/x" is counted as test_pairs/x, like its test_bleu/x.
            base, _, sub = name.partition("/")
            out[f"{base}_pairs" + (f"/{sub}" if sub else "")] = len(s)
            out[f"{base}_target_tokens" + (f"/{sub}" if sub else "")] = int(sum(len(t) + 1 for t in s.tgt))
        out.update(self.counts)
        return out


# --- splits ------------------------------------------------------------------


# --- prepare -------------------------------------------------------------------


def split_digest(pairs: list[Pair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(f"{p.id}\t{p.source}\t{p.target}\n".encode())
    return h.hexdigest()


def _content_hash(cfg: ExperimentConfig, digests: dict[str, str]) -> str:
    """Identifies the prepared data: the splits' contents and what the tokenizer was trained with."""
    h = hashlib.sha256()
    h.update(json.dumps(cfg.tokenizer.model_dump(), sort_keys=True).encode())
    h.update(str(cfg.seed).encode())
    for name in SPLITS:
        h.update(f"\0{name}\0{digests[name]}".encode())
    # Only what is set enters: a config without them keeps the hash (and the cache) it always had.
    for name in digests:
        if name not in SPLITS:
            h.update(f"\0{name}\0{digests[name]}".encode())
    if cfg.corpus.max_tokens_per_side is not None:
        h.update(f"\0max_tokens_per_side={cfg.corpus.max_tokens_per_side}".encode())
    return h.hexdigest()


def _tokenize(sp: spm.SentencePieceProcessor, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(ids, dtype=np.int32) for ids in sp.encode(texts)]


def prepare(cfg: ExperimentConfig, log: Callable[[str], None] = lambda _: None) -> PreparedData:
    """Corpus -> splits (fixed sets, hash-carved others) -> sentencepiece (cached by content hash) -> token
    arrays on disk. Every data error (a set, a column, a cache) is raised here, before anything trains."""
    t0 = time.perf_counter()
    scoring = Scoring.of(cfg)
    fixed = fixed_sets(cfg)
    pairs = read_corpus(cfg.corpus, log)
    # A fixed valid/test replaces the hash-carved one; named test sets alone make the first of them the test.
    carve = tuple(n for n in ("valid", "test") if n not in fixed and not (n == "test" and cfg.eval.test_sets))
    splits = split_pairs(pairs, cfg.split, cfg.corpus.max_pairs, carve)
    splits.update(fixed)
    if "test" not in carve and "test" not in fixed:
        splits["test"] = fixed[TEST_SET_PREFIX + next(iter(cfg.eval.test_sets))]
    splits = {name: splits[name] for name in (*SPLITS, *(k for k in splits if k not in SPLITS))}
    dedupe = cfg.split.dedupe_against_eval
    if dedupe is None:
        dedupe = not (cfg.corpus.kind == "builtin" and not fixed)
    splits["train"], counts = remove_overlap(splits["train"], {k: v for k, v in splits.items() if k != "train"}, dedupe)
    if counts["train_valid_overlap"] or counts["train_test_overlap"]:
        what = "removed from train" if dedupe else "kept in train (split.dedupe_against_eval)"
        log(f"data: {counts['train_test_overlap']} train pairs share a test source, {counts['train_valid_overlap']} "
            f"a valid source (case and spacing aside): {what}")  # fmt: skip
    if not splits["train"]:
        raise MgkdError("no training pair is left once the pairs of the eval sets are removed; check the sets")
    digests = {name: split_digest(ps) for name, ps in splits.items()}
    data_hash = _content_hash(cfg, digests)
    cache = Path(cfg.output_dir) / "cache" / f"data-{data_hash[:16]}"
    cache.mkdir(parents=True, exist_ok=True)
    model_path = cache / "spm.model"
    if model_path.is_file():
        spm_model = model_path.read_bytes()
        log(f"tokenizer: cached sentencepiece model {model_path}")
    else:
        train_text = [t for p in splits["train"] for t in (p.source, p.target)]
        spm_model = train_sentencepiece(train_text, cfg.tokenizer, cfg.seed)
        write_atomic(model_path, spm_model)
        log(f"tokenizer: trained sentencepiece ({cfg.tokenizer.vocab_size} pieces) on {len(train_text)} sentences")
    sp = spm.SentencePieceProcessor(model_proto=spm_model)
    data = PreparedData(spm_model=spm_model, data_hash=data_hash, splits={}, cache_dir=cache, scoring=scoring,
                        counts=counts)  # fmt: skip
    for name, ps in splits.items():
        src, tgt = _tokenize(sp, [p.source for p in ps]), _tokenize(sp, [p.target for p in ps])
        limit = cfg.corpus.max_tokens_per_side
        if limit is not None and (name == "train" or name in carve):  # fixed sets are scored whole
            keep = [i for i in range(len(ps)) if len(src[i]) <= limit and len(tgt[i]) <= limit]
            data.counts[f"{name}_over_max_tokens"] = len(ps) - len(keep)
            if name == "train":
                warn_length_filter(len(ps) - len(keep), len(ps), f"corpus.max_tokens_per_side={limit}", log)
            if not keep:
                raise MgkdError(f"no {name} pair has at most corpus.max_tokens_per_side={limit} tokens a side")
            ps, src, tgt = [ps[i] for i in keep], [src[i] for i in keep], [tgt[i] for i in keep]
            digests[name] = split_digest(ps)
        texts = {"ids": [p.id for p in ps], "sources": [p.source for p in ps], "targets": [p.target for p in ps]}
        data.splits[name] = SplitData(**texts, src=src, tgt=tgt, digest=digests[name])
    _write_arrays(cache, data)
    named = [f"{k} {len(v)}" for k, v in data.splits.items() if k not in SPLITS]
    log(
        f"data: {len(pairs)} pairs -> train {len(data.splits['train'])}, valid {len(data.splits['valid'])}, "
        f"test {len(data.splits['test'])}{', ' if named else ''}{', '.join(named)} ({time.perf_counter() - t0:.1f}s)"
    )
    return data


def _write_arrays(cache: Path, data: PreparedData) -> None:
    """The tokenized splits as flat arrays + offsets (npz) and their texts (jsonl)."""
    for name, s in data.splits.items():
        npz = cache / f"{name}.npz"  # a named test set "test/x": test/x.npz
        npz.parent.mkdir(parents=True, exist_ok=True)
        if npz.is_file():
            continue
        buf = io.BytesIO()
        np.savez(
            buf,
            src=np.concatenate(s.src) if s.src else np.zeros(0, np.int32),
            src_offsets=np.cumsum([0] + [len(a) for a in s.src]),
            tgt=np.concatenate(s.tgt) if s.tgt else np.zeros(0, np.int32),
            tgt_offsets=np.cumsum([0] + [len(a) for a in s.tgt]),
        )
        lines = "".join(
            json.dumps({"id": i, "source": a, "target": b}, ensure_ascii=False) + "\n"
            for i, a, b in zip(s.ids, s.sources, s.targets)
        )
        write_atomic(cache / f"{name}.jsonl", lines.encode("utf-8"))
        write_atomic(npz, buf.getvalue())


# --- batches -------------------------------------------------------------------


@dataclass
class Batch(TensorBatch):
    indices: list[int]
    src: torch.Tensor  # (B, S) with EOS, PAD-padded
    tgt_in: torch.Tensor  # (B, T): BOS + target
    tgt_out: torch.Tensor  # (B, T): target + EOS; PAD where there is no token

    @property
    def target_tokens(self) -> int:
        return int((self.tgt_out != PAD).sum())

    def model_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What a seq2seq model reads: the source and the shifted target."""
        return self.src, self.tgt_in

    # The loss-facing view (mgkd.outputs.TargetBatch): targets are tokens, PAD where there is none.
    @property
    def targets(self) -> torch.Tensor:
        return self.tgt_out

    @property
    def target_mask(self) -> torch.Tensor:
        return self.tgt_out.ne(PAD)

    @property
    def ignore_index(self) -> int:
        return PAD

    def readout_mask(self) -> torch.Tensor:
        return self.src.ne(PAD)


def collate(split: SplitData, indices: list[int]) -> Batch:
    tgt = [split.tgt[i] for i in indices]
    width = max(len(a) for a in tgt) + 1
    tgt_in = torch.full((len(indices), width), PAD, dtype=torch.long)
    tgt_out = torch.full((len(indices), width), PAD, dtype=torch.long)
    for row, a in enumerate(tgt):
        t = torch.from_numpy(a.astype(np.int64))
        tgt_in[row, 0] = BOS
        tgt_in[row, 1 : len(a) + 1] = t
        tgt_out[row, : len(a)] = t
        tgt_out[row, len(a)] = EOS
    return Batch(list(indices), pad_sources([split.src[i] for i in indices]), tgt_in, tgt_out)


def batch_indices(split: SplitData, max_tokens: int, shuffle: bool, seed: int = 0) -> list[list[int]]:
    """Token-budget batches of similar lengths: padded tokens per batch <= max_tokens.

    Sorting by length (ties broken by a seeded shuffle) keeps padding low; the
    batch order is shuffled too, so each epoch sees a different sequence.
    """
    return length_batches(
        [(len(t), len(s)) for t, s in zip(split.tgt, split.src)],
        [max(len(t), len(s)) + 1 for t, s in zip(split.tgt, split.src)],
        max_tokens,
        shuffle,
        seed,
    )


def with_longest_targets(split: SplitData, aligned: list[SplitData]) -> SplitData:
    """`split` with each example's target the longest of its own and those of `aligned` (splits of the same
    examples, row for row, e.g. the teacher's translations): what `batch_indices` cuts batches by when a step
    reads them all (train.batch_targets 'longest')."""
    if any(len(a) != len(split) for a in aligned):
        raise ValueError("with_longest_targets needs splits of the same examples, row for row")
    tgt = [max([t, *(a.tgt[i] for a in aligned)], key=len) for i, t in enumerate(split.tgt)]
    return replace(split, tgt=tgt)


def iterate_batches(split: SplitData, max_tokens: int, shuffle: bool, seed: int = 0) -> Iterator[Batch]:
    for idx in batch_indices(split, max_tokens, shuffle, seed):
        yield collate(split, idx)


# --- evaluation ----------------------------------------------------------------


def score_translations(hypotheses: list[str], references: list[str],
                       scoring: Scoring | None = None) -> dict[str, float]:  # fmt: skip
    """Corpus BLEU and chrF on detokenized text; `scoring` None: sacrebleu's defaults (13a, chrF)."""
    return (scoring or Scoring()).score(hypotheses, references)


# --- the task ----------------------------------------------------------------


class TranslationTask:
    """Translation as a `Task`: a parallel corpus in, BLEU and chrF of detokenized outputs out."""

    name = "translation"
    description = "machine translation (sequence to sequence): BLEU, chrF"
    data_section = "corpus"
    preset = "demo"
    metrics = (
        Metric("loss", "loss", higher_is_better=False),
        Metric("bleu", "BLEU", higher_is_better=True),
        Metric("chrf", "chrF", higher_is_better=True),
    )
    select_by = ("valid_loss", "valid_bleu")
    table = ("test_bleu", "test_chrf")
    plot = ("test_bleu", "test_chrf")
    # gold: the corpus; seq_kd: the teacher's outputs on its sources; unlabeled: on extra monolingual sources.
    views = ("gold", "seq_kd", "unlabeled")
    teacher_made_data = True
    teacher_ensembles = True
    external_teacher = True

    prepare = staticmethod(prepare)
    batch_indices = staticmethod(batch_indices)
    longest_targets = staticmethod(with_longest_targets)
    collate = staticmethod(collate)

    def batch_tokens(self, batch: Batch) -> int:
        return batch.target_tokens

    def check_model(self, cfg: ExperimentConfig, model: ModelConfig) -> str | None:
        return None  # decoding bounds its own lengths


TRANSLATION = TranslationTask()

# The task this folder is (mgkd.tasks finds it by this name).
TASK = TRANSLATION
