"""Streaming a file through an engine: lines in chunks, results written as each chunk is done.

A large input is never held whole: at most `chunk_lines` lines are in memory at once. `--output` is
written atomically (a temporary file beside it, renamed at the end), so an error leaves no partial file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from mgkd.errors import MgkdError


def read_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """The stream's lines as text (newline removed); a line that is not UTF-8 stops with its number."""
    n = 0
    for n, raw in enumerate(stream, 1):  # noqa: B007 - n counts lines for the empty check
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MgkdError(
                f"{name} line {n} is not UTF-8 (byte {e.start}: {raw[e.start : e.start + 1]!r}); "
                "convert the file, e.g. iconv -f LATIN1 -t UTF-8"
            ) from None
        yield text.rstrip("\r\n")
    if n == 0:
        raise MgkdError(f"{name} is empty; give one sentence (or example) per line")


def chunked(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextlib.contextmanager
def open_input(path: Path | None) -> Iterator[tuple[BinaryIO, str]]:
    """The input as bytes: the file, or stdin for None / '-'."""
    if path is None or str(path) == "-":
        yield sys.stdin.buffer, "stdin"
        return
    if not path.is_file():
        raise MgkdError(f"input file {path} does not exist")
    with open(path, "rb") as f:
        yield f, str(path)


@contextlib.contextmanager
def atomic_output(path: Path | None) -> Iterator[IO[str]]:
    """stdout, or a temporary file renamed over `path` only when the block ends without error."""
    if path is None or str(path) == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(path)
    if path.is_dir():
        raise MgkdError(f"--output {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise MgkdError(f"--output {path}: its folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class StreamSummary:
    lines: int
    truncated: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.lines / max(self.seconds, 1e-9)


def format_prediction(label: str, probability: float, fmt: str) -> str:
    if fmt == "jsonl":
        return json.dumps({"label": label, "probability": round(probability, 6)}, ensure_ascii=False)
    return f"{label}\t{probability:.4f}"


def run_stream(
    engine: Any,
    lines: Iterator[str],
    out: IO[str],
    chunk_lines: int,
    render: Callable[[Any], str],
    progress: Callable[[int, float], None] | None = None,
) -> StreamSummary:
    """Every line through `engine.run`, chunk by chunk; each result rendered as one output line."""
    t0 = time.perf_counter()
    done = truncated = 0
    for chunk in chunked(lines, chunk_lines):
        outcome = engine.run(chunk)
        out.write("".join(render(o) + "\n" for o in outcome.outputs))
        out.flush()
        done += len(chunk)
        truncated += outcome.truncated
        if progress:
            progress(done, time.perf_counter() - t0)
    return StreamSummary(done, truncated, time.perf_counter() - t0)
