"""`mgkd ui`: the MLflow UI over a run's local store."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mgkd.cli.common import console, tracking_from_output, user_errors
from mgkd.errors import MgkdError
from mgkd.lineage.note import run_url


def _port_is_free(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        # as the server binds: a closed connection's TIME_WAIT on the port (a UI stopped a moment ago) is no user
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group has no process left
        os.killpg(pgid, sig)


def ui_server_command(store_uri: str, artifact_root: Path, host: str, port: int) -> list[str]:
    """`mlflow server` over a local store: what `mgkd ui` runs (an argument list, never a shell string)."""
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    return [mlflow_bin, "server", "--backend-store-uri", store_uri, "--default-artifact-root", artifact_root.as_uri(),
            "--host", host, "--port", str(port), "--workers", "1"]  # fmt: skip


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
            last = tracking_from_output(output_dir)
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
        if last:  # the lineage run's page in the "Model training" view: its description is the generation table
            url = run_url(url, last.get("experiment_id", ""), last["lineage_id"])
        console.print(f"MLflow UI over {store}\nlineage: {url}\nCtrl-C stops it.", soft_wrap=True, highlight=False)
        # MLflow 3.x servers start a job runner with 7 huey consumers by default; a lineage UI needs none, and
        # they hold up Ctrl-C (the server waited >30 s for them on 2 busy cores).
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        # `mlflow server` serves from a child (uvicorn) that holds the port: the server gets a process group of its
        # own, and stopping signals the whole group, so no child is left listening when the parent has gone.
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)

        def stop_on_sigterm(signum: int, frame: object) -> None:
            raise KeyboardInterrupt  # SIGTERM stops the server as Ctrl-C does (not leave it on the port)

        signal.signal(signal.SIGTERM, stop_on_sigterm)
        try:
            proc.wait()
        except KeyboardInterrupt:
            _signal_group(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        finally:
            _signal_group(proc.pid, signal.SIGKILL)  # whatever of the group outlived its parent or the 30 s
            proc.wait()
        console.print("MLflow UI stopped.")
