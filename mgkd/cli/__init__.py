"""The `mgkd` command line: run a lineage, list loss plugins, read a lineage back, open the UI.

One module per group of commands (`runs`, `lineage`, `deploy`, `ui`; what they share in `common`); the
commands are registered on `app` here, in the order `mgkd --help` lists them.
"""

from __future__ import annotations

import os

import typer

from mgkd.cli import deploy, lineage, runs, ui

app = typer.Typer(
    help="mgkd: multi-generation knowledge distillation (teacher -> student -> ...), run by Ray, recorded in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (runs.run, runs.submit, runs.resume, lineage.losses, lineage.lineage, lineage.evaluate,
                deploy.translate, deploy.predict, deploy.export, ui.ui):  # fmt: skip
    app.command()(command)


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow announces its sqlite schema migrations at INFO; the run's own log says where the store is.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # translate/predict download models
    app()
