"""`mgkd run`, `mgkd submit`, `mgkd resume`: train a lineage here, on a Ray cluster as a job, or continue one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mgkd.cli.common import (
    ConfigOption,
    ControlOption,
    GenerationsOption,
    PresetOption,
    SetOption,
    console,
    err_console,
    user_errors,
)
from mgkd.errors import MgkdError

if TYPE_CHECKING:
    from mgkd.config import ExperimentConfig


def _option_overrides(overrides: list[str] | None, generations: int | None, schedule: str | None,
                      output_dir: Path | None, tracking_uri: str | None, seed: int | None,
                      control: bool = False) -> list[str]:  # fmt: skip
    """The experiment options `run` and `submit` share, as `--set` overrides (after the user's own)."""
    sets = list(overrides or [])
    if control:
        sets.append("generations.control=true")
    if generations is not None:
        sets.append(f"generations.count={generations}")
    if schedule is not None:
        sets.append(f"generations.schedule={schedule}")
    if output_dir is not None:
        sets.append(f"output_dir={output_dir}")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        sets.append(f"tracking.uri={uri}")
    if seed is not None:
        sets.append(f"seed={seed}")
    return sets


def _experiment(config: Path | None, preset: str | None, sets: list[str]) -> ExperimentConfig:
    from mgkd.config import build_config

    if config is not None and preset is not None:
        raise MgkdError("give either --config or --preset, not both")
    return build_config(config, preset, sets)


def run(
    config: ConfigOption = None,
    preset: PresetOption = None,
    overrides: SetOption = None,
    generations: GenerationsOption = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Folder for the MLflow store, caches and checkpoints (output_dir).")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: sqlite under --output-dir; env MLFLOW_TRACKING_URI)."),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(help="born_again (students keep the teacher's size) or shrink (generations.schedule)."),
    ] = None,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Train in this process without Ray (debugging).")] = False,
    seed: Annotated[int | None, typer.Option(help="Random seed (seed).")] = None,
    task: Annotated[
        str | None,
        typer.Option(help="translation or classification (task); alone, it picks that task's preset."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Start even if the output folder holds another or unfinished lineage.")
    ] = False,
    control: ControlOption = False,
) -> None:
    """Train a teacher and its distilled generations; record the lineage in MLflow.

    With no options it runs the `demo` preset: English -> French on the built-in
    Bible corpus, a small Transformer teacher and 4 born-again students.
    """
    with user_errors():
        sets = _option_overrides(overrides, generations, schedule, output_dir, tracking_uri, seed, control)
        if ray_address:
            sets.append(f"ray.address={ray_address}")
        if no_ray:
            sets.append("ray.enabled=false")
        if task is not None:
            from mgkd.tasks import get_task

            sets.append(f"task={task}")
            if config is None and preset is None:
                preset = get_task(task).preset  # the task's working run out of the box
        cfg = _experiment(config, preset, sets)

        from mgkd.orchestration.controller import run_lineage, ui_command

        outcome = run_lineage(cfg, console, force=force)
        console.print(f"MLflow store: {outcome.tracking_uri}  (lineage run {outcome.lineage_id})")
        console.print(f"Browse the lineage: {ui_command(outcome)}")


def submit(
    address: Annotated[
        str | None,
        typer.Option(help="The cluster's dashboard (Jobs API): http://HEAD:8265 (default: RAY_ADDRESS)."),
    ] = None,
    config: ConfigOption = None,
    preset: PresetOption = None,
    overrides: SetOption = None,
    generations: GenerationsOption = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Folder on the cluster for caches and checkpoints; a relative one is under the job's $HOME."),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking server the cluster can reach, http://HOST:5000 (env MLFLOW_TRACKING_URI)."),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(help="born_again (students keep the teacher's size) or shrink (generations.schedule)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (seed).")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Start even if the output folder holds another or unfinished lineage.")
    ] = False,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="KEY=VALUE set in the job's environment, e.g. MLFLOW_TRACKING_TOKEN (repeatable)."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream the job's logs until it ends; exit 1 unless it succeeds.")
    ] = False,
    control: ControlOption = False,
) -> None:
    """Submit the lineage to a Ray cluster as a job (Ray Jobs API); print its id, or follow its logs.

    The config is built and validated here; the job uploads the mgkd package and the resolved config
    (no caches or outputs) and runs `mgkd run` on the cluster, logging to the MLflow server given.
    """
    from mgkd.orchestration.submit import follow_job, submit_lineage

    with user_errors():
        cfg = _experiment(config, preset, _option_overrides(overrides, generations, schedule, output_dir,
                                                            tracking_uri, seed, control))  # fmt: skip
        job_env = {}
        for item in env or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise MgkdError(f"--env {item!r} must look like KEY=VALUE")
            job_env[key] = value
        job = submit_lineage(cfg, address, force=force, env=job_env)
        for warning in job.warnings:
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        console.print(
            f"submitted job [bold]{job.job_id}[/] to {job.address} ({job.upload_bytes / 1024:.0f} KiB uploaded)\n"
            f"  entrypoint: {job.entrypoint}\n  lineage recorded in {cfg.tracking.uri}; outputs on the cluster in "
            f"{job.output_dir}\n"
            f"  follow: ray job logs --follow {job.job_id} --address {job.address}\n"
            f"  status: ray job status {job.job_id} --address {job.address}\n"
            f"  stop:   ray job stop {job.job_id} --address {job.address}",
            highlight=False, soft_wrap=True,
        )  # fmt: skip
        if not follow:
            return
        try:
            status = follow_job(job.address, job.job_id, lambda text: print(text, end="", flush=True))
        except KeyboardInterrupt:
            err_console.print(
                f"stopped following; the job keeps running (ray job stop {job.job_id} --address {job.address})",
                highlight=False, soft_wrap=True,
            )  # fmt: skip
            raise typer.Exit(130) from None
        console.print(f"job {job.job_id}: {status}", highlight=False)
        if status != "SUCCEEDED":
            raise typer.Exit(1)


def resume(
    target: Annotated[
        str, typer.Argument(help="A run's output folder (its last lineage) or a lineage run id.")
    ] = "mgkd-runs",
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI holding the lineage (default: the folder's store).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Change the lineage's config for what is left, e.g. --set train.lr=5e-4."),
    ] = None,
) -> None:
    """Continue a killed lineage: finished generations are kept, an unfinished one continues from its state."""
    with user_errors():
        from mgkd.orchestration.controller import resume_lineage, ui_command

        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        outcome = resume_lineage(target, uri, console, list(overrides or []))
        console.print(f"MLflow store: {outcome.tracking_uri}  (lineage run {outcome.lineage_id})")
        console.print(f"Browse the lineage: {ui_command(outcome)}")
