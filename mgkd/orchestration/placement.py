"""Where a generation's Ray workers go: resources per worker, GPUs when the cluster has them, whether the
cluster can place `ray.workers` at all, and whether a Ray address answers (checked before anything trains)."""

from __future__ import annotations

import math
import socket
from typing import Any

from mgkd.config import RayConfig
from mgkd.errors import MgkdError


def scaling(cfg: RayConfig, use_gpu: bool) -> Any:
    from ray.train import ScalingConfig

    per_worker = {"CPU": cfg.cpus_per_generation / cfg.workers, **cfg.resources_per_worker}
    if use_gpu:
        per_worker["GPU"] = cfg.gpus_per_generation / cfg.workers
    return ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=per_worker)


def resolve_gpus(cfg: RayConfig, cluster: dict[str, float]) -> RayConfig:
    """`ray.gpus_per_generation: null`: one GPU per worker where the cluster has them all, else none."""
    if cfg.gpus_per_generation is not None:
        return cfg
    gpus = float(cfg.workers) if cluster.get("GPU", 0) >= cfg.workers else 0.0
    return cfg.model_copy(update={"gpus_per_generation": gpus})


def placeable_workers(nodes: list[dict[str, Any]], per_worker: dict[str, float]) -> int:
    """How many workers of `per_worker` resources the alive nodes of `ray.nodes()` hold, each worker on one node."""
    count = 0
    for node in nodes:
        if not node.get("Alive", False):
            continue
        have = node.get("Resources", {})
        fits = [math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in per_worker.items() if v > 0]
        count += min(fits) if fits else 0
    return count


def check_workers_fit(cfg: RayConfig, nodes: list[dict[str, Any]]) -> None:
    """Refuse, before anything trains, a `ray.workers` the cluster cannot place (Ray would wait forever)."""
    if cfg.backend != "train":
        return
    per_worker = {"CPU": cfg.cpus_per_generation / cfg.workers, **cfg.resources_per_worker}
    if cfg.gpus_per_generation:
        per_worker["GPU"] = cfg.gpus_per_generation / cfg.workers
    fit = placeable_workers(nodes, per_worker)
    if fit < cfg.workers:
        seen = "; ".join(
            f"{n.get('NodeManagerAddress', '?')}: {n.get('Resources', {}).get('CPU', 0):g} CPU, "
            f"{n.get('Resources', {}).get('GPU', 0):g} GPU"
            for n in nodes if n.get("Alive", False)
        )  # fmt: skip
        need = ", ".join(f"{v:g} {k}" for k, v in per_worker.items())
        custom = " / ray.resources_per_worker" if cfg.resources_per_worker else ""
        raise MgkdError(
            f"ray.workers={cfg.workers} needs {need} per worker, but the Ray cluster's nodes ({seen}) hold only {fit} "
            f"such worker(s); lower ray.workers, lower ray.cpus_per_generation / ray.gpus_per_generation{custom}, "
            "or add nodes"
        )


def multi_node_warnings(cfg: RayConfig, nodes: list[dict[str, Any]], sweeps: bool = False) -> list[str]:
    """What a cluster of several nodes needs that this config does not say it has: `ray.storage_path` for Ray
    Train's storage (the training states and each generation's delivered outputs), and a shared output folder
    for what still travels by path (`ray.backend: task` generations and the trials of a Tune sweep)."""
    alive = [n for n in nodes if n.get("Alive", False)]
    if len(alive) < 2:
        return []
    out = []
    if cfg.backend == "train" and not cfg.storage_path:
        out.append(f"the Ray cluster has {len(alive)} alive nodes but ray.storage_path is not set: workers on other "
                   "nodes cannot deliver their results or training states; set ray.storage_path to a folder every "
                   "node reaches (a shared filesystem, or a URI such as s3://bucket/path)")  # fmt: skip
    by_path = [w for w, on in (("ray.backend 'task' generations", cfg.backend == "task"),
                               ("the trials of a Tune sweep (generations' search)", sweeps)) if on]  # fmt: skip
    if by_path:
        out.append(f"the Ray cluster has {len(alive)} alive nodes, and {' and '.join(by_path)} read the teacher "
                   "and write their outputs by path in the driver's output folder: every node must see that folder "
                   "at the same path (a shared filesystem), or use ray.backend 'train' without a sweep")  # fmt: skip
    return out


def check_reachable(address: str) -> None:
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
