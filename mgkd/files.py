"""Files written whole or not at all, and their checksums.

Every file another process or a resumed run reads back (checkpoints, training
states, teacher outputs, tokenizers, prepared data) goes through `write_atomic`:
a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path` (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder: the rename stays on one file system, so it is atomic. The pid keeps
    # two processes writing the same file from sharing a temp file.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
