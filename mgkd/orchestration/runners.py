"""Where a generation's training function runs: in this process, or under Ray.

Ray enters here and nowhere below: `train_generation` is plain PyTorch. With
`ray.backend: train` (the default) each generation is a Ray Train run: a
TorchTrainer with `ray.workers` data-parallel workers (a gloo or nccl process
group; the training function averages gradients), its training states
reported to Ray Train's storage (`ray.storage_path`), and `ray.max_failures`
restarts from the last of them when a worker dies. With `ray.backend: task`
it is one Ray task. Either way the prepared data goes to the object store once
per lineage and worker 0 streams progress events back through a Ray queue, so
the driver renders progress and writes MLflow while the workers only train.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from mgkd.config import RayConfig
from mgkd.errors import MgkdError
from mgkd.files import write_atomic
from mgkd.generations import GenerationResult, GenerationSpec, train_generation
from mgkd.generations.loop import Events
from mgkd.orchestration.placement import check_reachable, check_workers_fit, resolve_gpus, scaling
from mgkd.tasks.translation import PreparedData

Teacher = GenerationResult | list[GenerationResult] | None


def teacher_files(teacher: Teacher) -> tuple[str | list[str] | None, str | list[str] | None]:
    """(checkpoint, sha256) of a teacher; lists of them for an ensemble of generations."""
    if teacher is None:
        return None, None
    if isinstance(teacher, list):
        if len(teacher) == 1:
            return teacher[0].checkpoint, teacher[0].checkpoint_sha256
        return [t.checkpoint for t in teacher], [t.checkpoint_sha256 for t in teacher]
    return teacher.checkpoint, teacher.checkpoint_sha256


class LocalRunner:
    """Runs generations in the driver's process (`--no-ray`): for debugging and tests."""

    description = "in-process (no Ray)"

    def __init__(self, data: PreparedData) -> None:
        self.data = data

    def run(self, spec: GenerationSpec, out_dir: Path, teacher: Teacher, events: Events) -> GenerationResult:
        return train_generation(spec, self.data, out_dir, *teacher_files(teacher), events)

    def close(self) -> None:
        pass


def _train_in_worker(spec: GenerationSpec, data: PreparedData, out_dir: str, teacher_checkpoint: Any,
                     teacher_sha256: Any, queue: Any, cpus: float) -> GenerationResult:  # fmt: skip
    import torch

    if spec.train.threads is None:
        torch.set_num_threads(max(1, int(cpus)))
    return train_generation(spec, data, Path(out_dir), teacher_checkpoint, teacher_sha256, queue.put)


RESULT_FILE = "result.json"
ERROR_FILE = "error.txt"
# The driver's Ctrl-C under Ray Train: it writes STOP_FILE, the workers finish their step, save the training
# state and leave INTERRUPTED_FILE (the Ray task backend gets the same through Ray's gentle cancel).
STOP_FILE = "stop.request"
INTERRUPTED_FILE = "interrupted"
STOP_WAIT_S = 60.0


class RayTrainSession:
    """`train_generation`'s Session under Ray Train: reports go to `ray.train.report`, training states become
    Ray Train checkpoints (persisted in the run's storage), and a restarted attempt gets the latest back."""

    def __init__(self, out_dir: Path, epoch_reports_only: bool = False) -> None:
        self.out_dir = out_dir
        self.epoch_reports_only = epoch_reports_only

    def restored(self) -> Path | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return Path(checkpoint.to_directory()) if checkpoint is not None else None

    def stop_requested(self) -> bool:
        return (self.out_dir / STOP_FILE).exists()

    def report(self, metrics: dict[str, float], state: Path | None) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics)
            return
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


def train_loop(config: dict[str, Any]) -> None:
    """The Ray Train function of one generation, on every worker: worker 0 writes the result (or the run's own
    error, which no retry would fix) into the generation's folder for the driver."""
    import ray
    import torch

    spec: GenerationSpec = config["spec"]
    out_dir = Path(config["out_dir"])
    if spec.train.threads is None:
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    data = config["data"] if isinstance(config["data"], PreparedData) else ray.get(config["data"])
    queue = config.get("queue")
    events = queue.put if queue is not None else (lambda _: None)
    session = RayTrainSession(out_dir, config.get("epoch_reports_only", False))
    try:
        result = train_generation(spec, data, out_dir, config["teacher_checkpoint"], config["teacher_sha256"],
                                  events, session)  # fmt: skip
    except MgkdError as e:
        write_atomic(out_dir / ERROR_FILE, str(e).encode())
        return
    except KeyboardInterrupt:
        if not session.stop_requested():
            raise
        write_atomic(out_dir / INTERRUPTED_FILE, b"")  # the state is saved; the run ends without a result
        return
    if result is not None:
        write_atomic(out_dir / RESULT_FILE, json.dumps(dataclasses.asdict(result)).encode())


def read_result(out_dir: Path) -> GenerationResult:
    """What `train_loop`'s worker 0 left: the result, or the run's error raised here."""
    error = out_dir / ERROR_FILE
    if error.is_file():
        raise MgkdError(error.read_text(encoding="utf-8"))
    path = out_dir / RESULT_FILE
    if not path.is_file():
        raise MgkdError(f"the Ray Train run of {out_dir.name} ended without a result in {path}")
    return GenerationResult(**json.loads(path.read_text(encoding="utf-8")))


class RayRunner:
    """Runs each generation as a Ray Train run (or a Ray task) on a local Ray or a cluster."""

    def __init__(self, cfg: RayConfig, data: PreparedData, output_dir: Path | None = None) -> None:
        import ray

        self.cfg = cfg
        self._started_ray = False
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            check_reachable(address)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "logging_level": logging.WARNING,
                # Workers report through mgkd's events; their own logs (Ray Train's controller and placement-group
                # bookkeeping included) stay in Ray's session log folder instead of the console.
                "log_to_driver": False,
            }
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = cfg.num_cpus
            try:
                ray.init(**kwargs)
            except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
                raise MgkdError(
                    f"cannot connect to Ray at {address!r}: {e}. Start the cluster (ray start --head) or fix "
                    "--ray-address / ray.address / RAY_ADDRESS; --no-ray runs without Ray"
                ) from None
            self._started_ray = True
        total = ray.cluster_resources()
        cfg = self.cfg = resolve_gpus(cfg, total)
        if total.get("CPU", 0) < cfg.cpus_per_generation:
            raise MgkdError(
                f"ray.cpus_per_generation={cfg.cpus_per_generation} but the Ray cluster has "
                f"{total.get('CPU', 0)} CPUs; "
                "lower ray.cpus_per_generation"
            )
        if cfg.gpus_per_generation and total.get("GPU", 0) < cfg.gpus_per_generation:
            raise MgkdError(
                f"ray.gpus_per_generation={cfg.gpus_per_generation} but the Ray cluster has {total.get('GPU', 0)} GPUs"
            )
        check_workers_fit(cfg, ray.nodes())
        where = "cluster " + address if address else "local"
        how = f"Ray Train, {cfg.workers} worker(s)" if cfg.backend == "train" else "Ray tasks"
        self.description = f"Ray {ray.__version__} ({where}, {total.get('CPU', 0):g} CPUs; {how})"
        self.storage = cfg.storage_path or str((Path(output_dir or ".") / "ray_train").resolve())
        self.data_ref = ray.put(data)
        self.remote = ray.remote(_train_in_worker).options(
            num_cpus=cfg.cpus_per_generation, num_gpus=cfg.gpus_per_generation, max_retries=0
        )

    def run(self, spec: GenerationSpec, out_dir: Path, teacher: Teacher, events: Events) -> GenerationResult:
        import ray
        from ray.exceptions import RayTaskError
        from ray.util.queue import Empty, Queue

        out_dir = Path(out_dir).resolve()
        queue = Queue(actor_options={"num_cpus": 0})

        def drain() -> None:
            while True:
                try:
                    events(queue.get_nowait())
                except Empty:
                    return

        try:
            if self.cfg.backend == "train":
                return self._run_train(spec, out_dir, teacher, queue, drain)
            ref = self.remote.remote(
                spec, self.data_ref, str(out_dir), *teacher_files(teacher), queue, self.cfg.cpus_per_generation,
            )  # fmt: skip
            try:
                while True:
                    ready, _ = ray.wait([ref], timeout=1.0)
                    drain()
                    if ready:
                        break
                return ray.get(ref)
            except RayTaskError as e:
                if isinstance(e.cause, MgkdError):
                    raise MgkdError(str(e.cause)) from None
                raise
            except KeyboardInterrupt:
                # A gentle cancel raises KeyboardInterrupt in the worker, which saves its training state
                # (mgkd resume continues from it); force only if it does not stop in time.
                ray.cancel(ref, force=False)
                try:
                    ray.wait([ref], timeout=60)
                    drain()
                finally:
                    ray.cancel(ref, force=True)
                raise
        finally:
            ray.kill(queue.actor)

    def _run_train(
        self, spec: GenerationSpec, out_dir: Path, teacher: Teacher, queue: Any, drain: Any
    ) -> GenerationResult:
        import ray

        for stale in (RESULT_FILE, ERROR_FILE, STOP_FILE, INTERRUPTED_FILE):
            (out_dir / stale).unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint, sha256 = teacher_files(teacher)
        trainer = train_run(
            spec,
            self.cfg,
            self.data_ref,
            out_dir,
            checkpoint,
            sha256,
            self.storage,
            f"{out_dir.parent.name}-{out_dir.name}",
            queue=queue,
        )
        # The driver thread waits in fit(); a second thread forwards worker 0's events meanwhile.
        stop = threading.Event()

        def forward() -> None:
            while not stop.wait(0.5):
                drain()

        forwarder = threading.Thread(target=forward, name="mgkd-events", daemon=True)
        forwarder.start()
        try:
            trainer.fit()
        except KeyboardInterrupt:
            # Ctrl-C: the workers stop after their current step and save the training state for `mgkd resume`
            # (as in-process training does); the run is aborted once they have, or after STOP_WAIT_S.
            try:
                write_atomic(out_dir / STOP_FILE, b"")
                deadline = time.monotonic() + STOP_WAIT_S
                ends = [out_dir / f for f in (INTERRUPTED_FILE, RESULT_FILE, ERROR_FILE)]
                while time.monotonic() < deadline and not any(f.is_file() for f in ends):
                    time.sleep(0.2)
            finally:
                if trainer.controller is not None:
                    try:
                        ray.get(trainer.controller.abort.remote())
                    except ray.exceptions.RayActorError:
                        pass  # the run already ended (its workers stopped and returned): nothing to abort
            raise
        except Exception as e:  # noqa: BLE001 - Ray Train wraps worker failures; ours are in the folder
            error = out_dir / ERROR_FILE
            if error.is_file():
                raise MgkdError(error.read_text(encoding="utf-8")) from None
            raise MgkdError(
                f"generation {spec.index} failed under Ray Train after {self.cfg.max_failures} restart(s): "
                f"{str(e).strip().splitlines()[-1][:500] if str(e).strip() else type(e).__name__}; "
                f"`mgkd resume` continues from its last saved training state"
            ) from e
        finally:
            stop.set()
            forwarder.join()
            drain()
        return read_result(out_dir)

    def close(self) -> None:
        import ray

        if self._started_ray:
            ray.shutdown()


def train_run(spec: GenerationSpec, cfg: RayConfig, data: Any, out_dir: Path, teacher_checkpoint: Any,
              teacher_sha256: Any, storage: str, name: str, queue: Any = None, epoch_reports_only: bool = False,
              callbacks: list | None = None) -> Any:  # fmt: skip
    """A TorchTrainer for one generation (or one Tune trial of it)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    class _Trainer(TorchTrainer):
        """Keeps the controller instead of installing Ray Train's SIGINT handler, which would outlive the run
        and exit the process: mgkd's Ctrl-C stops the run and keeps the lineage resumable."""

        controller = None

        def _register_sigint_handler(self, controller: Any) -> None:
            self.controller = controller

    # Ray Train's controller polls its workers every 2 s by default, which a generation pays at start and end.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    use_gpu = bool(cfg.gpus_per_generation)
    config = {
        "spec": spec, "data": data, "out_dir": str(out_dir), "teacher_checkpoint": teacher_checkpoint,
        "teacher_sha256": teacher_sha256, "queue": queue, "cpus_per_worker": cfg.cpus_per_generation / cfg.workers,
        "epoch_reports_only": epoch_reports_only,
    }  # fmt: skip
    return _Trainer(
        train_loop,
        train_loop_config=config,
        scaling_config=scaling(cfg, use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
