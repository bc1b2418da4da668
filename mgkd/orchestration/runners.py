"""Where a generation's training function runs: in this process, or as Ray work.

Ray enters here and nowhere below: `train_generation` is plain PyTorch. In
Ray mode each generation is one Ray task with the CPUs/GPUs the config asks
for; the prepared data goes to the object store once per lineage, and the
worker streams progress events back through a Ray queue, so the driver renders
progress and writes MLflow while the worker only trains.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from mgkd.config import RayConfig
from mgkd.errors import MgkdError
from mgkd.generations import GenerationResult, GenerationSpec, train_generation
from mgkd.generations.training import Events
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


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes (ray.init waits long for an absent head), when nothing listens there."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise MgkdError(f"Ray address {address!r} must look like HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise MgkdError(
            f"cannot connect to Ray at {address!r}: {e}. Start the cluster (ray start --head) or fix "
            "--ray-address / ray.address / RAY_ADDRESS; --no-ray runs without Ray"
        ) from None


class RayRunner:
    """Runs each generation as a Ray task on a local Ray or a cluster."""

    def __init__(self, cfg: RayConfig, data: PreparedData) -> None:
        import ray

        self.cfg = cfg
        self._started_ray = False
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            _check_reachable(address)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "logging_level": logging.WARNING,
                "log_to_driver": True,
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
        self.description = (
            f"Ray {ray.__version__} ({'cluster ' + address if address else 'local'}, {total.get('CPU', 0):g} CPUs)"
        )
        self.data_ref = ray.put(data)
        self.remote = ray.remote(_train_in_worker).options(
            num_cpus=cfg.cpus_per_generation, num_gpus=cfg.gpus_per_generation, max_retries=0
        )

    def run(self, spec: GenerationSpec, out_dir: Path, teacher: Teacher, events: Events) -> GenerationResult:
        import ray
        from ray.exceptions import RayTaskError
        from ray.util.queue import Empty, Queue

        queue = Queue(actor_options={"num_cpus": 0})

        def drain() -> None:
            while True:
                try:
                    events(queue.get_nowait())
                except Empty:
                    return

        ref = self.remote.remote(
            spec, self.data_ref, str(Path(out_dir).resolve()), *teacher_files(teacher),
            queue, self.cfg.cpus_per_generation,
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

    def close(self) -> None:
        import ray

        if self._started_ray:
            ray.shutdown()
