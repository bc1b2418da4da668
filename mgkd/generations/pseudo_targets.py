"""The teacher's decoded outputs on given sources, computed once per teacher and kept on disk.

Sequence-level KD and pseudo-labeling train a student on what its teacher
*says*, not on what it scores. Decoding thousands of sentences is the costly
part, so the outputs are stored as a TSV keyed by example id, under a name
made of the teacher's checkpoint sha256 and a hash of the inputs (ids, source
texts) and the decode settings: the same teacher on the same sources with the
same settings reuses the file (another Tune trial, a resumed generation, a
re-run); anything else decodes anew.

The store keeps detokenized *text*, never token ids: a later student may use
another vocabulary, so each reader re-tokenizes with its own tokenizer
(`to_split`). A file is written atomically (temp file + rename) and then a
manifest next to it with the file's sha256; a file whose manifest is missing
or does not match is decoded again, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
from torch import nn

from mgkd.files import sha256_file, write_atomic
from mgkd.generations.checkpoint import parameter_hash
from mgkd.models.decoding import translate_n_best
from mgkd.tasks.translation import SplitData, split_digest
from mgkd.tasks.translation.corpus import Pair

FORMAT = "mgkd-teacher-outputs-v1"
HEADER = ["id", "rank", "score", "source", "hypothesis"]

Events = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class DecodeSettings:
    """What decides the teacher's outputs (the batch size does not: batched == one by one)."""

    beam_size: int = 1
    n_best: int = 1
    max_len_a: float = 1.5
    max_len_b: int = 10
    length_penalty: float = 1.0


@dataclass
class TeacherOutputs:
    """The stored outputs: for each example id its up to n_best (score, text), best first."""

    path: Path
    manifest: Path
    hypotheses: dict[str, list[tuple[float, str]]]
    cached: bool  # True: read from an existing valid file, no decoding
    seconds: float  # time this call took (decoding, or reading the cache)
    # Why an existing file was not used (None: there was none, or it was used).
    rejected: str | None = None


def store_key(
    examples: Sequence[tuple[str, str]], settings: DecodeSettings, teacher_options: dict[str, Any] | None = None
) -> str:
    """sha256 of the decode settings, the teacher's own decode options (if any) and every (id, source text)."""
    h = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    if teacher_options is not None:  # an external teacher's source prefix, output cap
        h.update(json.dumps(teacher_options, sort_keys=True).encode())
    for example_id, source in examples:
        h.update(f"\0{example_id}\t{source}".encode())
    return h.hexdigest()


def _clean(text: str) -> str:
    # A TSV field must not hold its separators.
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def _read(path: Path, manifest: Path, expected: dict[str, Any], ids: set[str]) -> dict[str, list[tuple[float, str]]]:
    """The stored hypotheses, or ValueError saying why the file cannot be trusted."""
    if not manifest.is_file():
        raise ValueError("no manifest (an interrupted write)")
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable manifest: {e}") from None
    for key, value in expected.items():
        if meta.get(key) != value:
            raise ValueError(f"manifest {key} is {meta.get(key)!r}, expected {value!r}")
    if not path.is_file():
        raise ValueError("the outputs file is missing")
    actual = sha256_file(path)
    if actual != meta.get("sha256"):
        raise ValueError(f"sha256 {actual[:12]}… does not match the manifest's {str(meta.get('sha256'))[:12]}…")
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines[0].split("\t") != HEADER:
        raise ValueError("unexpected header")
    out: dict[str, list[tuple[float, str]]] = {}
    for line in lines[1:]:
        if not line:
            continue
        example_id, _rank, score, _source, hyp = line.split("\t")
        out.setdefault(example_id, []).append((float(score), hyp))
    if set(out) != ids:
        raise ValueError(f"holds {len(out)} examples, expected {len(ids)}")
    return out


def teacher_outputs(
    teacher: nn.Module,
    teacher_sha256: str,
    examples: Sequence[tuple[str, str]],
    teacher_tokenizer: spm.SentencePieceProcessor,
    settings: DecodeSettings,
    cache_dir: Path,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    events: Events = lambda _: None,
    split: str = "pseudo",
    label: str = "pseudo",
) -> TeacherOutputs:
    """The teacher's n-best outputs for `examples` (id, source text): from the store, or decoded and stored.

    Args:
        teacher: the frozen teacher (left in the mode it came in). A teacher with `translate_texts` (an
            external model, `mgkd.models.external.HFTeacher`) translates the texts itself, with its own
            tokenizer; any other is an mgkd model decoded on token ids.
        teacher_sha256: its checkpoint's sha256, the first part of the cache key; "" hashes the parameters.
        examples: (example id, source text) pairs; ids must be distinct.
        teacher_tokenizer: the teacher's sentencepiece model (tokenizes sources, detokenizes outputs); unused
            by a teacher with `translate_texts`.
        settings: beam size, n-best and length limits.
        cache_dir: the folder of stored outputs (created if missing).
        device: where the teacher decodes.
        batch_size: sentences per decode batch (speed only).
        events: progress, as `{"type": "decode", "split": split, "done": n, "total": N}`.
        split: the name progress events carry.
        label: the start of the file name, for people browsing the folder.

    Raises:
        ValueError: if the ids are not distinct.
    """
    t0 = time.perf_counter()
    ids = [i for i, _ in examples]
    if len(set(ids)) != len(ids):
        raise ValueError("teacher_outputs needs distinct example ids")
    teacher_sha256 = teacher_sha256 or parameter_hash(teacher)
    options = getattr(teacher, "options", None) if hasattr(teacher, "translate_texts") else None
    key = store_key(examples, settings, options)
    # Absolute: the path goes back to the driver, which logs the file to MLflow.
    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{label}-{teacher_sha256[:16]}-{key[:16]}.tsv"
    manifest = path.with_name(path.name + ".json")
    expected = {"format": FORMAT, "teacher_sha256": teacher_sha256, "key": key}
    total = len(examples)

    rejected = None
    if path.exists() or manifest.exists():
        try:
            hyps = _read(path, manifest, expected, set(ids))
            events({"type": "decode", "split": split, "done": total, "total": total})
            return TeacherOutputs(path, manifest, hyps, True, time.perf_counter() - t0)
        except (ValueError, OSError, UnicodeDecodeError) as e:
            # Never train on a file we cannot vouch for: decode again and overwrite it.
            rejected = f"{path.name}: {e}"

    done = [0]

    def on_batch(k: int) -> None:
        done[0] += k
        events({"type": "decode", "split": split, "done": done[0], "total": total})

    if hasattr(teacher, "translate_texts"):  # another vocabulary: text in, text out
        decoded = teacher.translate_texts(
            [s for _, s in examples], settings.beam_size, settings.n_best, settings.max_len_a, settings.max_len_b,
            settings.length_penalty, batch_size, on_batch,
        )  # fmt: skip
    else:
        sources = [np.asarray(t, dtype=np.int32) for t in teacher_tokenizer.encode([s for _, s in examples])]
        decoded = translate_n_best(
            teacher, sources, teacher_tokenizer.decode, settings.max_len_a, settings.max_len_b, batch_size,
            settings.beam_size, settings.n_best, settings.length_penalty, device, on_batch,
        )  # fmt: skip
    rows = ["\t".join(HEADER)]
    hyps: dict[str, list[tuple[float, str]]] = {}
    for (example_id, source), nbest in zip(examples, decoded):
        # Every sentence gets a row, so the file's ids say which examples it covers.
        nbest = [(s, _clean(h)) for s, h in nbest] or [(-math.inf, "")]
        hyps[example_id] = nbest
        for rank, (score, hyp) in enumerate(nbest):
            rows.append("\t".join([_clean(example_id), str(rank), repr(float(score)), _clean(source), hyp]))
    data = ("\n".join(rows) + "\n").encode("utf-8")
    write_atomic(path, data)
    meta = {
        **expected,
        "sha256": hashlib.sha256(data).hexdigest(),
        "settings": asdict(settings),
        **({"teacher_options": options} if options is not None else {}),
        "examples": total,
        "rows": len(rows) - 1,
        "decode_s": time.perf_counter() - t0,
    }
    # The manifest goes last: a file without one is an interrupted write.
    write_atomic(manifest, json.dumps(meta, indent=1).encode("utf-8"))
    return TeacherOutputs(path, manifest, hyps, False, time.perf_counter() - t0, rejected)


def to_split(
    ids: list[str], sources: list[str], targets: list[str], tokenizer: spm.SentencePieceProcessor
) -> SplitData:
    """A `SplitData` of (source, teacher output) texts, tokenized with the *student's* tokenizer."""
    return SplitData(
        ids=list(ids),
        sources=list(sources),
        targets=list(targets),
        src=[np.asarray(t, dtype=np.int32) for t in tokenizer.encode(list(sources))],
        tgt=[np.asarray(t, dtype=np.int32) for t in tokenizer.encode(list(targets))],
        digest=split_digest([Pair(i, s, t) for i, s, t in zip(ids, sources, targets)]),
    )
