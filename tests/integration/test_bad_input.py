"""Bad input across commands: one clear error (exit 2, no traceback), before anything is written."""

from __future__ import annotations

import socket

from ..helpers.bad_input import _run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ray_address_fails_fast(tmp_path):
    out = _run(tmp_path, "--ray-address", f"127.0.0.1:{_free_port()}", "--set", "corpus.max_pairs=300",
               "--set", "tokenizer.vocab_size=300")  # fmt: skip
    assert "cannot connect to Ray at" in out and "--no-ray" in out
    assert "must look like HOST:PORT" in _run(tmp_path, "--ray-address", "nohost", "--set", "corpus.max_pairs=300",
                                               "--set", "tokenizer.vocab_size=300")  # fmt: skip
