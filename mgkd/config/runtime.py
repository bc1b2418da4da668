"""Where generations run and are recorded: Ray, Ray Tune sweeps, MLflow."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from mgkd.config.base import StrictModel

SEARCH_DOMAINS = ("choice", "grid", "uniform", "loguniform", "randint")


class SearchConfig(StrictModel):
    """A Ray Tune sweep over one generation: each trial trains it with values drawn from `space`, and the
    trial with the best validation metric (eval.select_by) becomes the generation and the next teacher.

    Keys of `space`: `train.<field>` (e.g. train.lr), `loss.<plugin>.weight` or `loss.<plugin>.<param>` (e.g.
    loss.soft_label.temperature) of a term the generation has. Values: {choice: [a, b, ...]} (one drawn per
    trial), {grid: [a, b, ...]} (every value, num_samples times each: trials = num_samples x the grid's size),
    {uniform: [low, high]}, {loguniform: [low, high]} or {randint: [low, high]} (high excluded).
    """

    space: dict[str, dict[str, list[Any]]]
    num_samples: PositiveInt = 4
    # Trials at once (None: as many as the cluster's CPUs hold at ray.cpus_per_generation each).
    max_concurrent: PositiveInt | None = None
    # "asha": stop trials that trail the others at epoch ends (ASHA); "fifo": every trial runs to its end.
    scheduler: Literal["asha", "fifo"] = "asha"
    # ASHA: epochs a trial runs before it may be stopped, and the fraction (1/reduction_factor) kept per rung.
    grace_period: PositiveInt = 1
    reduction_factor: float = Field(2.0, gt=1)

    @field_validator("space")
    @classmethod
    def _domains_are_known(cls, v: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
        if not v:
            raise ValueError("a search needs at least one key in space")
        for key, domain in v.items():
            if len(domain) != 1 or next(iter(domain)) not in SEARCH_DOMAINS:
                raise ValueError(f"space.{key} must be one of {{{', '.join(SEARCH_DOMAINS)}: [...]}}, got {domain}")
            kind, values = next(iter(domain.items()))
            if kind in ("choice", "grid") and not values:
                raise ValueError(f"space.{key}: {kind} needs at least one value")
            if kind not in ("choice", "grid") and (len(values) != 2 or not values[0] < values[1]):
                raise ValueError(f"space.{key}: {kind} needs [low, high] with low < high, got {values}")
            if kind == "loguniform" and values[0] <= 0:
                raise ValueError(f"space.{key}: loguniform needs low > 0, got {values}")
        return v


class RayConfig(StrictModel):
    """Where generations run. The driver only coordinates."""

    enabled: bool = True
    # None: RAY_ADDRESS if set, else a local Ray started by `ray.init()`.
    address: str | None = None
    # CPUs of a local Ray (None: all of this machine's).
    num_cpus: PositiveInt | None = None
    # A generation's CPUs and GPUs, split evenly between its Ray Train workers. GPUs None: one per worker when
    # the Ray cluster has that many (train.device auto then trains on them), else none; 0 keeps to the CPUs.
    cpus_per_generation: PositiveFloat = 2
    gpus_per_generation: float | None = Field(None, ge=0)
    # "train": each generation is a Ray Train run (TorchTrainer: data-parallel workers, checkpoints reported
    # to storage, retries); "task": a plain Ray task (one process, no retries; ~10 s less start-up).
    backend: Literal["train", "task"] = "train"
    # Ray Train: data-parallel workers per generation (gloo on CPU, nccl on GPU); each takes every
    # workers-th batch, so one step sees `workers` batches.
    workers: PositiveInt = 1
    # Ray Train: restarts of a generation whose worker died, each from its last reported training state
    # (FailureConfig.max_failures; -1: unlimited). Errors of the run itself (bad config, NaN) never retry.
    max_failures: int = Field(1, ge=-1)
    # Ray Train: where each generation's reported training states go (None: <output_dir>/ray_train). On a
    # multi-node cluster, a path every node reaches (a shared filesystem, or a URI such as s3://bucket/path).
    storage_path: str | None = None
    # Ray Train: custom resources each worker asks for besides its CPUs/GPUs (ScalingConfig.resources_per_worker),
    # e.g. {node2: 1} to place the workers on a node started with `ray start --resources '{"node2": 1}'`.
    resources_per_worker: dict[str, float] = Field(default_factory=dict)

    @field_validator("resources_per_worker")
    @classmethod
    def _custom_resources(cls, v: dict[str, float]) -> dict[str, float]:
        for name, amount in v.items():
            if not name.strip():
                raise ValueError("resources_per_worker: a resource needs a name")
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(
                    f"resources_per_worker.{name}: set CPUs and GPUs with ray.cpus_per_generation / "
                    "ray.gpus_per_generation; resources_per_worker is for custom resources (e.g. {node2: 1})"
                )
            if not amount > 0:
                raise ValueError(f"resources_per_worker.{name} must be > 0, got {amount}")
        return v

    @model_validator(mode="after")
    def _workers_fit(self) -> RayConfig:
        if self.workers > 1 and self.backend == "task":
            raise ValueError(f"ray.workers={self.workers} needs ray.backend 'train' (a Ray task is one process)")
        if self.resources_per_worker and self.backend == "task":
            raise ValueError("ray.resources_per_worker needs ray.backend 'train' (it is Ray Train's ScalingConfig)")
        return self


class TrackingConfig(StrictModel):
    """MLflow: None means a sqlite store under the output folder."""

    uri: str | None = None
    experiment: str | None = None
