"""The lineage record against a real `mlflow server` over HTTP, `mgkd ui`, and the UI in a real browser."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from mgkd.lineage.tracking import mlflow_client, read_lineage
from mgkd.orchestration.controller import run_lineage

from ..helpers import QUIET_MLFLOW_SERVER, free_port, stop, tiny_config, wait_for_health


def test_lineage_survives_a_tracking_server_restart(tmp_path):
    """The server goes down mid-generation and comes back on the same port: MLflow's client retries
    (with backoff) and the lineage completes with every generation recorded."""
    import threading

    root = tmp_path / "srv"
    root.mkdir()
    port = free_port()
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]  # fmt: skip
    env = {**os.environ, **QUIET_MLFLOW_SERVER}
    url = f"http://127.0.0.1:{port}"
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)]
    wait_for_health(url, procs[0])
    restarted = threading.Event()

    def restart_during_generation_1() -> None:
        client = mlflow_client(url)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                runs = client.search_runs(["1"], filter_string="tags.`mgkd.generation` = '1'")
            except Exception:  # noqa: BLE001
                runs = []
            if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
                stop(procs[0])  # down in the middle of generation 1's training
                time.sleep(2)
                procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env))
                restarted.set()
                return
            time.sleep(0.3)

    watcher = threading.Thread(target=restart_during_generation_1, daemon=True)
    watcher.start()
    try:
        cfg = tiny_config(tmp_path / "out", "generations.count=2", f"tracking.uri={url}", "ray.enabled=false",
                          "generations.student.train={max_epochs: 6}")  # fmt: skip
        outcome = run_lineage(cfg, Console(quiet=True))
        watcher.join(timeout=5)
        assert restarted.is_set(), "the server was not restarted during generation 1"
        info = read_lineage(url, outcome.lineage_id)
        assert info["status"] == "FINISHED"
        assert [g["status"] for g in info["generations"]] == ["FINISHED"] * 3
        assert all("test_bleu" in g["metrics"] for g in info["generations"])
    finally:
        for p in procs:
            stop(p)
