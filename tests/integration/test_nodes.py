"""A real two-node Ray cluster on this machine, whose second node cannot see the driver's output folder: a lineage
trained there completes, so nothing it needs crossed the nodes by path (issue 19).

The head gets 1 CPU; the second node 2 CPUs and the custom resource `node2`, and is started inside its own mount
namespace (`unshare --mount --map-root-user`) with a tmpfs over the test's output folder: a worker there that
read or wrote the driver's folder by path would see an empty folder of its own. The driver is `mgkd run` in a
child process (the session's own Ray, tests/conftest.py, stays untouched); the cluster's processes are stopped by
process group and by their temporary folder in a finalizer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mgkd.files import sha256_file
from mgkd.lineage.tracking import mlflow_client, read_lineage

from ..helpers import TINY, free_port, mgkd_cli


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "true"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _unshare_works(), reason="needs util-linux unshare with user namespaces")


def _ours(base: Path) -> list[int]:
    """Processes whose command line names this cluster's folder (Ray's own, and its workers'), by id."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(base).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _stop(procs: list[subprocess.Popen], base: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        for pid in _ours(base):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (_ours(base) or any(p.poll() is None for p in procs)):
            time.sleep(0.3)
        if not _ours(base) and all(p.poll() is not None for p in procs):
            return


@pytest.fixture
def two_nodes():
    """(address, output folder hidden from node 2, storage both reach); the cluster is stopped afterwards."""
    base = Path(tempfile.mkdtemp(prefix="mgkd-nodes-", dir="/tmp"))  # short: Ray's socket paths are limited
    out, storage = base / "out", base / "storage"
    out.mkdir()
    storage.mkdir()
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    ray = str(Path(sys.executable).with_name("ray"))
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    logs = [open(base / "head.log", "w"), open(base / "node2.log", "w")]  # noqa: SIM115 - closed below
    try:
        procs.append(subprocess.Popen(
            [ray, "start", "--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={base / 'head'}",
             "--include-dashboard=false", *common],
            env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True,
        ))  # fmt: skip
        _wait(lambda: _status(ray, address, env) is not None, 90, "the head did not start", base / "head.log")
        # Node 2 sees its own empty tmpfs where the driver's output folder is.
        node2 = (f'mount -t tmpfs tmpfs "$1" && exec "$2" start --address={address} --num-cpus=2 '
                 f"--resources='{{\"node2\": 1}}' --temp-dir=\"$3\" {' '.join(common)}")  # fmt: skip
        procs.append(subprocess.Popen(
            ["unshare", "--mount", "--map-root-user", "sh", "-c", node2, "sh", str(out), ray, str(base / "node2")],
            env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True,
        ))  # fmt: skip
        _wait(lambda: "node2" in (_status(ray, address, env) or ""), 120, "node 2 did not join", base / "node2.log")
        yield address, out, storage
    finally:
        _stop(procs, base)
        for log in logs:
            log.close()
        left = _ours(base)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"cluster processes left behind: {left}"


def _status(ray: str, address: str, env: dict) -> str | None:
    try:
        done = subprocess.run([ray, "status", f"--address={address}"], env=env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    return done.stdout if done.returncode == 0 else None


def _wait(ready, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(1)
    pytest.fail(f"{what} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def test_a_lineage_trains_on_a_node_that_cannot_see_the_drivers_folder(two_nodes, tmp_path):
    address, out, storage = two_nodes
    sets = [*TINY, "generations.count=1", f"ray.address={address}", "ray.resources_per_worker={node2: 1}",
            f"ray.storage_path={storage}"]  # fmt: skip
    # The cluster's auth mode: once the session's own Ray is up (ray_session), ray.init has set RAY_AUTH_MODE=token
    # in this process's environment, and a driver started with it cannot run actors on this cluster (auth disabled).
    proc = mgkd_cli("run", *[x for s in sets for x in ("--set", s)], "--output-dir", str(out),
                    env={"RAY_AUTH_MODE": "disabled"})  # fmt: skip
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log
    assert "ray.storage_path is not set" not in log

    uri = f"sqlite:///{out / 'mlflow.db'}"
    info = read_lineage(uri, None, "demo")
    assert info["status"] == "FINISHED" and [g["status"] for g in info["generations"]] == ["FINISHED", "FINISHED"]
    client = mlflow_client(uri)
    lineage_dir = out / "lineages" / info["lineage_id"]
    for g in info["generations"]:
        folder = lineage_dir / f"gen-{g['generation']}"
        sha = sha256_file(folder / "checkpoint.pt")
        assert sha == g["checkpoint_sha256"]
        logged = client.download_artifacts(g["run_id"], "checkpoint/checkpoint.pt", str(tmp_path / g["run_id"]))
        assert sha256_file(Path(logged)) == sha
        stored = sorted((storage / f"{info['lineage_id']}-gen-{g['generation']}").glob("checkpoint_*/checkpoint.pt"))
        assert stored and sha256_file(stored[-1]) == sha  # the delivered checkpoint in Ray Train's storage
        delivery = json.loads((folder / "delivery.json").read_text())
        assert "node2" in delivery["node_resources"], delivery  # worker 0 trained on node 2
        assert delivery["files"]["checkpoint.pt"] == sha
        assert (folder / "test_translations.tsv").is_file()
    # generation 1 learned from generation 0's checkpoint, which reached node 2 as bytes
    assert info["generations"][1]["teacher_checkpoint_sha256"] == info["generations"][0]["checkpoint_sha256"]
