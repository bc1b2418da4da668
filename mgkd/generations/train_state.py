"""A generation's training state on disk, so a killed generation continues where it stopped.

nanoGPT's habit: the file carries everything needed to resume (student,
optimizer, step, position in the epoch, the best-so-far weights, the random
number generators) plus what it belongs to (generation, data hash, model), so
a state from another run is refused rather than silently used. One file,
written atomically, that begins with its own sha256 (a header line before
the torch payload): the rename is the single commit point, so a kill at any
moment leaves the old state or the new one, each with its matching checksum.
Loaded with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgkd.errors import MgkdError
from mgkd.files import write_atomic

STATE_FILE = "train_state.pt"
FORMAT = "mgkd-train-state-1"
# The file's first line: this magic, the sha256 (hex) of the rest, a newline. States written before the header
# existed keep their checksum in a side file (`train_state.pt.sha256`), which is still read.
HEADER = b"mgkd-train-state-sha256 "
_HEADER_LEN = len(HEADER) + 64 + 1
LEGACY_SHA_FILE = STATE_FILE + ".sha256"


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT, or Ray's gentle cancel, which arrives the same way) until the block is done.

    Around the optimizer step: an interrupt there would leave the weights half updated, so no state could be
    saved and everything since the last periodic checkpoint would be lost. Held, it lands after the step, whose
    state is then saved whole. Only the main thread receives signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    held: list[tuple[int, Any]] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and callable(previous):
        previous(*held[0])  # Python's own handler raises KeyboardInterrupt here


def rng_state(noise: torch.Generator) -> dict[str, Any]:
    """This process's random number generators: torch (CPU, and every visible CUDA device's), numpy, Python's,
    and the generation's noise generator."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "noise": noise.get_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any], noise: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")  # absent in states saved before CUDA's was kept; None where no CUDA was visible
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    noise.set_state(state["noise"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def worker_rng_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """What a training state keeps of the workers' generators (`states`: every worker's in rank order, or worker
    0's alone): worker 0's under "rng", as a single process always saved it, and the others' with the number of
    workers they belong to."""
    return {"rng": states[0], "rng_others": states[1:], "rng_world": len(states)}


def restore_worker_rng(saved: dict[str, Any], rank: int, world: int, noise: torch.Generator) -> str | None:
    """Give this worker back the generators it had when `saved` was written. Returns None when that is exact,
    else why not: a state saved by another number of workers (or by worker 0 alone) restores worker 0's
    generators and leaves the others as their own seeds made them, so dropout and noise differ from an
    uninterrupted run's."""
    saved_world = saved.get("rng_world", 1)  # states written before per-worker generators held worker 0's only
    if saved_world == world:
        set_rng_state(saved["rng"] if rank == 0 else saved["rng_others"][rank - 1], noise)
        return None
    if rank == 0:
        set_rng_state(saved["rng"], noise)
    return (f"the training state holds the random generators of {saved_world} worker(s) and this run has {world}: "
            "worker 0 continues its own, the others keep the seeds they started with (dropout and noise are not "
            "those of an uninterrupted run)")  # fmt: skip


def identity(spec_dict: dict[str, Any], data_hash: str) -> str:
    """What a state must match to be resumed: the generation's model and data."""
    key = {"generation": spec_dict["index"], "model": spec_dict["model"], "data": data_hash}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def save_train_state(out_dir: Path, state: dict[str, Any]) -> Path:
    """Atomically write the state, its sha256 in the file's header line."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    payload = buf.getvalue()
    path = Path(out_dir) / STATE_FILE
    write_atomic(path, HEADER + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    path.with_name(LEGACY_SHA_FILE).unlink(missing_ok=True)  # an older run's side file; the header is what counts
    return path


def _payload(path: Path) -> bytes:
    """The torch bytes of a state file whose checksum matches (header, or an older run's side file)."""
    data = path.read_bytes()
    if data.startswith(HEADER):
        recorded, payload = data[len(HEADER) : _HEADER_LEN - 1].decode("ascii", "replace"), data[_HEADER_LEN:]
    else:
        side = path.with_name(LEGACY_SHA_FILE)
        recorded, payload = (side.read_text().strip() if side.is_file() else None), data
    if recorded != hashlib.sha256(payload).hexdigest():
        raise MgkdError(
            f"training state {path} does not match its checksum (corrupt or half-written); delete it to restart "
            "this generation from scratch"
        )
    return payload


def load_train_state(out_dir: Path, expected_identity: str) -> dict[str, Any] | None:
    """The saved state of this generation, or None when there is none. A corrupt or foreign one is an error."""
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return None
    payload = _payload(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise MgkdError(f"training state {path} cannot be loaded safely: {e}; delete it to restart") from None
    if state.get("format") != FORMAT:
        raise MgkdError(f"{path} is not an mgkd training state; delete it to restart this generation")
    if state.get("identity") != expected_identity:
        raise MgkdError(
            f"training state {path} belongs to another model or data (generation, architecture or corpus changed); "
            "delete it to restart this generation, or restore the original config"
        )
    return state


def clear_train_state(out_dir: Path) -> None:
    for name in (STATE_FILE, LEGACY_SHA_FILE):
        (Path(out_dir) / name).unlink(missing_ok=True)
