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

from mlflow.exceptions import MlflowException
from rich.console import Console

from mgkd.config import ExperimentConfig, apply_overrides, validate
from mgkd.deploy.pyfunc import log_generation_model
from mgkd.errors import MgkdError
from mgkd.files import sha256_file
from mgkd.generations import GenerationResult, GenerationSpec, build_schedule
from mgkd.generations.search import apply_search
from mgkd.lineage.plot import lineage_plot
from mgkd.lineage.tracking import (
    TAG_CHECKPOINT_SHA,
    TAG_MODEL,
    LineageRecorder,
    check_tracking_uri,
    default_tracking_uri,
    lineage_config,
    mlflow_client,
    read_lineage,
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
from mgkd.orchestration.recording import (
    artifact_root,
    check_output_dir,
    find_lineage,
    lineage_datasets,
    record_config,
    record_note,
    record_trials,
    registered_model_name,
    score_tags,
    write_last_lineage_of,
)
from mgkd.orchestration.runners import LocalRunner, RayRunner
from mgkd.orchestration.sweep import run_sweep
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


def record_generation(recorder: LineageRecorder, run_id: str, model_name: str, result: GenerationResult,
                       data: PreparedData, spec: GenerationSpec, cfg: ExperimentConfig) -> None:  # fmt: skip
    """Everything a finished generation leaves in its run, then the run's end (bench/orchestration.py times it too)."""
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
        named = Path(result.translations).parent / "test_sets"  # eval.test_sets: test_sets/<name>.tsv
        if named.is_dir():
            recorder.log_artifact(run_id, named)
    for path in result.artifacts:  # teacher-made data: pseudo-target corpora, cache manifests
        recorder.log_artifact(run_id, path, "teacher_outputs")
    samples = {k: [s[k] for s in result.samples] for k in ("source", "reference", "hypothesis")}
    recorder.log_table(run_id, samples, "samples/test_first50.json")
    # The registry's version k is generation k, tagged with the same lineage edges as its run.
    version = recorder.register(model_name, run_id, "checkpoint", recorder.lineage_tags(run_id), logged_model)
    recorder.set_tags(run_id, {TAG_MODEL: model_name, "mgkd.model_version": str(version)})
    recorder.end(run_id, "FINISHED")


def _sweeps(specs: list) -> bool:
    return any(s.search is not None for s in specs)


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
        check_output_dir(output_dir, cfg)

    data = prepare(cfg, console.log)
    recorder = LineageRecorder(tracking_uri, cfg.experiment_name, artifact_root(cfg, tracking_uri))
    runner: LocalRunner | RayRunner = (
        RayRunner(cfg.ray, data, cfg.output_dir, _sweeps(specs)) if cfg.ray.enabled else LocalRunner(data)
    )
    console.log(f"runner: {runner.description}")
    for warning in getattr(runner, "warnings", []):
        console.log(f"[yellow]warning:[/] {warning}")

    lineage_id = recorder.start_lineage(
        cfg.name,
        cfg.model_dump(mode="json"),
        {"mgkd.data_hash": data.data_hash, "mgkd.config_name": cfg.name, **score_tags(cfg, data)},
    )
    recorder.set_tags(lineage_id, {TAG_MODEL: registered_model_name(cfg, lineage_id)})
    recorder.log_inputs(lineage_id, lineage_datasets(cfg, data))
    record_config(recorder, lineage_id, output_dir / "lineages" / lineage_id, cfg)
    recorder.log_artifact(lineage_id, data.cache_dir / "spm.model", "tokenizer")
    for split in data.splits:  # a named test set "test/x" is data/test/x.jsonl
        recorder.log_artifact(lineage_id, data.cache_dir / f"{split}.jsonl", str(Path("data", split).parent))
    recorder.log_metrics(lineage_id, {k: float(v) for k, v in data.summary().items() if k != "data_hash"}, 0)
    write_last_lineage_of(output_dir, lineage_id, tracking_uri, cfg, recorder)
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
    lineage_id, tracking_uri = find_lineage(target, tracking_uri)
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
    recorder = LineageRecorder(tracking_uri, cfg.experiment_name, artifact_root(cfg, tracking_uri))
    runner: LocalRunner | RayRunner = (
        RayRunner(cfg.ray, data, cfg.output_dir, _sweeps(specs)) if cfg.ray.enabled else LocalRunner(data)
    )
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
            order = [g["data_order_sha256"]] if g["data_order_sha256"] else []  # the whole budget's, as recorded
            result = GenerationResult(k, str(ckpt), g["checkpoint_sha256"], int(g["metrics"].get("parameters", 0)),
                                      dict(g["metrics"]), init_sha256=g["init_sha256"], data_order=order)  # fmt: skip
            done[k] = (g["run_id"], result)
        elif k not in done:
            open_runs[k] = g["run_id"]
    done_controls, open_controls = recorded_controls(info)
    recorder.reopen(lineage_id)
    if overrides:  # the lineage's config.yaml is what the next resume reads
        record_config(recorder, lineage_id, lineage_dir, cfg)
        recorder.set_tags(lineage_id, {"mgkd.resume_overrides": " ".join(overrides)[:5000]})
    write_last_lineage_of(Path(cfg.output_dir).resolve(), lineage_id, tracking_uri, cfg, recorder)
    console.log(
        f"resuming lineage {lineage_id}: generations {sorted(done) or 'none'} finished and reused"
        + (f", controls of {sorted(done_controls)}" if done_controls else "")
        + "; "
        f"runner: {runner.description}"
    )
    for warning in getattr(runner, "warnings", []):
        console.log(f"[yellow]warning:[/] {warning}")
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
    model_name = registered_model_name(cfg, lineage_id)
    task = get_task(cfg.task)  # its metrics, table columns and plot
    datasets = lineage_datasets(cfg, data)
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
                    recorder.set_tags(run_id, score_tags(cfg, data))

                with GenerationProgress(console, spec, task) as progress:

                    def events(event: dict, run_id: str = run_id, progress: GenerationProgress = progress) -> None:
                        if event["type"] in ("step", "epoch"):
                            recorder.log_metrics(run_id, event["metrics"], event["step"])
                        progress(event)

                    if spec.search is not None:
                        assert isinstance(runner, RayRunner)  # the config requires Ray for a search
                        sweep = run_sweep(runner, spec, lineage_dir / f"gen-{spec.index}", teacher, events, task=task)
                        record_trials(recorder, lineage_id, run_id, spec.index, sweep)
                        result, best_point = sweep.best, sweep.best_trial.point
                    else:
                        result = runner.run(spec, lineage_dir / f"gen-{spec.index}", teacher, events)
                trained = apply_search(spec, best_point) if best_point else spec
                record_generation(recorder, run_id, model_name, result, data, trained, cfg)
                ended.add(run_id)
                results.append(result)
                run_ids.append(run_id)
                console.print(lineage_table(specs, results, f"after generation {spec.index}", controls, task=task))
                record_note(recorder, lineage_id, specs, results, run_ids, controls, control_run_ids, task=task)
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
                    console, started, cfg.generations.control_budget,
                )  # fmt: skip
                ended.add(control_run_ids[spec.index])
                console.print(
                    lineage_table(specs, results, f"after generation {spec.index}'s control", controls, task=task)
                )
                record_note(recorder, lineage_id, specs, results, run_ids, controls, control_run_ids, task=task)
        wall = time.perf_counter() - t0
        final = {f"final_{k}": v for k, v in results[-1].metrics.items() if k == task.table[0]}  # the headline
        recorder.log_metrics(lineage_id, {"wall_time_s": wall, **final}, 0)
        plot = lineage_plot([{"generation": r.index, **r.metrics} for r in results], lineage_dir / "lineage.png",
                            [(k, f"test {metric(task, k).label}") for k in task.plot],
                            [{"generation": k, **r.metrics} for k, r in sorted(controls.items())])  # fmt: skip
        recorder.log_artifact(lineage_id, plot)
        record_note(recorder, lineage_id, specs, results, run_ids, controls, control_run_ids, task=task, plot=plot.name)
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
    scoring = getattr(data, "scoring", None)  # translation's: how BLEU and chrF were computed
    if scoring is not None:
        console.print(f"  [dim]BLEU[/]  {scoring.signatures['bleu']}\n  [dim]chrF[/]  {scoring.signatures['chrf']}")
    output_dir = Path(cfg.output_dir).resolve()
    return LineageOutcome(lineage_id, recorder.uri, cfg.experiment_name, output_dir, specs, results, run_ids, wall,
                          controls, control_run_ids)  # fmt: skip


def ui_command(outcome: LineageOutcome) -> str:
    """The command that opens the MLflow UI on this lineage's store."""
    if outcome.tracking_uri.startswith("sqlite:"):
        return f"mgkd ui --output-dir {outcome.output_dir}"
    return f"open {outcome.tracking_uri}"


__all__ = ["LineageOutcome", "MgkdError", "resume_lineage", "run_lineage", "ui_command"]
