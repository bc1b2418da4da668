"""What the controller writes beside a lineage and reads back to find one: the lineage's datasets, config and
score tags, a sweep's trials as nested runs, the output folder's last lineage, and the checks that keep an
output folder to one experiment."""

from __future__ import annotations

from pathlib import Path

import yaml

from mgkd.config import ExperimentConfig
from mgkd.errors import MgkdError
from mgkd.generations import GenerationResult, GenerationSpec
from mgkd.lineage.note import TAG_NOTE, artifact_image_url, lineage_note, run_route
from mgkd.lineage.tracking import (
    LAST_LINEAGE,
    TAG_CHECKPOINT_SHA,
    LineageRecorder,
    dataset_inputs,
    mlflow_client,
    read_last_lineage,
    write_last_lineage,
)
from mgkd.orchestration.display import lineage_rows
from mgkd.orchestration.sweep import SweepOutcome
from mgkd.tasks import Task
from mgkd.tasks.translation import PreparedData
from mgkd.tasks.translation.eval_sets import language_tags


def artifact_root(cfg: ExperimentConfig, tracking_uri: str) -> Path | None:
    """Where the lineage's artifacts go: beside a local store, or where the server decides (None)."""
    # A local sqlite store keeps its artifacts beside it; a server decides its own.
    return Path(cfg.output_dir).resolve() / "mlartifacts" if tracking_uri.startswith("sqlite:") else None


def record_trials(recorder: LineageRecorder, lineage_id: str, run_id: str, index: int, sweep: SweepOutcome) -> None:
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


def score_tags(cfg: ExperimentConfig, data: PreparedData) -> dict[str, str]:
    """Translation: sacrebleu's BLEU/chrF signatures and the corpus's language codes, on every run."""
    scoring = getattr(data, "scoring", None)
    return {**scoring.tags(), **language_tags(cfg.corpus)} if scoring is not None else {}


def registered_model_name(cfg: ExperimentConfig, lineage_id: str) -> str:
    """The model registry's name of the lineage: its version k is generation k."""
    return f"{cfg.name}-lineage-{lineage_id[:8]}"


def lineage_datasets(cfg: ExperimentConfig, data: PreparedData) -> list:
    """The prepared splits as MLflow dataset inputs (digest, file, rows, tokens), logged on every run."""
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


def record_config(recorder: LineageRecorder, lineage_id: str, lineage_dir: Path, cfg: ExperimentConfig) -> None:
    """The resolved config as `config.yaml` in the lineage's folder and on its parent run (resume reads it)."""
    lineage_dir.mkdir(parents=True, exist_ok=True)
    config_file = lineage_dir / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    recorder.log_artifact(lineage_id, config_file)


def record_note(recorder: LineageRecorder, lineage_id: str, specs: list[GenerationSpec],
                results: list[GenerationResult], run_ids: list[str], controls: dict[int, GenerationResult],
                control_run_ids: dict[int, str], *, task: Task, plot: str | None = None) -> None:  # fmt: skip
    """The lineage run's description in MLflow (what its page shows first): the console's table of the
    generations so far, each `gen` linked to its run (a control's score to the control's run), and the plot
    once `plot` (its artifact path on the lineage run) is logged."""
    columns, rows = lineage_rows(specs, results, controls, task=task)
    exp = recorder.experiment_id
    control_col = next((c for c in columns if c.startswith("control ")), None)
    links = []
    for r, run_id in zip(results, run_ids):
        row_links = {"gen": run_route(exp, run_id)}
        if control_col and r.index in control_run_ids:
            row_links[control_col] = run_route(exp, control_run_ids[r.index])
        links.append(row_links)
    if plot:
        status = f"All {len(results)} generations finished. The plot is the lineage run's artifact `{plot}`:"
    else:
        status = f"{len(results)} of {len(specs)} generations finished; this table grows as each one ends."
    plot_url = artifact_image_url(lineage_id, plot) if plot else None
    recorder.set_tags(lineage_id, {TAG_NOTE: lineage_note(columns, rows, links, status, plot_url)})


def write_last_lineage_of(output_dir: Path, lineage_id: str, tracking_uri: str, cfg: ExperimentConfig,
                          recorder: LineageRecorder) -> None:  # fmt: skip
    """The output folder's pointer to its newest lineage (`mgkd resume`, `ui` and `lineage` read it)."""
    last = {"lineage_id": lineage_id, "tracking_uri": tracking_uri, "experiment": cfg.experiment_name,
            "experiment_id": recorder.experiment_id}  # fmt: skip
    write_last_lineage(output_dir, last)


def check_output_dir(output_dir: Path, cfg: ExperimentConfig) -> None:
    """Refuse a folder whose last lineage is another experiment's, or unfinished (`--force` skips this)."""
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


def find_lineage(target: str, tracking_uri: str | None) -> tuple[str, str]:
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
