"""The `mgkd` command line: run a lineage, list loss plugins, read a lineage back, open the UI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mgkd.errors import MgkdError

if TYPE_CHECKING:
    from mgkd.config import ExperimentConfig

app = typer.Typer(
    help="mgkd: multi-generation knowledge distillation (teacher -> student -> ...), run by Ray, recorded in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


# The options `mgkd run` and `mgkd submit` share: an experiment is described the same way for both.
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML experiment file (see configs/).")]
PresetOption = Annotated[
    str | None, typer.Option("--preset", "-p", help="Built-in experiment by name (default: demo).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set train.max_epochs=3 (repeatable)."),
]
GenerationsOption = Annotated[
    int | None,
    typer.Option("--generations", "-g", help="Distilled generations after the teacher (generations.count)."),
]
ControlOption = Annotated[
    bool,
    typer.Option(
        "--control",
        help="Beside each distilled generation, train its matched control: same init, seed, data order and "
        "budget, gold labels only (generations.control).",
    ),
]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """An MgkdError is the user's to fix: print it without a traceback, exit 2."""
    try:
        yield
    except MgkdError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print(
            "interrupted: the runs are marked KILLED and the open generation saved its state; "
            "`mgkd resume` continues", highlight=False, soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(130) from None


def _tracking_from_output(output_dir: Path) -> dict[str, Any]:
    from mgkd.lineage.tracking import LAST_LINEAGE, read_last_lineage

    last = read_last_lineage(output_dir)
    if last is None:
        raise MgkdError(
            f"{output_dir} holds no mgkd run (no {LAST_LINEAGE}); give --output-dir of a run or --tracking-uri"
        )
    return last


def _store_of(tracking_uri: str | None, lineage_id: str | None, experiment: str | None,
              output_dir: Path) -> tuple[str, str | None]:  # fmt: skip
    """The tracking URI and experiment a lineage command reads: given, from the environment, or the last run's."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None or (lineage_id is None and experiment is None):
        last = _tracking_from_output(output_dir)
        uri = uri or last["tracking_uri"]
        experiment = experiment or last["experiment"]
    return uri, experiment


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


@app.command()
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


@app.command()
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


@app.command()
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


@app.command()
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


@app.command()
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
        uri, experiment = _store_of(tracking_uri, lineage_id, experiment, output_dir)
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


@app.command()
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
        uri, experiment = _store_of(tracking_uri, lineage_id, experiment, output_dir)
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


# The options `mgkd translate` and `mgkd predict` share: which model, and where the input and output are.
InputArg = Annotated[Path | None, typer.Argument(help="Input file, one sentence per line (default or -: stdin).")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Write here (atomically) instead of stdout.")]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="models:/NAME/VERSION, a checkpoint file, or an exported CTranslate2 folder."),
]
RunOpt = Annotated[str | None, typer.Option("--run", help="Lineage run id (default: the output folder's last).")]
GenerationOpt = Annotated[
    int | None, typer.Option("--generation", "-g", help="Generation (default: the lineage's last finished).")
]
TrackingOpt = Annotated[
    str | None, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the run's store).")
]
OutputDirOpt = Annotated[Path, typer.Option(help="Output folder of a run (its last lineage).")]
TokenizerOpt = Annotated[
    Path | None, typer.Option(help="sentencepiece model of a checkpoint file (default: found beside it).")
]
ShaOpt = Annotated[
    str | None, typer.Option("--sha256", help="Expected sha256 of a checkpoint file (default: its lineage's record).")
]
MaxSrcOpt = Annotated[
    int | None, typer.Option(help="Input tokens kept per line (default: the model's limit); longer lines are cut.")
]
MaxTokensOpt = Annotated[int | None, typer.Option(help="Padded input tokens per batch (default 4096).")]


@app.command()
def translate(
    input_path: InputArg = None, output: OutputOpt = None, model: ModelOpt = None, run: RunOpt = None,
    generation: GenerationOpt = None, tracking_uri: TrackingOpt = None, output_dir: OutputDirOpt = Path("mgkd-runs"),
    tokenizer: TokenizerOpt = None, sha256: ShaOpt = None,
    beam_size: Annotated[int | None, typer.Option(help="Beam size (default: the generation's eval.beam_size).")] = None,
    max_len_a: Annotated[float | None, typer.Option(help="Output limit ceil(a * (source + 1) + b): a.")] = None,
    max_len_b: Annotated[int | None, typer.Option(help="Output limit: b.")] = None,
    max_len_src: MaxSrcOpt = None, max_tokens: MaxTokensOpt = None,
    engine: Annotated[str, typer.Option(help="torch (mgkd's decoder) or ctranslate2.")] = "torch",
    quantization: Annotated[
        str, typer.Option(help="With --engine ctranslate2: float32, int8 or int8_float32.")
    ] = "float32",
) -> None:  # fmt: skip
    """Translate a file or stdin with a generation of a lineage, a registered version, or a checkpoint."""
    from mgkd.deploy.commands import ModelChoice, infer

    with user_errors():
        choice = ModelChoice(model, run, generation, tracking_uri, output_dir, tokenizer, sha256)
        given = {"beam_size": beam_size, "max_len_a": max_len_a, "max_len_b": max_len_b, "max_tokens": max_tokens}
        infer("translation", input_path, output, choice, given, max_len_src, engine, quantization, "tsv", 512,
              _log_err)  # fmt: skip


@app.command()
def predict(
    input_path: InputArg = None, output: OutputOpt = None, model: ModelOpt = None, run: RunOpt = None,
    generation: GenerationOpt = None, tracking_uri: TrackingOpt = None, output_dir: OutputDirOpt = Path("mgkd-runs"),
    tokenizer: TokenizerOpt = None, sha256: ShaOpt = None, max_len_src: MaxSrcOpt = None,
    max_tokens: MaxTokensOpt = None,
    output_format: Annotated[str, typer.Option("--format", help="tsv (label<TAB>probability) or jsonl.")] = "tsv",
) -> None:  # fmt: skip
    """Classify each line (a text, or text<TAB>pair) of a file or stdin: its label and probability."""
    from mgkd.deploy.commands import ModelChoice, infer

    with user_errors():
        choice = ModelChoice(model, run, generation, tracking_uri, output_dir, tokenizer, sha256)
        infer("classification", input_path, output, choice, {"max_tokens": max_tokens}, max_len_src, "torch",
              "float32", output_format, 512, _log_err)  # fmt: skip


@app.command()
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="The model folder to write.")],
    output_format: Annotated[str, typer.Option("--format", help="ctranslate2 (Transformer translation).")] = (
        "ctranslate2"
    ),
    quantization: Annotated[str, typer.Option(help="float32, int8 or int8_float32.")] = "float32",
    force: Annotated[bool, typer.Option("--force", help="Replace the folder if it exists.")] = False,
    model: ModelOpt = None, run: RunOpt = None, generation: GenerationOpt = None, tracking_uri: TrackingOpt = None,
    output_dir: OutputDirOpt = Path("mgkd-runs"), tokenizer: TokenizerOpt = None, sha256: ShaOpt = None,
) -> None:  # fmt: skip
    """Export a generation to an inference engine: a CTranslate2 folder (with its sentencepiece model)."""
    from mgkd.deploy.commands import ModelChoice
    from mgkd.deploy.commands import export as export_model

    with user_errors():
        choice = ModelChoice(model, run, generation, tracking_uri, output_dir, tokenizer, sha256)
        export_model(choice, output, output_format, quantization, force, _log_err)


def _log_err(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)


def _port_is_free(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ui_server_command(store_uri: str, artifact_root: Path, host: str, port: int) -> list[str]:
    """`mlflow server` over a local store: what `mgkd ui` runs (an argument list, never a shell string)."""
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    return [mlflow_bin, "server", "--backend-store-uri", store_uri, "--default-artifact-root", artifact_root.as_uri(),
            "--host", host, "--port", str(port), "--workers", "1"]  # fmt: skip


@app.command()
def ui(
    output_dir: Annotated[Path, typer.Option(help="Output folder of a run: its sqlite store is served.")] = Path(
        "mgkd-runs"
    ),
    store: Annotated[
        str | None, typer.Option(help="Serve this store instead: a path to mlflow.db or a sqlite:/// URI.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it private.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
) -> None:
    """Start the MLflow UI over the last run's store (or --store) and print the lineage's URL; Ctrl-C stops it."""
    with user_errors():
        last: dict[str, Any] = {}
        if store is None:
            last = _tracking_from_output(output_dir)
            store = last["tracking_uri"]
            if not store.startswith("sqlite:"):
                raise MgkdError(f"the last run logged to {store}; open that server's UI instead")
        elif "://" not in store:
            if not Path(store).is_file():
                raise MgkdError(f"--store {store} does not exist; give the mlflow.db of a run")
            store = f"sqlite:///{Path(store).resolve()}"
        db = Path(store.removeprefix("sqlite:///"))
        if not _port_is_free(host, port):
            raise MgkdError(f"port {port} on {host} is in use; choose another with --port")
        cmd = ui_server_command(store, db.parent / "mlartifacts", host, port)
        url = f"http://{host}:{port}/"
        if last:
            url += f"#/experiments/{last.get('experiment_id', '')}/runs/{last['lineage_id']}"
        console.print(f"MLflow UI over {store}\nlineage: {url}\nCtrl-C stops it.", soft_wrap=True, highlight=False)
        # MLflow 3.x servers start a job runner with 7 huey consumers by default; a lineage UI needs none, and
        # they hold up Ctrl-C (the server waited >30 s for them on 2 busy cores).
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        proc = subprocess.Popen(cmd, env=env)

        def stop_on_sigterm(signum: int, frame: object) -> None:
            raise KeyboardInterrupt  # SIGTERM stops the server as Ctrl-C does (not leave it on the port)

        signal.signal(signal.SIGTERM, stop_on_sigterm)
        try:
            proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        console.print("MLflow UI stopped.")


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow announces its sqlite schema migrations at INFO; the run's own log says where the store is.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # translate/predict download models
    app()


if __name__ == "__main__":
    main()
