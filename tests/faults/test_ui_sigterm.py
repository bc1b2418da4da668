"""`mgkd ui` stops its `mlflow server` child on SIGTERM as on Ctrl-C: the port is free afterwards."""

from __future__ import annotations

import signal
import socket

from ..helpers import free_port, mgkd_cli, wait_for_health


def test_sigterm_stops_the_server_and_frees_the_port(tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").create_experiment("sigterm")
    port = free_port()
    proc = mgkd_cli("ui", "--store", str(db), "--port", str(port))
    try:
        wait_for_health(f"http://127.0.0.1:{port}", proc, timeout=180)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    except BaseException:
        proc.kill()
        raise
    assert "MLflow UI stopped." in out
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises if the server child were still listening
