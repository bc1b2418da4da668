"""Ray Tune over one generation: trials with values from its search space, each a Ray Train run.

The teacher's outputs a translation generation needs (cached top-k, pseudo-target views)
are built once, before the trials, by one Ray task; every trial then reads
them from the store. Trials report their epoch-end validation metrics to Tune
(an ASHA scheduler stops the trailing ones); the completed trial with the best
validation metric (never the test split) becomes the generation: its
checkpoint is the generation's and the next generation's teacher. The driver
records every trial as an MLflow run nested under the generation's run.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mgkd.errors import MgkdError
from mgkd.generations import GenerationResult, GenerationSpec
from mgkd.generations.spec import apply_search
from mgkd.generations.training import Events, prepare_teacher_outputs
from mgkd.models import TASK_ARCHS
from mgkd.orchestration.runners import (
    ERROR_FILE,
    RESULT_FILE,
    RayRunner,
    Teacher,
    read_result,
    teacher_files,
    train_run,
)


@dataclass
class Trial:
    """One trial of a sweep, as the driver records it."""

    trial_id: str
    point: dict[str, Any]
    status: str  # "completed", "stopped" (by the scheduler) or "failed"
    history: list[dict[str, float]] = field(default_factory=list)  # its epoch reports, in order
    result: GenerationResult | None = None
    error: str | None = None


@dataclass
class SweepOutcome:
    best: GenerationResult
    best_trial: Trial
    trials: list[Trial]
    metric: str
    mode: str


def _domain(domain: dict[str, list[Any]]) -> Any:
    from ray import tune

    kind, values = next(iter(domain.items()))
    if kind == "choice":
        return tune.choice(values)
    if kind == "grid":
        return tune.grid_search(values)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](*values)


def selection_metric(spec: GenerationSpec) -> tuple[str, str]:
    """The validation metric trials are compared by (eval.select_by), and whether lower or higher is better."""
    by = spec.eval.select_by
    return (by, "min") if by == "valid_loss" else (by, "max")


def run_sweep(runner: RayRunner, spec: GenerationSpec, out_dir: Path, teacher: Teacher, events: Events) -> SweepOutcome:
    import ray
    from ray import tune
    from ray.exceptions import RayTaskError
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    search = spec.search
    assert search is not None
    cfg = runner.cfg
    out_dir = Path(out_dir).resolve()
    checkpoint, sha256 = teacher_files(teacher)
    # Once for all trials. A classifier's teacher runs online in every trial: it has nothing to build.
    if spec.has_teacher and spec.model.arch not in TASK_ARCHS["classification"]:
        events({"type": "sweep", "phase": "teacher outputs"})
        task = ray.remote(prepare_teacher_outputs).options(
            num_cpus=cfg.cpus_per_generation, num_gpus=cfg.gpus_per_generation, max_retries=0
        )
        try:
            ray.get(task.remote(spec, runner.data_ref, checkpoint, sha256))
        except RayTaskError as e:
            if isinstance(e.cause, MgkdError):
                raise MgkdError(str(e.cause)) from None
            raise

    metric, mode = selection_metric(spec)
    cpus = ray.cluster_resources().get("CPU", 1)
    concurrent = search.max_concurrent or max(1, int(cpus // cfg.cpus_per_generation))
    name = f"{out_dir.parent.name}-{out_dir.name}"
    data_ref, storage = runner.data_ref, runner.storage

    def trial(point: dict[str, Any]) -> None:
        trial_id = tune.get_context().get_trial_id()
        trainer = train_run(
            apply_search(spec, point), cfg, data_ref, out_dir / "trials" / trial_id, checkpoint, sha256, storage,
            f"{name}-{trial_id}", epoch_reports_only=True, callbacks=[TuneReportCallback()],
        )  # fmt: skip
        trainer.fit()

    if search.scheduler == "asha":
        scheduler: Any = ASHAScheduler(
            time_attr="epoch", max_t=spec.train.max_epochs, grace_period=search.grace_period,
            reduction_factor=search.reduction_factor,
        )  # fmt: skip
    else:
        scheduler = FIFOScheduler()
    grid = math.prod(len(d["grid"]) for d in search.space.values() if "grid" in d)
    events({"type": "sweep", "phase": "trials", "trials": search.num_samples * grid, "concurrent": concurrent})
    tuner = tune.Tuner(
        # The trial function only drives its Ray Train run, whose workers hold the CPUs: it asks for no CPU
        # (and a token of memory, as Tune needs some resource for it).
        tune.with_resources(trial, {"cpu": 0, "memory": 64 * 2**20}),
        param_space={k: _domain(d) for k, d in search.space.items()},
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            scheduler=scheduler,
            num_samples=search.num_samples,
            max_concurrent_trials=concurrent,
            search_alg=BasicVariantGenerator(random_state=spec.seed),
        ),  # fmt: skip
        run_config=tune.RunConfig(
            name=f"{name}-tune", storage_path=storage, verbose=0, callbacks=[_trial_events(events, metric)]
        ),
    )
    results = tuner.fit()

    trials = []
    for r in results:
        trial_id = r.metrics.get("trial_id") if r.metrics else Path(r.path).name.split("_")[1]
        trial_dir = out_dir / "trials" / trial_id
        history = [] if r.metrics_dataframe is None else _history(r.metrics_dataframe, metric)
        if (trial_dir / RESULT_FILE).is_file():
            trials.append(Trial(trial_id, dict(r.config), "completed", history, read_result(trial_dir)))
        elif (trial_dir / ERROR_FILE).is_file():
            error = (trial_dir / ERROR_FILE).read_text(encoding="utf-8")
            trials.append(Trial(trial_id, dict(r.config), "failed", history, error=error))
        elif r.error is not None:
            trials.append(Trial(trial_id, dict(r.config), "failed", history, error=str(r.error).strip()[-500:]))
        else:
            trials.append(Trial(trial_id, dict(r.config), "stopped", history))
    trials.sort(key=lambda t: t.trial_id)
    done = [t for t in trials if t.status == "completed"]
    if not done:
        errors = "; ".join(f"{t.trial_id}: {t.error}" for t in trials if t.error) or "every trial was stopped"
        raise MgkdError(f"generation {spec.index}: no trial of the sweep completed ({errors})")
    key = f"best_{metric}"
    sign = 1 if mode == "min" else -1
    best_trial = min(done, key=lambda t: (sign * t.result.metrics.get(key, math.inf), t.trial_id))
    return SweepOutcome(_adopt(best_trial, out_dir), best_trial, trials, metric, mode)


def _trial_events(events: Events, metric: str) -> Any:
    """A Tune callback turning trial results into events for the driver's console (Tune's loop runs here)."""
    from ray import tune

    class TrialEvents(tune.Callback):
        def __getstate__(self) -> dict:
            return {}  # Tune saves its callbacks with the experiment; the console is not part of that

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if metric in result and "_events" in self.__dict__:
                self._events({"type": "trial", "trial": trial.trial_id, "status": "epoch",
                              "epoch": result.get("epoch"), "metric": metric, "value": result[metric],
                              "point": trial.config})  # fmt: skip

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if "_events" in self.__dict__:
                self._events({"type": "trial", "trial": trial.trial_id, "status": "ended", "point": trial.config})

    callback = TrialEvents()
    callback._events = events
    return callback


def _history(frame: Any, metric: str) -> list[dict[str, float]]:
    rows = []
    for row in frame.to_dict("records"):
        if metric in row and row.get(metric) == row.get(metric):  # epoch reports only (NaN elsewhere)
            rows.append({k: float(v) for k, v in row.items() if isinstance(v, int | float) and v == v})
    return rows


def _adopt(trial: Trial, out_dir: Path) -> GenerationResult:
    """The best trial's checkpoint and test outputs become the generation's, byte for byte."""
    result = trial.result
    assert result is not None
    ckpt = out_dir / "checkpoint.pt"
    shutil.copyfile(result.checkpoint, ckpt)
    translations = None
    if result.translations:
        translations = str(out_dir / Path(result.translations).name)
        shutil.copyfile(result.translations, translations)
    return replace(result, checkpoint=str(ckpt), translations=translations)
