"""The cached teacher signal: the teacher's top-k log-probs of every training target token, on disk.

With `teacher_signal: cached` a student reads its teacher from here instead of
running it every step. The frozen teacher runs once over the training split
(eval mode, no grad, token-budget batches); for every target token of every
example (target order, EOS included) it keeps the k best log-probs (float16)
and their token ids (int16 while the vocabulary fits in 32768 ids, int32
beyond). Layout of a cache folder:

    offsets.npy   (N + 1,) int64   example i's tokens are rows offsets[i]:offsets[i + 1]
    logprobs.npy  (tokens, k)      float16, descending per row
    indices.npy   (tokens, k)      int16 | int32 token ids
    manifest.json                  what it was built from, and each array's sha256

The folder's name is the key: (teacher checkpoint sha256, data hash + split
digest, k), so every epoch and every Tune trial of a generation meets the same
cache. It is written to a temporary folder, fsynced, then renamed into place:
a folder with a manifest is complete. Loading memory-maps the arrays after
checking the manifest against the current teacher/data/k and each file
against its sha256; anything that does not match is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.format import open_memmap

from mgkd.errors import MgkdError
from mgkd.files import sha256_file
from mgkd.outputs import Seq2SeqOutput
from mgkd.tasks.translation import PAD, Batch, PreparedData, SplitData, batch_indices, collate

FORMAT = "mgkd-teacher-topk-v1"
ARRAYS = ("offsets", "logprobs", "indices")
log = logging.getLogger(__name__)


@dataclass
class TeacherCache:
    """A loaded cache: memory-mapped arrays, their manifest, and how this call got them."""

    folder: Path
    manifest: dict[str, Any]
    offsets: np.ndarray  # (N + 1,) int64
    logprobs: np.ndarray  # (tokens, k) float16
    indices: np.ndarray  # (tokens, k) int16 | int32
    hit: bool  # True: loaded as it was; False: built (or rebuilt) by this call
    ready_s: float  # seconds this call spent: the build, or the load and sha256 checks

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def metrics(self) -> dict[str, float]:
        return {
            "teacher_cache_bytes_per_token": self.manifest["bytes"] / max(1, self.manifest["tokens"]),
            "teacher_cache_build_s": self.ready_s,
            "teacher_cache_hit": float(self.hit),
        }

    def teacher_output(self, batch: Batch) -> Seq2SeqOutput:
        """The teacher's top-k signal for a gold batch, aligned with `batch.tgt_out`; zeros at padding."""
        rows = np.asarray(batch.indices, dtype=np.int64)
        start = self.offsets[rows]
        length = self.offsets[rows + 1] - start
        width = batch.tgt_out.size(1)
        valid = np.arange(width)[None, :] < length[:, None]  # (B, T)
        if not np.array_equal(valid, batch.tgt_out.ne(PAD).cpu().numpy()):
            raise RuntimeError("the teacher cache does not match the batch's target lengths (bug)")
        flat = np.where(valid, start[:, None] + np.arange(width)[None, :], 0).reshape(-1)
        shape = (len(rows), width, self.k)
        values = torch.from_numpy(self.logprobs[flat].astype(np.float32)).view(shape)
        ids = torch.from_numpy(self.indices[flat].astype(np.int64)).view(shape)
        pad = torch.from_numpy(~valid)
        values[pad] = 0.0  # padding: any valid values do, the loss masks them
        ids[pad] = 0
        device = batch.tgt_out.device
        return Seq2SeqOutput(
            logits=torch.empty(0, device=device), topk_logprobs=values.to(device), topk_indices=ids.to(device)
        )


def cache_folder(root: Path, teacher_sha256: str, data_hash: str, split: SplitData, k: int) -> Path:
    """Where the cache of (teacher, data, k) lives under `root` (PreparedData.cache_dir / "teacher")."""
    data_key = hashlib.sha256(f"{data_hash}\0{split.digest}".encode()).hexdigest()
    return Path(root) / f"topk{k}-t{teacher_sha256[:16]}-d{data_key[:16]}"


def load_or_build_cache(
    teacher: torch.nn.Module,
    teacher_sha256: str,
    data: PreparedData,
    k: int,
    max_tokens: int,
    device: torch.device,
    events: Callable[[dict[str, Any]], None] = lambda _: None,
    split: str = "train",
) -> TeacherCache:
    """The teacher's top-k cache of a split: loaded if a valid one exists, built (once) otherwise.

    Raises:
        MgkdError: k is not between 1 and the vocabulary size.
    """
    if not 1 <= k <= data.vocab_size:
        raise MgkdError(f"teacher_cache_k={k} must be between 1 and the vocabulary size ({data.vocab_size})")
    t0 = time.perf_counter()
    s = data.splits[split]
    expected = {
        "format": FORMAT,
        "teacher_sha256": teacher_sha256,
        "data_hash": data.data_hash,
        "split": split,
        "split_digest": s.digest,
        "k": k,
        "vocab_size": data.vocab_size,
        "examples": len(s),
        "tokens": int(sum(len(t) + 1 for t in s.tgt)),
    }
    folder = cache_folder(Path(data.cache_dir) / "teacher", teacher_sha256, data.data_hash, s, k)
    problem = _problem(folder, expected)
    if problem is None:
        return _open(folder, hit=True, ready_s=time.perf_counter() - t0)
    if problem != "absent":
        log.warning("teacher cache %s is not usable (%s); rebuilding it", folder, problem)
    _build(teacher, s, expected, folder, max_tokens, device, events)
    return _open(folder, hit=False, ready_s=time.perf_counter() - t0)


# --- loading -----------------------------------------------------------------------


def _problem(folder: Path, expected: dict[str, Any]) -> str | None:
    """Why the cache in `folder` must not be used, or None when it matches and is intact."""
    path = folder / "manifest.json"
    if not path.is_file():
        return "absent"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"unreadable manifest: {e}"
    for key, want in expected.items():
        if manifest.get(key) != want:
            return f"manifest {key} is {manifest.get(key)!r}, expected {want!r}"
    for name in ARRAYS:
        file = folder / f"{name}.npy"
        want = manifest.get("files", {}).get(name, {}).get("sha256")
        if not file.is_file():
            return f"{file.name} is missing"
        if sha256_file(file) != want:
            return f"{file.name} has another sha256 than its manifest says (corrupt or truncated)"
    return None


def _open(folder: Path, hit: bool, ready_s: float) -> TeacherCache:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    return TeacherCache(folder, manifest, arrays["offsets"], arrays["logprobs"], arrays["indices"], hit, ready_s)


# --- building ----------------------------------------------------------------------


@torch.no_grad()
def _build(teacher: torch.nn.Module, split: SplitData, expected: dict[str, Any], folder: Path, max_tokens: int,
           device: torch.device, events: Callable[[dict[str, Any]], None]) -> None:  # fmt: skip
    t0 = time.perf_counter()
    k, n = expected["k"], len(split)
    index_dtype = np.int16 if expected["vocab_size"] <= np.iinfo(np.int16).max + 1 else np.int32
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(t) + 1 for t in split.tgt], out=offsets[1:])
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    was_training = teacher.training
    teacher.eval()
    try:
        np.save(tmp / "offsets.npy", offsets)
        _sync_file(tmp / "offsets.npy")
        logprobs = open_memmap(tmp / "logprobs.npy", mode="w+", dtype=np.float16, shape=(int(offsets[-1]), k))
        indices = open_memmap(tmp / "indices.npy", mode="w+", dtype=index_dtype, shape=(int(offsets[-1]), k))
        done = 0
        events({"type": "decode", "split": "teacher-cache", "done": 0, "total": n})
        for idx in batch_indices(split, max_tokens, shuffle=False):
            b = collate(split, idx).to(device)
            values, ids = F.log_softmax(teacher(b.src, b.tgt_in).logits.float(), dim=-1).topk(k, dim=-1)
            values, ids = values.cpu().numpy(), ids.cpu().numpy()
            for row, i in enumerate(idx):
                a, z = offsets[i], offsets[i + 1]
                logprobs[a:z] = values[row, : z - a]
                indices[a:z] = ids[row, : z - a]
            done += len(idx)
            events({"type": "decode", "split": "teacher-cache", "done": done, "total": n})
        logprobs.flush()
        indices.flush()
        del logprobs, indices  # unmap before hashing
        _sync_file(tmp / "logprobs.npy")
        _sync_file(tmp / "indices.npy")
        files = {}
        for name in ARRAYS:
            file = tmp / f"{name}.npy"
            head = np.load(file, mmap_mode="r")
            files[name] = {"sha256": sha256_file(file), "bytes": file.stat().st_size, "dtype": str(head.dtype),
                           "shape": list(head.shape)}  # fmt: skip
            del head
        manifest = {
            **expected,
            "logprob_dtype": "float16",
            "index_dtype": np.dtype(index_dtype).name,
            "bytes": sum(f["bytes"] for f in files.values()),
            "files": files,
            "teacher_max_tokens": max_tokens,
            "build_s": round(time.perf_counter() - t0, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _sync_file(tmp / "manifest.json")
        _sync_file(tmp)
        _publish(tmp, folder, expected)
    except BaseException:
        _discard(tmp)
        raise
    finally:
        teacher.train(was_training)


def _publish(tmp: Path, folder: Path, expected: dict[str, Any]) -> None:
    """Rename the finished folder into place, replacing an unusable one.

    When another process (a concurrent Tune trial of the same generation) has
    published a valid cache of the same key meanwhile, its copy stays and ours goes.
    """
    if folder.exists():
        if _problem(folder, expected) is None:
            _discard(tmp)
            return
        stale = folder.with_name(f".{folder.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(folder, stale)
        except FileNotFoundError:
            pass  # another process moved it already
        else:
            _discard(stale)
    try:
        os.rename(tmp, folder)
    except OSError:
        if _problem(folder, expected) is not None:
            raise
        _discard(tmp)
    _sync_file(folder.parent)


def _sync_file(path: Path) -> None:
    """fsync a file or folder, so a completed cache survives a crash of the machine."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
