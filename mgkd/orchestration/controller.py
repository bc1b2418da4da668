"""The controller: one lineage, generation after generation.

It prepares the task once, opens the lineage in MLflow, and for each
generation of the schedule starts a child run, hands the generation to a
runner (Ray or in-process), records what comes back, and makes the result the
next generation's teacher. It coordinates; the runners train.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mlflow.exceptions import MlflowException
from rich.console import Console

from mgkd.config import ExperimentConfig, apply_overrides, validate
from mgkd.deploy.pyfunc import log_generation_model
from mgkd.errors import MgkdError
from mgkd.files import sha256_file
from mgkd.generations import GenerationResult, GenerationSpec, build_schedule
from mgkd.generations.spec import apply_search
from mgkd.lineage.tracking import (
    LAST_LINEAGE,
    TAG_CHECKPOINT_SHA,
    TAG_MODEL,
    LineageRecorder,
    check_tracking_uri,
    dataset_inputs,
    default_tracking_uri,
    lineage_config,
    lineage_plot,
    mlflow_client,
    read_last_lineage,
    read_lineage,
    write_last_lineage,
)
from mgkd.models.external import folder_sha256
from mgkd.orchestration.controls import (
    fairness_tags,
    recorded_best_point,
    recorded_controls,
    run_control,
    wanted_controls,
)
from mgkd.orchestration.display import GenerationProgress, lineage_table
from mgkd.orchestration.runners import LocalRunner, RayRunner
from mgkd.orchestration.sweep import SweepOutcome, run_sweep
from mgkd.tasks import get_task, metric, prepare
from mgkd.tasks.translation import PreparedData


@dataclass
class LineageOutcome:
    lineage_id: str
    tracking_uri: str
    experiment: str
    output_dir: Path
    specs: list[GenerationSpec]
    results: list[GenerationResult]
    run_ids: list[str]
    wall_time_s: float
    # Matched controls by the index of the generation they twin (generations.control).
    controls: dict[int, GenerationResult] = field(default_factory=dict)
    control_run_ids: dict[int, str] = field(default_factory=dict)


def _artifact_root(cfg: ExperimentConfig, tracking_uri: str) -> Path | None:
    # A local sqlite store keeps its artifacts beside it; a server decides its own.
    return Path(cfg.output_dir).resolve() / "mlartifacts" if tracking_uri.startswith("sqlite:") else None


def _record_generation(recorder: LineageRecorder, run_id: str, model_name: str, result: GenerationResult,
                       data: PreparedData, spec: GenerationSpec, cfg: ExperimentConfig) -> None:  # fmt: skip
    """Everything a finished generation leaves in its run, then the run's end."""
    recorder.log_metrics(run_id, result.metrics, int(result.metrics["steps"]))
    recorder.set_tags(run_id, {TAG_CHECKPOINT_SHA: result.checkpoint_sha256, **fairness_tags(result, data, spec)})
    logged_model = None
    if result.manifest:  # an external model: the list of its folder's files, not a copy of them
        recorder.log_artifact(run_id, result.manifest, "checkpoint")
    else:
        recorder.log_artifact(run_id, result.checkpoint, "checkpoint")
        recorder.log_artifact(run_id, data.cache_dir / "spm.model", "tokenizer")
        # The same files as an MLflow model (pyfunc): what the registry version points to.
        logged_model = log_generation_model(recorder.uri, run_id, Path(result.checkpoint), data.cache_dir / "spm.model",
                                            result.checkpoint_sha256, cfg.task,
                                            {"max_length": cfg.classification.max_length})  # fmt: skip
    if result.translations:
        recorder.log_artifact(run_id, result.translations)
    for path in result.artifacts:  # teacher-made data: pseudo-target corpora, cache manifests
        recorder.log_artifact(run_id, path, "teacher_outputs")
    samples = {k: [s[k] for s in result.samples] for k in ("source", "reference", "hypothesis")}
    recorder.log_table(run_id, samples, "samples/test_first50.json")
    # The registry's version k is generation k, tagged with the same lineage edges as its run.
    version = recorder.register(model_name, run_id, "checkpoint", recorder.lineage_tags(run_id), logged_model)
    recorder.set_tags(run_id, {TAG_MODEL: model_name, "mgkd.model_version": str(version)})
    recorder.end(run_id, "FINISHED")


def run_lineage(cfg: ExperimentConfig, console: Console | None = None, force: bool = False) -> LineageOutcome:
    """Train and record the whole lineage the config describes.

    An output folder whose last lineage belongs to another experiment, or is unfinished, is refused
    unless `force`: a new lineage there would hide it from `mgkd resume` / `mgkd ui`.
    """
    console = console or Console()
    t0 = time.perf_counter()
    specs = build_schedule(cfg)  # every generation checked before anything runs
    output_dir = Path(cfg.output_dir).resolve()
    tracking_uri = cfg.tracking.uri or default_tracking_uri(output_dir)
    check_tracking_uri(tracking_uri)
    if not force:
        _check_output_dir(output_dir, cfg)

    data = prepare(cfg, console.log)
    recorder = LineageRecorder(tracking_uri, cfg.experiment_name, _artifact_root(cfg, tracking_uri))
    runner: LocalRunner | RayRunner = RayRunner(cfg.ray, data, cfg.output_dir) if cfg.ray.enabled else LocalRunner(data)
    console.log(f"runner: {runner.description}")

    lineage_id = recorder.start_lineage(
        cfg.name, cfg.model_dump(mode="json"), {"mgkd.data_hash": data.data_hash, "mgkd.config_name": cfg.name}
    )
    recorder.set_tags(lineage_id, {TAG_MODEL: _model_name(cfg, lineage_id)})
    recorder.log_inputs(lineage_id, _datasets(cfg, data))
    _record_config(recorder, lineage_id, output_dir / "lineages" / lineage_id, cfg)
    recorder.log_artifact(lineage_id, data.cache_dir / "spm.model", "tokenizer")
    for split in ("train", "valid", "test"):
        recorder.log_artifact(lineage_id, data.cache_dir / f"{split}.jsonl", "data")
    recorder.log_metrics(lineage_id, {k: float(v) for k, v in data.summary().items() if k != "data_hash"}, 0)
    _write_last(output_dir, lineage_id, tracking_uri, cfg, recorder)
    console.log(f"lineage {lineage_id} in {tracking_uri} (experiment {cfg.experiment_name!r})")
    return _drive(cfg, specs, data, recorder, runner, lineage_id, console, t0, {}, {})


def resume_lineage(target: str, tracking_uri: str | None = None, console: Console | None = None,
                   overrides: list[str] | None = None) -> LineageOutcome:  # fmt: skip
    """Continue a killed or failed lineage: finished generations are reused (same runs, checkpoints and
    checksums), an unfinished one continues in its own run from its last saved training state.

    `target` is an output folder (its last lineage) or a lineage run id (with `tracking_uri`, or the
    store of ./mgkd-runs).
    """
    console = console or Console()
    t0 = time.perf_counter()
    lineage_id, tracking_uri = _find_lineage(target, tracking_uri)
    check_tracking_uri(tracking_uri)
    info = read_lineage(tracking_uri, lineage_id)
    if info["status"] == "FINISHED":
        raise MgkdError(f"lineage {lineage_id} already finished; nothing to resume (mgkd lineage {lineage_id})")
    client = mlflow_client(tracking_uri)
    raw = lineage_config(tracking_uri, lineage_id)
    # `--set` may change what the rest of the lineage does (e.g. a lower train.lr after a NaN); a change of a
    # generation's model or of the data is refused when its saved state or the data hash is checked.
    cfg = validate(apply_overrides(raw, overrides or []))
    if overrides:
        console.log(f"resume with changed config: {', '.join(overrides)}")
    specs = build_schedule(cfg)
    data = prepare(cfg, console.log)
    if info["tags"].get("mgkd.data_hash") != data.data_hash:
        raise MgkdError(
            f"the data of lineage {lineage_id} changed (hash {info['tags'].get('mgkd.data_hash', '?')[:12]}…, now "
            f"{data.data_hash[:12]}…): the corpus or tokenizer settings differ; restore them or start a new run"
        )
    recorder = LineageRecorder(tracking_uri, cfg.experiment_name, _artifact_root(cfg, tracking_uri))
    runner: LocalRunner | RayRunner = RayRunner(cfg.ray, data, cfg.output_dir) if cfg.ray.enabled else LocalRunner(data)
    lineage_dir = Path(cfg.output_dir).resolve() / "lineages" / lineage_id
    done: dict[int, tuple[str, GenerationResult]] = {}
    open_runs: dict[int, str] = {}
    for g in info["generations"]:
        k = g["generation"]
        external = specs[k].external if k < len(specs) else None
        if g["status"] == "FINISHED" and g["checkpoint_sha256"] and external is not None:
            # An external generation 0 is its folder: reused as it was, or refused if it changed.
            if folder_sha256(external.path) != g["checkpoint_sha256"]:
                raise MgkdError(
                    f"the external teacher {external.path} changed since lineage {lineage_id} evaluated it (sha256 "
                    f"{g['checkpoint_sha256'][:12]}… then); restore its files or start a new lineage"
                )
            result = GenerationResult(k, str(external.path), g["checkpoint_sha256"],
                                      int(g["metrics"].get("parameters", 0)), dict(g["metrics"]))  # fmt: skip
            done[k] = (g["run_id"], result)
        elif g["status"] == "FINISHED" and g["checkpoint_sha256"]:
            ckpt = lineage_dir / f"gen-{k}" / "checkpoint.pt"
            if not ckpt.is_file() or sha256_file(ckpt) != g["checkpoint_sha256"]:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                got = Path(client.download_artifacts(g["run_id"], "checkpoint/checkpoint.pt", str(ckpt.parent)))
                if got != ckpt:
                    got.replace(ckpt)
            result = GenerationResult(k, str(ckpt), g["checkpoint_sha256"], int(g["metrics"].get("parameters", 0)),
                                      dict(g["metrics"]), init_sha256=g["init_sha256"])  # fmt: skip
            done[k] = (g["run_id"], result)
        elif k not in done:
            open_runs[k] = g["run_id"]
    done_controls, open_controls = recorded_controls(info)
    recorder.reopen(lineage_id)
    if overrides:  # the lineage's config.yaml is what the next resume reads
        _record_config(recorder, lineage_id, lineage_dir, cfg)
        recorder.set_tags(lineage_id, {"mgkd.resume_overrides": " ".join(overrides)[:5000]})
    _write_last(Path(cfg.output_dir).resolve(), lineage_id, tracking_uri, cfg, recorder)
    console.log(
        f"resuming lineage {lineage_id}: generations {sorted(done) or 'none'} finished and reused"
        + (f", controls of {sorted(done_controls)}" if done_controls else "")
        + "; "
        f"runner: {runner.description}"
    )
    return _drive(cfg, specs, data, recorder, runner, lineage_id, console, t0, done, open_runs, done_controls,
                  open_controls)  # fmt: skip


def _drive(cfg: ExperimentConfig, specs: list[GenerationSpec], data: PreparedData, recorder: LineageRecorder,
           runner: LocalRunner | RayRunner, lineage_id: str, console: Console, t0: float,
           done: dict[int, tuple[str, GenerationResult]], open_runs: dict[int, str],
           done_controls: dict[int, tuple[str, GenerationResult]] | None = None,
           open_controls: dict[int, str] | None = None) -> LineageOutcome:  # fmt: skip
    """Run the generations not yet `done` (reopening `open_runs`) and the matched controls not yet
    `done_controls` (reopening `open_controls`), record them, end the lineage."""
    lineage_dir = Path(cfg.output_dir).resolve() / "lineages" / lineage_id
    model_name = _model_name(cfg, lineage_id)
    task = get_task(cfg.task)  # its metrics, table columns and plot
    datasets = _datasets(cfg, data)
    results: list[GenerationResult] = []
    run_ids: list[str] = []
    wanted = wanted_controls(cfg, specs)
    controls = {k: r for k, (_, r) in (done_controls or {}).items() if k in wanted}
    control_run_ids = {k: rid for k, (rid, _) in (done_controls or {}).items() if k in wanted}
    ended: set[str] = set()  # runs recorded to their end; any other open run is ended as KILLED/FAILED
    status = "FAILED"
    run_id = None
    try:
        for spec in specs:
            # Generation k's teacher: generation k-1, or the ensemble of the generations the spec names.
            teachers = [results[g] for g in spec.teacher_generations or []]
            teacher = teachers if len(teachers) > 1 else (teachers[0] if teachers else None)
            best_point = None
            if spec.index in done:
                run_ids.append(done[spec.index][0])
                results.append(done[spec.index][1])
            else:
                if spec.index in open_runs:  # a killed generation continues in its own run
                    run_id = open_runs[spec.index]
                    recorder.reopen(run_id)
                else:
                    run_id = recorder.start_generation(
                        lineage_id, spec.index, spec.as_params(),
                        ",".join(run_ids[g] for g in spec.teacher_generations or []) or None,
                        ",".join(t.checkpoint_sha256 for t in teachers) or None,
                    )  # fmt: skip
                    recorder.log_inputs(run_id, datasets)
                    recorder.log_dict(run_id, spec.to_dict(), "spec.json")

                with GenerationProgress(console, spec, task) as progress:

                    def events(event: dict, run_id: str = run_id, progress: GenerationProgress = progress) -> None:
                        if event["type"] in ("step", "epoch"):
                            recorder.log_metrics(run_id, event["metrics"], event["step"])
                        progress(event)

                    if spec.search is not None:
                        assert isinstance(runner, RayRunner)  # the config requires Ray for a search
                        sweep = run_sweep(runner, spec, lineage_dir / f"gen-{spec.index}", teacher, events, task=task)
                        _record_trials(recorder, lineage_id, run_id, spec.index, sweep)
                        result, best_point = sweep.best, sweep.best_trial.point
                    else:
                        result = runner.run(spec, lineage_dir / f"gen-{spec.index}", teacher, events)
                trained = apply_search(spec, best_point) if best_point else spec
                _record_generation(recorder, run_id, model_name, result, data, trained, cfg)
                ended.add(run_id)
                results.append(result)
                run_ids.append(run_id)
                console.print(lineage_table(specs, results, f"after generation {spec.index}", controls, task=task))
                for s in result.samples[:2]:
                    console.print(f"  [dim]src[/]  {s['source']}\n  [dim]ref[/]  {s['reference']}\n"
                                  f"  [dim]hyp[/]  {s['hypothesis']}")  # fmt: skip
            if spec.index in wanted and spec.index not in controls:  # its twin, trained without the teacher

                def started(rid: str) -> None:
                    nonlocal run_id
                    run_id = rid

                if best_point is None and spec.search is not None:  # a sweep finished before a resume
                    best_point = recorded_best_point(recorder, run_ids[-1])
                control_run_ids[spec.index], controls[spec.index] = run_control(
                    spec, specs[0].losses, best_point, run_ids[-1], results[-1],
                    (open_controls or {}).get(spec.index), recorder, runner, teacher, lineage_id, lineage_dir, data,
                    console, started,
                )  # fmt: skip
                ended.add(control_run_ids[spec.index])
                console.print(
                    lineage_table(specs, results, f"after generation {spec.index}'s control", controls, task=task)
                )
        wall = time.perf_counter() - t0
        final = {f"final_{k}": v for k, v in results[-1].metrics.items() if k == task.table[0]}  # the headline
        recorder.log_metrics(lineage_id, {"wall_time_s": wall, **final}, 0)
        plot = lineage_plot([{"generation": r.index, **r.metrics} for r in results], lineage_dir / "lineage.png",
                            [(k, f"test {metric(task, k).label}") for k in task.plot],
                            [{"generation": k, **r.metrics} for k, r in sorted(controls.items())])  # fmt: skip
        recorder.log_artifact(lineage_id, plot)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except MlflowException as e:
        # The client already retried with backoff; the open generation's training state is on disk.
        raise MgkdError(
            f"MLflow tracking at {recorder.uri} failed ({str(e).splitlines()[0][:300]}); the finished "
            "generations are recorded and the open one keeps its last saved training state: once the store is "
            "back, `mgkd resume` continues"
        ) from None
    finally:
        try:
            if status != "FINISHED" and run_id is not None and run_id not in ended and run_id not in run_ids:
                recorder.end(run_id, status)
            recorder.end(lineage_id, status)
        except MlflowException:
            pass  # the store is down: the runs keep their last status, resume reopens them
        runner.close()

    console.print(lineage_table(specs, results, f"lineage {lineage_id} ({wall / 60:.1f} min)", controls, task=task))
    output_dir = Path(cfg.output_dir).resolve()
    return LineageOutcome(lineage_id, recorder.uri, cfg.experiment_name, output_dir, specs, results, run_ids, wall,
                          controls, control_run_ids)  # fmt: skip


def _record_trials(recorder: LineageRecorder, lineage_id: str, run_id: str, index: int, sweep: SweepOutcome) -> None:
    """Every trial as a run nested under the generation's run: its values, epoch metrics and outcome."""
    for trial in sweep.trials:
        selected = trial is sweep.best_trial
        tags = {"mgkd.trial_status": trial.status, "mgkd.selected": str(selected).lower()}
        if trial.error:
            tags["mgkd.trial_error"] = trial.error[:5000]
        trial_run = recorder.start_trial(lineage_id, run_id, index, trial.trial_id, trial.point, tags)
        for i, row in enumerate(trial.history):
            epoch = int(row.get("epoch", i + 1))
            recorder.log_metrics(trial_run, {k: v for k, v in row.items() if k.startswith(("valid_", "best_"))}, epoch)
        if trial.result is not None:
            recorder.log_metrics(trial_run, trial.result.metrics, int(trial.result.metrics["steps"]))
            recorder.set_tags(trial_run, {TAG_CHECKPOINT_SHA: trial.result.checkpoint_sha256})
        recorder.end(trial_run, {"completed": "FINISHED", "stopped": "KILLED"}.get(trial.status, "FAILED"))
    best = sweep.best_trial
    recorder.set_tags(
        run_id, {"mgkd.best_trial": best.trial_id, "mgkd.search_metric": f"{sweep.metric} ({sweep.mode})"}
    )
    recorder.log_metrics(run_id, {"search_trials": float(len(sweep.trials)),
                                  "search_trials_completed": float(sum(t.status == "completed" for t in sweep.trials))},
                         0)  # fmt: skip
    recorder.log_params(run_id, {f"search.best.{k}": str(v) for k, v in best.point.items()})


def _model_name(cfg: ExperimentConfig, lineage_id: str) -> str:
    return f"{cfg.name}-lineage-{lineage_id[:8]}"


def _datasets(cfg: ExperimentConfig, data: PreparedData) -> list:
    return dataset_inputs(
        cfg.name,
        {
            name: {
                "digest": s.digest,
                "uri": str((data.cache_dir / f"{name}.jsonl").resolve()),
                "rows": len(s),
                # translation: target tokens; classification: input tokens
                **(
                    {"target_tokens": int(sum(len(t) + 1 for t in s.tgt))}
                    if cfg.task == "translation"
                    else {"tokens": int(sum(len(t) for t in s.src))}
                ),
            }  # fmt: skip
            for name, s in data.splits.items()
        },
    )


def _record_config(recorder: LineageRecorder, lineage_id: str, lineage_dir: Path, cfg: ExperimentConfig) -> None:
    """The resolved config as `config.yaml` in the lineage's folder and on its parent run (resume reads it)."""
    lineage_dir.mkdir(parents=True, exist_ok=True)
    config_file = lineage_dir / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    recorder.log_artifact(lineage_id, config_file)


def _write_last(output_dir: Path, lineage_id: str, tracking_uri: str, cfg: ExperimentConfig,
                recorder: LineageRecorder) -> None:  # fmt: skip
    last = {"lineage_id": lineage_id, "tracking_uri": tracking_uri, "experiment": cfg.experiment_name,
            "experiment_id": recorder.experiment_id}  # fmt: skip
    write_last_lineage(output_dir, last)


def _check_output_dir(output_dir: Path, cfg: ExperimentConfig) -> None:
    last = read_last_lineage(output_dir)
    if last is None:
        return
    lineage_id, experiment = last["lineage_id"], last["experiment"]
    if experiment != cfg.experiment_name:
        raise MgkdError(
            f"output folder {output_dir} holds lineage {lineage_id} of experiment {experiment!r}, not "
            f"{cfg.experiment_name!r}; choose another --output-dir, or --force to add a lineage there"
        )
    try:
        status = mlflow_client(last["tracking_uri"]).get_run(lineage_id).info.status
    except Exception:  # noqa: BLE001 - a store we cannot read says nothing about the lineage
        return
    if status in ("RUNNING", "KILLED", "FAILED"):
        raise MgkdError(
            f"output folder {output_dir} holds an unfinished lineage {lineage_id} ({status}); "
            f"`mgkd resume {output_dir}` continues it, --force starts a new one beside it"
        )


def _find_lineage(target: str, tracking_uri: str | None) -> tuple[str, str]:
    """(lineage run id, tracking URI) from an output folder or a run id."""
    folder = Path(target)
    if folder.is_dir():
        last = read_last_lineage(folder)
        if last is None:
            raise MgkdError(f"{folder} holds no mgkd run (no {LAST_LINEAGE}); give a lineage run id or a run folder")
        return last["lineage_id"], tracking_uri or last["tracking_uri"]
    if tracking_uri is None:
        last = read_last_lineage(Path("mgkd-runs"))
        if last is None:
            raise MgkdError(
                f"{target!r} is neither a run folder nor resolvable without a store: give --tracking-uri "
                "(or MLFLOW_TRACKING_URI) with a lineage run id"
            )
        tracking_uri = last["tracking_uri"]
    return target, tracking_uri


def ui_command(outcome: LineageOutcome) -> str:
    """The command that opens the MLflow UI on this lineage's store."""
    if outcome.tracking_uri.startswith("sqlite:"):
        return f"mgkd ui --output-dir {outcome.output_dir}"
    return f"open {outcome.tracking_uri}"


__all__ = ["LineageOutcome", "MgkdError", "resume_lineage", "run_lineage", "ui_command"]
