"""Ray Tune over one generation: trials with values from its search space, each a Ray Train run.

The teacher's outputs a translation generation needs (cached top-k, pseudo-target views)
are built once, before the trials, by one Ray task; every trial then reads
them from the store. Trials report their epoch-end validation metrics to Tune
(an ASHA scheduler stops the trailing ones); the completed trial with the best
validation metric (never the test split) becomes the generation: its
checkpoint is the generation's and the next generation's teacher. The driver
records every trial as an MLflow run nested under the generation's run, once the
sweep has ended. A sweep of a killed lineage is continued from the state Tune saved
(`mgkd resume`): its finished trials are not run again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mgkd.errors import MgkdError
from mgkd.generations import GenerationResult, GenerationSpec
from mgkd.generations.loop import Events
from mgkd.generations.search import apply_search
from mgkd.generations.teacher import prepare_teacher_outputs
from mgkd.orchestration.runners import (
    ERROR_FILE,
    RESULT_FILE,
    RayRunner,
    Teacher,
    read_result,
    teacher_files,
    train_run,
)
from mgkd.tasks import Task, lower_is_better


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


def _trial_count(search: Any) -> int:
    """num_samples per point of the grid (one point when nothing is a grid)."""
    return search.num_samples * math.prod(len(d["grid"]) for d in search.space.values() if "grid" in d)


def experiment_path(storage: str, name: str, spec: GenerationSpec) -> Path:
    """Where Tune keeps the sweep, named by the generation's spec (space, losses, training): `mgkd resume --set`
    that changes this generation starts a new sweep instead of restoring the trials of the old one."""
    # Through JSON and back with integral floats as ints: a run's spec (a default of 2) and its resume's (2.0 read
    # back from config.yaml) are the same sweep.
    plain = json.loads(json.dumps(spec.to_dict(), default=str), parse_float=lambda s: _number(float(s)))
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:10]
    return Path(storage) / f"{name}-tune-{digest}"


def _number(x: float) -> float | int:
    return int(x) if x.is_integer() else x


def selection_metric(spec: GenerationSpec, task: Task) -> tuple[str, str]:
    """The validation metric trials are compared by (eval.select_by), and Tune's mode for it: the direction the
    task declares, as a generation selects its epochs (mgkd.tasks.base.lower_is_better)."""
    by = spec.eval.select_by
    return by, "min" if lower_is_better(task, by) else "max"


def run_sweep(runner: RayRunner, spec: GenerationSpec, out_dir: Path, teacher: Teacher, events: Events, *,
              task: Task) -> SweepOutcome:  # fmt: skip
    import ray
    from ray import tune
    from ray.exceptions import RayTaskError
    from ray.tune.integration.ray_train import TuneReportCallback

    search = spec.search
    assert search is not None
    cfg = runner.cfg
    out_dir = Path(out_dir).resolve()
    checkpoint, sha256 = teacher_files(teacher)
    # Once for all trials, where the task has teacher-made data (a top-k cache, pseudo-target views); a teacher
    # that only runs online in every trial has nothing to build.
    if spec.has_teacher and task.teacher_made_data:
        events({"type": "sweep", "phase": "teacher outputs"})
        build = ray.remote(prepare_teacher_outputs).options(
            num_cpus=cfg.cpus_per_generation, num_gpus=cfg.gpus_per_generation, max_retries=0
        )
        try:
            ray.get(build.remote(spec, runner.data_ref, checkpoint, sha256))
        except RayTaskError as e:
            if isinstance(e.cause, MgkdError):
                raise MgkdError(str(e.cause)) from None
            raise

    metric, mode = selection_metric(spec, task)
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

    events({"type": "sweep", "phase": "trials", "trials": _trial_count(search), "concurrent": concurrent})
    # The trial function only drives its Ray Train run, whose workers hold the CPUs: it asks for no CPU
    # (and a token of memory, as Tune needs some resource for it).
    trainable = tune.with_resources(trial, {"cpu": 0, "memory": 64 * 2**20})
    param_space = {k: _domain(d) for k, d in search.space.items()}
    experiment = experiment_path(storage, name, spec)
    # Tune saves the sweep's state (which trials finished) at most every 10 s by default; a killed lineage would
    # rerun the trials that finished since. It is a small file: save it every 2 s.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # Tune's own Ctrl-C handler ends the sweep early and returns as if it had finished (and stays installed,
    # swallowing the next Ctrl-C of a later generation): mgkd's Ctrl-C stops the lineage for `mgkd resume`.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    _EVENTS[name] = events
    if tune.Tuner.can_restore(str(experiment)):
        # A sweep of a killed lineage (`mgkd resume`): finished trials are kept as they are, unfinished ones
        # restart and continue from their last saved training state; errored ones stay errored.
        events({"type": "sweep", "phase": "resumed", "path": str(experiment)})
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, param_space=param_space)
    else:
        tuner = _new_tuner(trainable, param_space, spec, name, metric, mode, concurrent, experiment)
    try:
        return _outcome(tuner.fit(), spec, out_dir, metric, mode)
    finally:
        _EVENTS.pop(name, None)


def _new_tuner(trainable: Any, param_space: dict[str, Any], spec: GenerationSpec, name: str, metric: str, mode: str,
               concurrent: int, experiment: Path) -> Any:  # fmt: skip
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    search = spec.search
    assert search is not None
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            scheduler=scheduler(spec),
            num_samples=search.num_samples,
            # The limit belongs to the search algorithm: Tune ignores max_concurrent_trials (with a warning) when
            # it is given one, so trials ran as many at once as the CPUs allowed.
            search_alg=BasicVariantGenerator(random_state=spec.seed, max_concurrent=concurrent),
        ),  # fmt: skip
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=str(experiment.parent),
            verbose=0,
            callbacks=[_trial_events(name, metric)],
        ),
    )


def scheduler(spec: GenerationSpec) -> Any:
    """The sweep's trial scheduler: ASHA stops trials that trail at its rungs (epochs), FIFO runs all to the end."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    search = spec.search
    assert search is not None
    if search.scheduler != "asha":
        return FIFOScheduler()
    # stop_last_trials=False: a trial that reaches its last epoch ends by itself. ASHA's default stops it at
    # max_t, on the report of that epoch, and Tune then kills the trial while its worker still evaluates the
    # test split and writes the result: on a loaded machine the best trial ended "stopped", without a result.
    return ASHAScheduler(
        time_attr="epoch", max_t=spec.train.max_epochs, grace_period=search.grace_period,
        reduction_factor=search.reduction_factor, stop_last_trials=False,
    )  # fmt: skip


def _trial_id(result: Any) -> str:
    """A trial's id ('52812_00001'), from its last report or, for a trial that never reported, its folder's name
    ('trial_52812_00001_1_train.lr=...')."""
    if result.metrics and result.metrics.get("trial_id"):
        return str(result.metrics["trial_id"])
    found = re.search(r"_([0-9a-f]+_[0-9]+)_", Path(result.path).name)
    if found is None:
        raise MgkdError(f"a Tune trial folder without a trial id in its name: {result.path}")
    return found.group(1)


def _outcome(results: Any, spec: GenerationSpec, out_dir: Path, metric: str, mode: str) -> SweepOutcome:
    """The trials as they ended, and the completed one with the best validation metric adopted as the generation."""
    search = spec.search
    assert search is not None
    expected = _trial_count(search)
    if len(results) < expected or any(r.config is None for r in results):
        raise MgkdError(
            f"generation {spec.index}: the sweep ended with {expected - sum(r.config is not None for r in results)} "
            f"of its {expected} trials never run (was Tune interrupted?); `mgkd resume` continues it"
        )
    trials = []
    for r in results:
        trial_id = _trial_id(r)
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


# The console of each running sweep, by name. Tune saves its callbacks with the experiment and gives a resumed
# sweep the saved ones back: the callback keeps only the name and finds the console here, in the driver.
_EVENTS: dict[str, Events] = {}


def _trial_events(name: str, metric: str) -> Any:
    """A Tune callback turning trial results into events for the driver's console (Tune's loop runs here)."""
    from ray import tune

    def console(name: str) -> Events | None:
        from mgkd.orchestration import sweep  # by reference: a saved callback must see the live consoles

        return sweep._EVENTS.get(name)

    class TrialEvents(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            events = console(name)
            if events is not None and metric in result:
                events({"type": "trial", "trial": trial.trial_id, "status": "epoch", "epoch": result.get("epoch"),
                        "metric": metric, "value": result[metric], "point": trial.config})  # fmt: skip

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            events = console(name)
            if events is not None:
                events({"type": "trial", "trial": trial.trial_id, "status": "ended", "point": trial.config})

    return TrialEvents()


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
        named = Path(result.translations).parent / "test_sets"  # eval.test_sets' translations
        if named.is_dir():
            shutil.copytree(named, out_dir / "test_sets", dirs_exist_ok=True)
    return replace(result, checkpoint=str(ckpt), translations=translations)
