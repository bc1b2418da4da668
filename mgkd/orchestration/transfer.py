"""What crosses nodes under Ray Train, and how: nothing by path.

A generation's workers may run on another node than the driver, which does not see their files and whose files
they do not see. So:

- the teacher's checkpoint bytes go to the workers through the object store with their sha256, which each
  worker checks before loading (and writes to its own scratch folder, since the loader takes a path); an external
  teacher folder is still read by path, at the same path on every node;
- worker 0 trains in a scratch folder of its own and delivers what the driver reads afterwards (the checkpoint,
  the test outputs, the artifacts, the result) as a Ray Train checkpoint in the run's storage, with a sha256
  manifest; the driver copies it into the generation's folder and checks every file;
- Ctrl-C's stop request, the run's own error, the end of an interrupted run and the latest training state travel
  through a small named actor (`RunSignals`), not files in the generation's folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mgkd.errors import MgkdError
from mgkd.files import sha256_file, write_atomic
from mgkd.generations import GenerationResult

MANIFEST = "delivery.json"  # in the delivered checkpoint, and kept in the generation's folder
RESULT_FILE = "result.json"
OUTSIDE = "outside"  # delivered files that lay outside worker 0's folder (artifacts in the data cache)


def verified(data: bytes, sha256: str, what: str) -> bytes:
    """`data` if its sha256 is `sha256`, else a clear error (the bytes changed on the way or at the source)."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise MgkdError(
            f"{what} arrived with sha256 {actual[:12]}…, expected {sha256[:12]}… (corrupted on the way or changed "
            "since it was written); nothing was loaded"
        )
    return data


# --- teachers: bytes through the object store ---------------------------------------------------------------


def ship_teacher(checkpoint: Any, sha256: Any) -> Any:
    """The driver's side: each checkpoint file of a teacher (or of an ensemble) as {"ref", "sha256", "name"}, its
    bytes put in the object store once; a folder (an external teacher) stays a path."""
    import ray

    if checkpoint is None:
        return None
    if isinstance(checkpoint, list):
        return [ship_teacher(c, s) for c, s in zip(checkpoint, sha256 or [None] * len(checkpoint))]
    path = Path(checkpoint)
    if path.is_dir():
        return str(checkpoint)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None:
        verified(data, sha256, f"teacher checkpoint {path}")
    return {"ref": ray.put(data), "sha256": digest, "name": path.name}


def receive_teacher(shipped: Any, scratch: Path) -> Any:
    """The worker's side: each shipped checkpoint checked against its sha256 and written into `scratch` (the
    loader takes a path; torch.load with weights_only=True reads it there)."""
    import ray

    if shipped is None or isinstance(shipped, str):
        return shipped
    if isinstance(shipped, list):
        return [receive_teacher(s, scratch / f"member-{i}") for i, s in enumerate(shipped)]
    data = verified(ray.get(shipped["ref"]), shipped["sha256"], f"teacher checkpoint {shipped['name']}")
    path = scratch / "teacher" / shipped["name"]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return str(path)


# --- worker 0's outputs: a Ray Train checkpoint with a manifest ---------------------------------------------


def write_manifest(folder: Path, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """sha256 of every file under `folder` (relative paths), written to `folder`/delivery.json with `info`."""
    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {**(info or {}), "files": files}
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise MgkdError(f"the delivered outputs in {folder} have no {MANIFEST}; the run did not deliver them whole")
    return json.loads(path.read_text(encoding="utf-8"))


def copy_verified(src: Path, dest: Path, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Copy the files a manifest lists from `src` into `dest`, each checked against its sha256 (a mismatch or a
    missing file is an error, and leaves no partial file behind). Returns the manifest."""
    manifest = read_manifest(src)
    for rel, sha in manifest["files"].items():
        if rel in skip:
            continue
        source, target = src / rel, dest / rel
        if not source.is_file():
            raise MgkdError(f"the delivered outputs lack {rel} (listed in {src / MANIFEST})")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        shutil.copyfile(source, tmp)
        actual = sha256_file(tmp)
        if actual != sha:
            tmp.unlink(missing_ok=True)
            raise MgkdError(f"delivered file {rel} has sha256 {actual[:12]}…, its manifest says {sha[:12]}…")
        os.replace(tmp, target)
    write_atomic(dest / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def pack_delivery(result: GenerationResult, scratch: Path, into: Path, info: dict[str, Any]) -> None:
    """Worker 0: its scratch folder's files (no training state, no staging) and the result's files outside it,
    into `into`, with the result (paths relative to the folder) and the manifest."""
    record = dataclasses.asdict(result)
    scratch_prefix = str(scratch.resolve()) + os.sep

    outside: dict[str, str] = {}

    def place(path: str | None, i: int = 0) -> str | None:
        if path is None:
            return None
        p = Path(path).resolve()
        if str(p).startswith(scratch_prefix):
            return p.relative_to(scratch.resolve()).as_posix()
        target = into / OUTSIDE / str(i) / p.name  # the file's name is kept: MLflow records it under that name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
        rel = target.relative_to(into).as_posix()
        outside[rel] = str(p)
        return rel

    for p in sorted(scratch.rglob("*")):
        rel = p.relative_to(scratch)
        if not p.is_file() or rel.parts[0] == ".report" or p.name.startswith("train_state"):
            continue  # Ray Train's staging, and training states (the generation is complete)
        (into / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, into / rel)  # Ray copies the folder to storage; nothing is written twice here
        except OSError:
            shutil.copyfile(p, into / rel)
    external = Path(record["checkpoint"]).is_dir()  # an external generation 0: its folder is read by path
    if not external:
        record["checkpoint"] = place(record["checkpoint"])
    record["translations"] = place(record["translations"])
    record["manifest"] = place(record["manifest"])
    record["artifacts"] = [place(a, i) for i, a in enumerate(record["artifacts"])]
    write_manifest(into, {**info, "result": record, "external": external, "outside": outside})


def unpack_delivery(checkpoint_dir: Path, out_dir: Path) -> tuple[GenerationResult, dict[str, Any]]:
    """The driver: the delivered files copied (and checked) into the generation's folder, and the result with
    its paths there. Artifacts from outside worker 0's folder keep their path where that file exists here with
    the same sha256 (a single node), else go to the folder's `outside/`."""
    listed = read_manifest(checkpoint_dir)
    # Files from outside worker 0's folder that are here already, unchanged (a single node), keep their path.
    here = {rel for rel, original in listed.get("outside", {}).items()
            if Path(original).is_file() and sha256_file(Path(original)) == listed["files"][rel]}  # fmt: skip
    manifest = copy_verified(checkpoint_dir, out_dir, skip=here)
    record = dict(manifest["result"])

    def local(rel: str | None) -> str | None:
        if rel is None:
            return None
        return manifest["outside"][rel] if rel in here else str(out_dir / rel)

    if not manifest.get("external"):
        record["checkpoint"] = local(record["checkpoint"])
    record["translations"] = local(record["translations"])
    record["manifest"] = local(record["manifest"])
    record["artifacts"] = [local(a) for a in record["artifacts"]]
    result = GenerationResult(**record)
    write_atomic(out_dir / RESULT_FILE, json.dumps(dataclasses.asdict(result)).encode())
    return result, manifest


def scratch_dir(name: str) -> Path:
    """A folder of this worker's own (its node's temporary directory): `out` for the generation's files,
    `teacher` for the received teacher, `deliver` for what worker 0 hands to the driver."""
    return Path(tempfile.mkdtemp(prefix=f"mgkd-{name}-"))


# --- signals: a named actor per run instead of files ---------------------------------------------------------


class RunSignals:
    """One run's signals between the driver and its workers (a Ray actor, named after the run)."""

    def __init__(self) -> None:
        self.stop = False
        self.end: tuple[str, str] | None = None  # ("result" | "error" | "interrupted", message)
        self.state: bytes | None = None

    def request_stop(self) -> None:
        self.stop = True

    def stop_requested(self) -> bool:
        return self.stop

    def finish(self, kind: str, message: str = "") -> None:
        if self.end is None or kind == "error":
            self.end = (kind, message)

    def ended(self) -> tuple[str, str] | None:
        return self.end

    def put_state(self, data: bytes) -> None:
        self.state = data

    def take_state(self) -> bytes | None:
        data, self.state = self.state, None
        return data


def start_signals(name: str) -> Any:
    import ray

    actor = ray.remote(RunSignals).options(name=f"mgkd-signals-{name}-{os.getpid()}-{time.time_ns()}", num_cpus=0)
    return actor.remote()


class StopPoll:
    """A worker's view of the stop request, asked at most every `every_s` (each step would pay a round trip)."""

    def __init__(self, signals: Any, every_s: float = 0.2) -> None:
        self.signals, self.every_s = signals, every_s
        self.last, self.seen = 0.0, False

    def __call__(self, fresh: bool = False) -> bool:
        import ray

        if self.signals is None or self.seen:
            return self.seen
        now = time.monotonic()
        if fresh or now - self.last >= self.every_s:
            self.last = now
            self.seen = bool(ray.get(self.signals.stop_requested.remote()))
        return self.seen
