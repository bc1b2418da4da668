"""What every command shares: the consoles, user errors as exit code 2, the options `run` and `submit` share,
and where a lineage command finds its MLflow store."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from mgkd.errors import MgkdError

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


def tracking_from_output(output_dir: Path) -> dict[str, Any]:
    from mgkd.lineage.tracking import LAST_LINEAGE, read_last_lineage

    last = read_last_lineage(output_dir)
    if last is None:
        raise MgkdError(
            f"{output_dir} holds no mgkd run (no {LAST_LINEAGE}); give --output-dir of a run or --tracking-uri"
        )
    check_store_exists(last["tracking_uri"], output_dir, f"{Path(output_dir) / LAST_LINEAGE} names")
    return last


def check_store_exists(uri: str, output_dir: Path, named_by: str) -> None:
    """A sqlite store that is not there is refused: opening it would create an empty one (and report that the
    lineage does not exist)."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    if db.is_file():
        return
    here = Path(output_dir) / "mlflow.db"
    fix = (f"give --tracking-uri sqlite:///{here.resolve()} (this folder's store)" if here.is_file()
           else "give --tracking-uri of the run's store")  # fmt: skip
    raise MgkdError(f"{named_by} the MLflow store {db}, which does not exist (was the run's folder moved?); {fix}")


def store_of(tracking_uri: str | None, lineage_id: str | None, experiment: str | None,
             output_dir: Path) -> tuple[str, str | None]:  # fmt: skip
    """The tracking URI and experiment a lineage command reads: given, from the environment, or the last run's."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is not None:
        check_store_exists(uri, output_dir, "--tracking-uri names" if tracking_uri else "MLFLOW_TRACKING_URI names")
    if uri is None or (lineage_id is None and experiment is None):
        last = tracking_from_output(output_dir)
        uri = uri or last["tracking_uri"]
        experiment = experiment or last["experiment"]
    return uri, experiment


def log_err(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)
