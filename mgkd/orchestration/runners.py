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
Under Ray Train nothing crosses nodes by path (transfer.py): the teacher goes
to the workers as checked bytes, worker 0's outputs come back as the run's
last checkpoint in its storage, and Ctrl-C and errors through a named actor.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from mgkd.config import RayConfig
from mgkd.errors import MgkdError
from mgkd.files import write_atomic
from mgkd.generations import GenerationResult, GenerationSpec, train_generation
from mgkd.generations.loop import Events
from mgkd.generations.train_state import LEGACY_SHA_FILE, STATE_FILE, clear_train_state
from mgkd.orchestration.placement import (
    check_reachable,
    check_workers_fit,
    multi_node_warnings,
    resolve_gpus,
    scaling,
)
from mgkd.orchestration.transfer import RESULT_FILE, ship_teacher, start_signals, unpack_delivery
from mgkd.orchestration.worker import ERROR_FILE, RayTrainSession, read_result, train_loop  # noqa: F401 - sweep's
from mgkd.tasks.translation import PreparedData

STOP_WAIT_S = 60.0  # how long a Ctrl-C waits for the workers to save their state before the run is aborted

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


class RayRunner:
    """Runs each generation as a Ray Train run (or a Ray task) on a local Ray or a cluster."""

    def __init__(self, cfg: RayConfig, data: PreparedData, output_dir: Path | None = None,
                 sweeps: bool = False) -> None:  # fmt: skip
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
        nodes = ray.nodes()
        check_workers_fit(cfg, nodes)
        self.warnings = multi_node_warnings(cfg, nodes, sweeps)
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

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RESULT_FILE).unlink(missing_ok=True)
        name = f"{out_dir.parent.name}-{out_dir.name}"
        signals = start_signals(name)
        checkpoint, sha256 = teacher_files(teacher)
        # A state this folder holds (a resumed generation) goes to the workers as bytes, like the teacher.
        resume = {}
        for held in (STATE_FILE, LEGACY_SHA_FILE) if (out_dir / STATE_FILE).is_file() else ():
            if (out_dir / held).is_file():
                raw = (out_dir / held).read_bytes()
                resume[held] = {"ref": ray.put(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        trainer = train_run(spec, self.cfg, self.data_ref, out_dir, checkpoint, sha256, self.storage, name,
                            queue=queue, signals=signals, resume_state=resume or None)  # fmt: skip
        # The driver thread waits in fit(); a second thread forwards worker 0's events and training states.
        stop = threading.Event()

        def keep_state() -> None:
            state = ray.get(signals.take_state.remote())
            if state is not None:
                write_atomic(out_dir / STATE_FILE, state)

        def forward() -> None:
            while not stop.wait(0.5):
                drain()
                keep_state()

        def run_error() -> str | None:
            ended = ray.get(signals.ended.remote())
            return ended[1] if ended is not None and ended[0] == "error" else None

        forwarder = threading.Thread(target=forward, name="mgkd-events", daemon=True)
        forwarder.start()
        try:
            try:
                outcome = trainer.fit()
            except KeyboardInterrupt:
                # Ctrl-C: the workers stop after their current step and save the training state for `mgkd resume`
                # (as in-process training does); the run is aborted once they have, or after STOP_WAIT_S.
                try:
                    ray.get(signals.request_stop.remote())
                    deadline = time.monotonic() + STOP_WAIT_S
                    while time.monotonic() < deadline and ray.get(signals.ended.remote()) is None:
                        time.sleep(0.2)
                finally:
                    if trainer.controller is not None:
                        try:
                            ray.get(trainer.controller.abort.remote())
                        except ray.exceptions.RayActorError:
                            pass  # the run already ended (its workers stopped and returned): nothing to abort
                raise
            except Exception as e:  # noqa: BLE001 - Ray Train wraps worker failures; ours come through signals
                error = run_error()
                if error is not None:
                    raise MgkdError(error) from None
                raise MgkdError(
                    f"generation {spec.index} failed under Ray Train after {self.cfg.max_failures} restart(s): "
                    f"{str(e).strip().splitlines()[-1][:500] if str(e).strip() else type(e).__name__}; "
                    f"`mgkd resume` continues from its last saved training state"
                ) from e
            finally:
                stop.set()
                forwarder.join()
                drain()
                keep_state()
            error = run_error()
            if error is not None:
                raise MgkdError(error)
            if outcome.checkpoint is None or ray.get(signals.ended.remote()) != ("result", ""):
                raise MgkdError(f"the Ray Train run of {name} ended without delivering a result")
            with outcome.checkpoint.as_directory() as delivered:
                result, _ = unpack_delivery(Path(delivered), out_dir)
            clear_train_state(out_dir)  # the generation is complete: its checkpoint is what counts now
            return result
        finally:
            try:
                ray.kill(signals)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def close(self) -> None:
        import ray

        if self._started_ray:
            ray.shutdown()


def train_run(spec: GenerationSpec, cfg: RayConfig, data: Any, out_dir: Path, teacher_checkpoint: Any,
              teacher_sha256: Any, storage: str, name: str, queue: Any = None, epoch_reports_only: bool = False,
              callbacks: list | None = None, signals: Any = None, resume_state: Any = None) -> Any:  # fmt: skip
    """A TorchTrainer for one generation (or one Tune trial of it). With `signals` (a generation's own run) its
    worker 0 delivers its outputs as the run's last checkpoint; the teacher's checkpoint goes to the workers
    through the object store either way."""
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
        "spec": spec, "data": data, "out_dir": str(out_dir),
        "teacher": ship_teacher(teacher_checkpoint, teacher_sha256), "teacher_sha256": teacher_sha256,
        "queue": queue, "signals": signals, "deliver": signals is not None,
        "resume_state": resume_state, "cpus_per_worker": cfg.cpus_per_generation / cfg.workers,
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
