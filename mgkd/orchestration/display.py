"""The console: rich progress while a generation trains, a table per generation and at the end."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mgkd.generations import GenerationResult, GenerationSpec
from mgkd.models.registry import model_label
from mgkd.tasks import Task, footprint, table_columns


class GenerationProgress:
    """Turns a generation's events into a progress bar (train steps, then decoding)."""

    def __init__(self, console: Console, spec: GenerationSpec, task: Task) -> None:
        self.console = console
        self.spec = spec
        self.task = task
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False, refresh_per_second=2,
        )  # fmt: skip
        self.train_task: Any = None
        self.decode_tasks: dict[str, Any] = {}  # by split: test, pseudo (teacher outputs), teacher-cache

    def __enter__(self) -> GenerationProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        name = "teacher" if self.spec.index == 0 else f"gen {self.spec.index}"
        if self.spec.control_of is not None:
            name += " control"
        if kind == "start":
            self.train_task = self.progress.add_task(f"{name} train", total=event["total_steps"], info="")
        elif kind == "step" and self.train_task is not None:
            m = event["metrics"]
            info = f"loss {m['loss']:.3f}  {m['train_tokens_per_s']:.0f} tok/s  epoch {event['epoch']}"
            self.progress.update(self.train_task, completed=event["step"], info=info)
        elif kind == "resume":
            self.console.log(f"{name} resumes at step {event['step']} (epoch {event['epoch']}) from its saved state")
            if self.train_task is not None:
                self.progress.update(self.train_task, completed=event["step"])
        elif kind == "interrupted":
            self.console.log(f"{name} interrupted after step {event['step']}: state saved, `mgkd resume` continues")
        elif kind == "epoch":
            m = event["metrics"]
            parts = [f"epoch {event['epoch']}: valid loss {m['valid_loss']:.3f}"]
            # The task's quality metrics that this validation computed (BLEU only where valid_bleu_sentences > 0).
            parts += [f"valid {q.label} {m['valid_' + q.name]:.2f}" for q in self.task.metrics
                      if q.name != "loss" and "valid_" + q.name in m]  # fmt: skip
            self.console.log(f"{name} " + ", ".join(parts))
        elif kind == "sweep" and event["phase"] == "teacher outputs":
            self.console.log(f"{name}: the teacher's outputs for the sweep, built once for all trials")
        elif kind == "sweep" and event["phase"] == "resumed":
            self.console.log(f"{name}: resuming the Ray Tune sweep in {event['path']} (finished trials are kept)")
        elif kind == "sweep":
            self.console.log(f"{name}: Ray Tune sweep, {event['trials']} trials, up to {event['concurrent']} at once")
        elif kind == "trial" and event["status"] == "epoch":
            point = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in event["point"].items())
            epoch = int(event["epoch"]) if event.get("epoch") is not None else "?"
            self.console.log(
                f"{name} trial {event['trial']} ({point}): epoch {epoch} {event['metric']} {event['value']:.4f}"
            )
        elif kind == "trial":
            self.console.log(f"{name} trial {event['trial']} ended")
        elif kind == "decode" and event["split"] in ("test", "pseudo", "teacher-cache"):
            split = event["split"]
            if split not in self.decode_tasks:
                what = {"test": "decode test", "pseudo": "decode teacher outputs",
                        "teacher-cache": "teacher top-k cache"}[split]  # fmt: skip
                self.decode_tasks[split] = self.progress.add_task(f"{name} {what}", total=event["total"], info="")
            self.progress.update(self.decode_tasks[split], completed=event["done"])


def lineage_rows(specs: list[GenerationSpec], results: list[GenerationResult],
                 controls: dict[int, GenerationResult] | None = None, *,
                 task: Task) -> tuple[list[str], list[list[str]]]:  # fmt: skip
    """The lineage table's columns and one row of cells per generation: what the console's table and the lineage
    run's MLflow description (recording.record_note) both show. With matched controls, their first score and
    KD − control beside it."""
    # The task's table metrics (translation: BLEU, chrF; classification: accuracy, macro-F1, MCC where configured).
    scores = [(k, f"test {label}") for k, label in table_columns(task, results[0].metrics if results else {})]
    key, name = scores[0] if scores else ("", "test score")
    short = name.removeprefix("test ")
    gap_cols = (f"control {short}", f"KD − control {short}") if controls else ()
    columns = ["gen", "architecture", "params", "valid loss", *(c for _, c in scores), *gap_cols, "size on disk",
               "test decode", "train time", "teacher"]  # fmt: skip
    rows = []
    for spec, r in zip(specs, results):
        m = spec.model
        arch = model_label(m.arch, m.model_dump())
        if spec.external is not None:
            arch = f"external {spec.external.kind}: {spec.external.path.name}"
        tg = spec.teacher_generations or []
        who = f"gen {tg[0]}" if len(tg) == 1 else "ensemble of gens " + ",".join(map(str, tg))
        teacher = "-" if spec.index == 0 else f"{who} ({spec.init} init)"
        met = r.metrics
        rows.append([
            str(spec.index), arch, f"{r.parameters / 1e6:.2f}M", f"{met.get('best_valid_loss', float('nan')):.3f}",
            *(f"{met[k]:.2f}" for k, _ in scores), *_gap(key, met, (controls or {}).get(spec.index), bool(controls)),
            *footprint(met), f"{met['train_time_s']:.0f}s", teacher,
        ])  # fmt: skip
    return columns, rows


def lineage_table(specs: list[GenerationSpec], results: list[GenerationResult], title: str,
                  controls: dict[int, GenerationResult] | None = None, *, task: Task) -> Table:  # fmt: skip
    """`lineage_rows` as a rich table for the console."""
    table = Table(title=title)
    columns, rows = lineage_rows(specs, results, controls, task=task)
    for col in columns:
        table.add_column(col, justify="right" if col not in ("architecture", "teacher") else "left")
    for row in rows:
        table.add_row(*row)
    return table


def _gap(key: str, kd: dict[str, float], control: GenerationResult | None, shown: bool) -> tuple[str, ...]:
    """The control's score and KD − control ("-" where the generation has no control)."""
    if not shown:
        return ()
    if control is None or key not in control.metrics or key not in kd:
        return ("-", "-")
    return (f"{control.metrics[key]:.2f}", f"{kd[key] - control.metrics[key]:+.2f}")
