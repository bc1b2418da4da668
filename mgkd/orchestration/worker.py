"""The Ray Train function of a generation, on each of its workers (possibly on another node than the driver).

Each worker trains in a scratch folder of its own; the teacher arrives as checked bytes (transfer.py), the
driver's stop request is polled from the run's signals actor, training states go to Ray Train's storage (and
worker 0's to the driver), and worker 0 delivers its outputs as the run's last checkpoint. A Tune trial keeps
its trial folder by path (`deliver` off).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from mgkd.errors import MgkdError
from mgkd.files import write_atomic
from mgkd.generations import GenerationResult, GenerationSpec, train_generation
from mgkd.generations.train_state import STATE_FILE
from mgkd.orchestration.transfer import RESULT_FILE, StopPoll, pack_delivery, receive_teacher, scratch_dir, verified
from mgkd.tasks.translation import PreparedData

ERROR_FILE = "error.txt"  # a Tune trial's error, in its folder (sweeps keep their trials' files by path)
STOP_WAIT_S = 60.0


class RayTrainSession:
    """`train_generation`'s Session under Ray Train: reports go to `ray.train.report`, training states become
    Ray Train checkpoints (persisted in the run's storage) and, from worker 0, the run's latest state for the
    driver's folder; a restarted attempt gets the latest back. The driver's stop request comes from `signals`."""

    def __init__(self, out_dir: Path, epoch_reports_only: bool = False, signals: Any = None) -> None:
        self.out_dir = out_dir
        self.epoch_reports_only = epoch_reports_only
        self.signals = signals
        self.stop_requested = StopPoll(signals)

    def restored(self) -> Path | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return Path(checkpoint.to_directory()) if checkpoint is not None else None

    def report(self, metrics: dict[str, float], state: Path | None) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics)
            return
        if self.signals is not None:  # the driver keeps the latest state in the generation's folder
            self.signals.put_state.remote(state.read_bytes())
        # A hard link in a folder beside the state (the file carries its own checksum): Ray copies it to storage;
        # nothing is written twice here.
        staging = self.out_dir / ".report"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        os.link(state, staging / state.name)
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staging)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _node() -> dict[str, Any]:
    """Where this worker runs: its Ray node id and that node's resources (a test tells the nodes apart so)."""
    import socket

    import ray

    node_id = ray.get_runtime_context().get_node_id()
    resources = next((n.get("Resources", {}) for n in ray.nodes() if n.get("NodeID") == node_id), {})
    return {"node_id": node_id, "hostname": socket.gethostname(), "node_resources": resources}


def train_loop(config: dict[str, Any]) -> None:
    """The Ray Train function of one generation, on every worker, in a scratch folder of its own. With
    `deliver`, worker 0 hands its outputs to the driver as the run's last checkpoint, and its error, or the end
    of an interrupted run, through the run's signals actor; without (a Tune trial), it writes the result or the
    error into the trial's folder."""
    import ray
    import ray.train
    import torch

    spec: GenerationSpec = config["spec"]
    deliver, signals = config.get("deliver", False), config.get("signals")
    if spec.train.threads is None:
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    data = config["data"] if isinstance(config["data"], PreparedData) else ray.get(config["data"])
    queue = config.get("queue")
    events = queue.put if queue is not None else (lambda _: None)
    root = scratch_dir(f"gen{spec.index}")
    out_dir = root / "out" if deliver else Path(config["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        teacher = receive_teacher(config["teacher"], root / "teacher")
        resume = config.get("resume_state")
        if resume is not None:  # train_generation takes the newer of it and Ray Train's latest reported state
            for name, shipped in resume.items():  # the state (and an older run's side checksum file)
                write_atomic(
                    out_dir / name, verified(ray.get(shipped["ref"]), shipped["sha256"], f"{name} of {spec.index}")
                )
        session = RayTrainSession(out_dir, config.get("epoch_reports_only", False), signals)
        try:
            result = train_generation(spec, data, out_dir, teacher, config["teacher_sha256"], events, session)
        except MgkdError as e:
            if signals is not None:
                ray.get(signals.finish.remote("error", str(e)))
            else:
                write_atomic(out_dir / ERROR_FILE, str(e).encode())
            return
        except KeyboardInterrupt:
            if (out_dir / STATE_FILE).is_file() and signals is not None:  # saved at the interrupt: to the driver
                ray.get(signals.put_state.remote((out_dir / STATE_FILE).read_bytes()))
            if not session.stop_requested(fresh=True):
                raise
            if signals is not None and ray.train.get_context().get_world_rank() == 0:
                ray.get(signals.finish.remote("interrupted"))
            return  # the state is saved; the run ends without a result
        if not deliver:
            if result is not None:
                write_atomic(out_dir / RESULT_FILE, json.dumps(dataclasses.asdict(result)).encode())
            return
        # Every worker reports once more (Ray Train wants as many reports from each); worker 0's carries its outputs.
        if result is None:
            ray.train.report({"delivered": 1.0})
            return
        into = root / "deliver"
        into.mkdir()
        pack_delivery(result, out_dir, into, _node())
        ray.train.report({"delivered": 1.0}, checkpoint=ray.train.Checkpoint.from_directory(str(into)))
        ray.get(signals.finish.remote("result"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def read_result(out_dir: Path) -> GenerationResult:
    """What a Tune trial's worker 0 left in its folder: the result, or the run's error raised here."""
    error = out_dir / ERROR_FILE
    if error.is_file():
        raise MgkdError(error.read_text(encoding="utf-8"))
    path = out_dir / RESULT_FILE
    if not path.is_file():
        raise MgkdError(f"the Ray Train run of {out_dir.name} ended without a result in {path}")
    return GenerationResult(**json.loads(path.read_text(encoding="utf-8")))
