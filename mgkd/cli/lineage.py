"""`mgkd losses`, `mgkd lineage`, `mgkd evaluate`: the registered loss plugins, and a lineage read back and
scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mgkd.cli.common import console, store_of, user_errors
from mgkd.errors import MgkdError


def losses(
    as_json: Annotated[bool, typer.Option("--json", help="Print the plugins as JSON.")] = False,
) -> None:
    """List the registered loss plugins (built-in and from installed packages) with their parameters."""
    from mgkd.losses import registry

    with user_errors():
        rows = [
            {
                "name": name,
                "view": cls.view,
                "tasks": list(cls.tasks),
                "parameters": cls.parameters(),
                "teacher_needs": cls.teacher_needs.names(),
                "description": cls.description,
                "module": cls.__module__,
            }
            for name, cls in sorted(registry().items())
        ]
        if as_json:
            print(json.dumps(rows, indent=2, default=str))
            return
        table = Table(title="loss plugins (config: generations.*.losses: [{name, weight, params}])")
        table.add_column("name", no_wrap=True)
        for col in ("data", "parameters (defaults)", "teacher needs", "description"):
            table.add_column(col, overflow="fold")
        for r in rows:
            params = "\n".join(f"{k}={v}" for k, v in r["parameters"].items())
            data = f"{r['view']} ({', '.join(r['tasks'])})"
            table.add_row(r["name"], data, params or "-", ", ".join(r["teacher_needs"]) or "-", r["description"])
        console.print(table)


def lineage(
    lineage_id: Annotated[str | None, typer.Argument(help="The lineage's parent run id (default: the newest).")] = None,
    experiment: Annotated[str | None, typer.Option(help="Experiment name (default: the last run's).")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: the store under --output-dir).")
    ] = None,
    output_dir: Annotated[Path, typer.Option(help="Output folder of a run.")] = Path("mgkd-runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Read a lineage back from MLflow and print it."""
    from mgkd.lineage.tracking import read_lineage
    from mgkd.models.registry import model_label
    from mgkd.tasks import footprint_line, get_task, scores_line

    with user_errors():
        uri, experiment = store_of(tracking_uri, lineage_id, experiment, output_dir)
        info = read_lineage(uri, lineage_id, experiment)
        if as_json:
            print(json.dumps(info, indent=2))
            return
        # The lineage's task (recorded as a parameter of its run) says which test scores to show.
        task = get_task(info["params"].get("task", "translation"))
        # One block per generation, ids in full (soft wrap: nothing cropped on narrow terminals).
        lines = [f"[bold]lineage {info['lineage_id']}[/] ({info['status']}, experiment id {info['experiment_id']})"]
        for g in info["generations"]:
            m, p = g["metrics"], g["params"]
            sizes = {k.removeprefix("model."): v for k, v in p.items() if k.startswith("model.")}
            tg = p.get("teacher_generations", f"[{g['generation'] - 1}]")
            teacher = f"teacher gen {tg.strip('[]')}" if g["teacher_run_id"] else "teacher (generation 0)"
            lines.append(
                f"[bold]gen {g['generation']}[/]  {model_label(g['arch'], sizes)}  "
                f"{m.get('parameters', 0) / 1e6:.2f}M params  {scores_line(task, m)}  {footprint_line(m)}  {teacher}  "
                f"{g['status']}"
            )
            lines.append(f"       run {g['run_id']}  checkpoint sha256 {g['checkpoint_sha256'] or '-'}")
            if g["teacher_run_id"]:
                lines.append(f"       teacher run {g['teacher_run_id']}  sha256 {g['teacher_checkpoint_sha256']}")
            for c in (c for c in info["controls"] if c["control_of"] == g["run_id"]):
                gaps = "  ".join(f"{k.removeprefix('kd_minus_control_test_')} {v:+.2f}"
                                 for k, v in m.items() if k.startswith("kd_minus_control_"))  # fmt: skip
                lines.append(
                    f"       [bold]control[/] (no KD)  {scores_line(task, c['metrics'])}  KD − control: {gaps or '-'}  "
                    f"{c['status']}{'' if c['matched'] else '  [red]NOT matched (init or data order)[/]'}"
                )
                lines.append(f"       control run {c['run_id']}  init sha256 {c['init_sha256'] or '-'}")
        console.print("\n".join(lines), soft_wrap=True, highlight=False)


def evaluate(
    lineage_id: Annotated[str | None, typer.Argument(help="The lineage's parent run id (default: the newest).")] = None,
    ensemble: Annotated[
        str | None,
        typer.Option(help="Generations to ensemble, e.g. 1,2,3 (default: every student). Averages log-probs."),
    ] = None,
    split: Annotated[str, typer.Option(help="valid, test, or test/<name> (a named test set).")] = "test",
    beam_size: Annotated[int | None, typer.Option(help="Beam size (default: the lineage's eval.beam_size).")] = None,
    experiment: Annotated[str | None, typer.Option(help="Experiment name (default: the last run's).")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: the store under --output-dir).")
    ] = None,
    output_dir: Annotated[Path, typer.Option(help="Output folder of a run (data cache, default store).")] = Path(
        "mgkd-runs"
    ),
) -> None:
    """Score generations of a lineage alone and as an ensemble (BAN-E); logs an evaluation run."""
    from mgkd.orchestration.evaluation import evaluate_ensemble

    with user_errors():
        uri, experiment = store_of(tracking_uri, lineage_id, experiment, output_dir)
        try:
            members = [int(x) for x in ensemble.split(",")] if ensemble else None
        except ValueError:
            raise MgkdError(f"--ensemble {ensemble!r}: give generation numbers like 1,2,3") from None
        report = evaluate_ensemble(uri, lineage_id, experiment, members, split, beam_size, output_dir)
        table = Table(title=f"lineage {report.lineage_id}: {split} split")
        for col in ("model", "BLEU", "chrF", "sentences/s"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for r in report.rows:
            table.add_row(r["model"], f"{r['bleu']:.2f}", f"{r['chrf']:.2f}", f"{r['sentences_per_s']:.0f}")
        console.print(table)
        console.print(f"logged as run {report.run_id}", highlight=False)
