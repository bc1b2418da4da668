"""Streaming through an engine: the input is read chunk by chunk, results written as each chunk is done."""

from __future__ import annotations

import io
import os

import pytest

from mgkd.deploy.inference import Outcome
from mgkd.deploy.streaming import atomic_output, read_lines, run_stream
from mgkd.errors import MgkdError


def test_stream_reads_the_input_lazily_chunk_by_chunk():
    out = io.StringIO()
    written_when_read: list[int] = []

    def lines():
        for i in range(10):
            written_when_read.append(out.getvalue().count("\n"))
            yield f"line {i}"

    class Upper:
        def run(self, texts):
            return Outcome([t.upper() for t in texts], truncated=0)

    summary = run_stream(Upper(), lines(), out, 3, lambda s: s)
    assert out.getvalue().splitlines() == [f"LINE {i}" for i in range(10)]
    # Line 3 is read after lines 0-2 were written: at most one chunk is held in memory.
    assert written_when_read == [0, 0, 0, 3, 3, 3, 6, 6, 6, 9] and summary.lines == 10


def test_atomic_output_leaves_nothing_on_error_and_replaces_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(MgkdError), atomic_output(target) as f:
        f.write("half\n")
        raise MgkdError("boom")
    assert target.read_text(encoding="utf-8") == "old\n" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_output(target) as f:
        f.write("new\n")
    assert target.read_text(encoding="utf-8") == "new\n" and os.listdir(tmp_path) == ["out.txt"]


def test_read_lines_names_the_bad_line_and_refuses_empty_input():
    assert list(read_lines(io.BytesIO(b"a\r\nb\n\nc"), "x")) == ["a", "b", "", "c"]
    with pytest.raises(MgkdError, match="in.txt line 2 is not UTF-8"):
        list(read_lines(io.BytesIO(b"ok\n\xff\n"), "in.txt"))
    with pytest.raises(MgkdError, match="empty"):
        list(read_lines(io.BytesIO(b""), "in.txt"))
