"""`mgkd ui` stops its `mlflow server` child on SIGTERM as on Ctrl-C: the port is free afterwards."""

from __future__ import annotations

import signal
import socket

import pytest

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
    # nothing listens on the port: neither the server nor its uvicorn child (a process of its own)
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))
    with socket.socket() as s:
        # a new server can take the port, binding as servers do (SO_REUSEADDR: the health checks' closed
        # connections may wait in TIME_WAIT on it, which blocks a plain bind but is no listener)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
