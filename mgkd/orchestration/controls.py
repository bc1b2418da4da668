"""Matched controls in a lineage: train each distilled generation's twin, record it, compare.

The controller calls `run_control` right after a distilled generation (or, on
resume, after a reused one whose control had not finished). The control trains
on the same runner as the generations (in-process or a Ray Train run), from the
same teacher files (init teacher/cut copy them; no loss reads them), in its own
folder `gen-<k>-control`, so a killed control continues from its own state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from mgkd.config import ExperimentConfig
from mgkd.generations import GenerationResult, GenerationSpec
from mgkd.generations.controls import control_spec, data_order_sha256, is_distilled
from mgkd.generations.search import apply_search
from mgkd.lineage.tracking import TAG_CHECKPOINT_SHA, TAG_CONTROL_RUN, TAG_DATA_ORDER_SHA, TAG_INIT_SHA, LineageRecorder
from mgkd.orchestration.display import GenerationProgress
from mgkd.tasks import task_of

# The task's test scores whose KD − control difference is logged on the generation's run.
SCORES = ("test_bleu", "test_chrf", "test_accuracy", "test_macro_f1", "test_mcc")


def wanted_controls(cfg: ExperimentConfig, specs: list[GenerationSpec]) -> set[int]:
    """The generations that get a control: every distilled one, when generations.control is on."""
    return {s.index for s in specs if is_distilled(s)} if cfg.generations.control else set()


def kd_minus_control(kd: dict[str, float], control: dict[str, float]) -> dict[str, float]:
    """`kd_minus_control_<score>` for each test score both runs have."""
    return {f"kd_minus_control_{k}": kd[k] - control[k] for k in SCORES if k in kd and k in control}


def fairness_tags(result: GenerationResult, data: Any, spec: GenerationSpec) -> dict[str, str]:
    """What a comparison checks: the sha256 of the initial weights and of the training batch order."""
    if spec.external is not None:
        return {}
    # As the trainer cut the batches (train.batch_targets may cut them by teacher-made targets the driver does not
    # have); a result from before trainers reported it: as the gold split cuts them.
    tags = {TAG_DATA_ORDER_SHA: result.data_order[-1] if result.data_order else data_order_sha256(data, spec)}
    if result.init_sha256:
        tags[TAG_INIT_SHA] = result.init_sha256
    return tags


def same_data_order(control: GenerationResult, kd: GenerationResult, data: Any, twin: GenerationSpec,
                    kd_spec: GenerationSpec) -> bool:  # fmt: skip
    """Whether the control's batches over the generation's epochs were the generation's, by the digests their
    trainers reported (the generation's, when reused on resume: its recorded tag alone, the last of them);
    recomputed from the gold split for results that carry none."""
    epochs = kd_spec.train.max_epochs
    if control.data_order and kd.data_order:
        return len(control.data_order) >= epochs and control.data_order[epochs - 1] == kd.data_order[-1]
    return data_order_sha256(data, twin, epochs) == data_order_sha256(data, kd_spec)


def recorded_controls(info: dict[str, Any]) -> tuple[dict[int, tuple[str, GenerationResult]], dict[int, str]]:
    """What a lineage (`read_lineage`) holds for resume: finished controls (kept; a control never teaches, so
    its metrics are all the lineage reads back) and unfinished ones (continued in their own runs)."""
    done: dict[int, tuple[str, GenerationResult]] = {}
    open_runs: dict[int, str] = {}
    for c in info["controls"]:
        k = c["generation"]
        if c["status"] == "FINISHED" and c["checkpoint_sha256"]:
            metrics = dict(c["metrics"])
            result = GenerationResult(k, "", c["checkpoint_sha256"], int(metrics.get("parameters", 0)), metrics,
                                      init_sha256=c["init_sha256"])  # fmt: skip
            done[k] = (c["run_id"], result)
    for c in info["controls"]:
        if c["generation"] not in done:
            open_runs.setdefault(c["generation"], c["run_id"])
    return done, open_runs


def recorded_best_point(recorder: LineageRecorder, run_id: str) -> dict[str, Any]:
    """A finished sweep's winning values, as `_record_trials` logged them (`search.best.<key>` params)."""
    params = recorder.client.get_run(run_id).data.params
    prefix = "search.best."
    return {k.removeprefix(prefix): param_value(v) for k, v in params.items() if k.startswith(prefix)}


def param_value(text: str) -> Any:
    """A value as `str()` wrote it into an MLflow param: JSON reads 1e-05 (YAML 1.1 would not), YAML True."""
    try:
        return json.loads(text)
    except ValueError:
        return yaml.safe_load(text)


def run_control(
    spec: GenerationSpec,
    teacher_losses: list,
    best_point: dict[str, Any] | None,
    generation_run: str,
    kd: GenerationResult,
    open_run: str | None,
    recorder: LineageRecorder,
    runner: Any,
    teacher: Any,
    lineage_id: str,
    lineage_dir: Path,
    data: Any,
    console: Console,
    started: Callable[[str], None],
    budget: str = "steps",
) -> tuple[str, GenerationResult]:
    """Train and record generation `spec.index`'s control; returns its run id and result.

    `open_run`: a control run a killed lineage left (continued, not started again). `started` is told the
    control's run id as soon as it exists, so the controller can end it if the lineage stops.
    """
    twin = control_spec(spec, teacher_losses, best_point, budget)
    if open_run is not None:
        run_id = open_run
        recorder.reopen(run_id)
    else:
        teachers = teacher if isinstance(teacher, list) else ([teacher] if teacher is not None else [])
        run_id = recorder.start_control(
            lineage_id, generation_run, spec.index, twin.as_params(),
            recorder.lineage_tags(generation_run).get("mgkd.teacher_run_id"),
            ",".join(t.checkpoint_sha256 for t in teachers) or None,
        )  # fmt: skip
        recorder.log_dict(run_id, twin.to_dict(), "spec.json")
    started(run_id)
    with GenerationProgress(console, twin, task_of(data)) as progress:

        def events(event: dict) -> None:
            if event["type"] in ("step", "epoch"):
                recorder.log_metrics(run_id, event["metrics"], event["step"])
            progress(event)

        result = runner.run(twin, lineage_dir / f"gen-{spec.index}-control", teacher, events)
    recorder.log_metrics(run_id, result.metrics, int(result.metrics["steps"]))
    tags = fairness_tags(result, data, twin)
    kd_spec = apply_search(spec, best_point) if best_point else spec  # the selected trial's budget and batches
    # With control_budget 'batches' the control's first epochs are the generation's: that prefix must match.
    same_batches = same_data_order(result, kd, data, twin, kd_spec)
    matched = tags.get(TAG_INIT_SHA) == kd.init_sha256 is not None and same_batches
    recorder.set_tags(run_id, {TAG_CHECKPOINT_SHA: result.checkpoint_sha256,
                               "mgkd.control_matched": str(matched).lower(), **tags})  # fmt: skip
    recorder.log_artifact(run_id, result.checkpoint, "checkpoint")
    if result.translations:
        recorder.log_artifact(run_id, result.translations)
    recorder.end(run_id, "FINISHED")
    recorder.log_metrics(generation_run, kd_minus_control(kd.metrics, result.metrics), 0)
    recorder.set_tags(generation_run, {TAG_CONTROL_RUN: run_id})
    if not matched:
        console.log(f"[red]gen {spec.index} control: its initial weights or batch order differ from the generation's "
                    "(mgkd.control_matched=false); the comparison is not matched[/]")  # fmt: skip
    return run_id, result
