"""The training state's single commit point: one file that carries its own checksum, so a kill at any moment of a
save leaves a state that loads (the old one or the new one), never a state refused as corrupt.

CI once killed a run between the state file and its separate `.sha256` file: the resume refused a good state.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil

import pytest
import torch

from mgkd.errors import MgkdError
from mgkd.generations import train_state
from mgkd.generations.train_state import (
    LEGACY_SHA_FILE,
    STATE_FILE,
    clear_train_state,
    load_train_state,
    save_train_state,
)


def _state(step: int) -> dict:
    return {"identity": "x", "step": step, "student": {"w": torch.full((3,), float(step))}}


def test_a_kill_before_the_rename_leaves_the_previous_state_loadable(tmp_path, monkeypatch):
    save_train_state(tmp_path, _state(1))

    def killed(*_args):
        raise KeyboardInterrupt  # the process dies after the temp file is written, before it is renamed

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_train_state(tmp_path, _state(2))
    assert load_train_state(tmp_path, "x")["step"] == 1


def test_the_state_file_alone_is_enough(tmp_path):
    """What a Ray Train checkpoint copies, or a kill leaves without any side file: the file checks itself."""
    save_train_state(tmp_path / "a", _state(7))
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / STATE_FILE, tmp_path / "b" / STATE_FILE)
    assert load_train_state(tmp_path / "b", "x")["step"] == 7
    assert not (tmp_path / "a" / LEGACY_SHA_FILE).exists()


def test_a_stale_side_file_does_not_decide(tmp_path):
    """An older run's `.sha256` beside a new state (the kill CI hit, in the old two-file format) is ignored."""
    (tmp_path / LEGACY_SHA_FILE).write_text("0" * 64)
    save_train_state(tmp_path, _state(3))
    assert not (tmp_path / LEGACY_SHA_FILE).exists()
    (tmp_path / LEGACY_SHA_FILE).write_text("0" * 64)
    assert load_train_state(tmp_path, "x")["step"] == 3


@pytest.mark.parametrize("cut", ["payload", "header"])
def test_a_truncated_or_altered_state_is_refused_naming_the_fix(tmp_path, cut):
    path = save_train_state(tmp_path, _state(4))
    data = path.read_bytes()
    path.write_bytes(data[:-100] if cut == "payload" else data[:30] + b"f" + data[31:])
    with pytest.raises(MgkdError, match=r"does not match its checksum .* delete it"):
        load_train_state(tmp_path, "x")


def test_a_state_written_before_the_header_still_loads(tmp_path):
    """States of runs started by an earlier mgkd: the bare torch file and its side file."""
    buf = io.BytesIO()
    torch.save({"format": train_state.FORMAT, **_state(5)}, buf)
    (tmp_path / STATE_FILE).write_bytes(buf.getvalue())
    (tmp_path / LEGACY_SHA_FILE).write_text(hashlib.sha256(buf.getvalue()).hexdigest())
    assert load_train_state(tmp_path, "x")["step"] == 5
    os.remove(tmp_path / LEGACY_SHA_FILE)
    with pytest.raises(MgkdError, match="does not match its checksum"):
        load_train_state(tmp_path, "x")
    clear_train_state(tmp_path)
    assert load_train_state(tmp_path, "x") is None
