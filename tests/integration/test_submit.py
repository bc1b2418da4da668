"""`mgkd submit` against a real Ray head (`ray start --head`, Jobs API) and a real `mlflow server`, on 127.0.0.1.

Each head runs in its own temp dir and session, on free ports, and is stopped by killing exactly its own
processes: never `ray stop`, which stops every Ray on the machine (other tests' and other people's).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from mgkd.lineage.tracking import read_lineage

from ..helpers import TINY, free_port

HEAD_PORTS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
              "object-manager-port")  # fmt: skip
# The environment a head and `mgkd submit` share: this Python's bin first (the job's `python`), no stray
# cluster address or token from the caller.
_DROP = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
         "PYTHONPATH", "MLFLOW_TRACKING_URI")  # fmt: skip


def cluster_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _processes_of(session: int, temp_dir: str) -> list[int]:
    """The head's processes: its session, and job drivers (own session) whose cwd is in the head's temp dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) == session or os.readlink(entry / "cwd").startswith(temp_dir + os.sep):
                pids.append(pid)
        except OSError:
            continue
    return pids


def stop_head(proc: subprocess.Popen, temp_dir: str) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        for pid in _processes_of(proc.pid, temp_dir):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _processes_of(proc.pid, temp_dir):
            time.sleep(0.3)
    proc.wait(timeout=10)
    shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass
class Head:
    proc: subprocess.Popen
    url: str  # the dashboard: the Jobs API
    temp_dir: str
    log: IO[str]
    env: dict[str, str]

    def stop(self) -> None:
        stop_head(self.proc, self.temp_dir)
        self.log.close()


def launch_head(**env: str) -> Head:
    """`ray start --head --block` on 127.0.0.1, free ports, its own temp dir and session; not yet waited for."""
    # Ray's unix sockets live under the temp dir: keep its path short.
    temp_dir = tempfile.mkdtemp(prefix="mgkd-ray-", dir="/tmp")
    ports = {name: free_port() for name in HEAD_PORTS}
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
           "--num-cpus", "2", "--temp-dir", temp_dir, "--disable-usage-stats",
           *[a for name, port in ports.items() for a in (f"--{name}", str(port))]]  # fmt: skip
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=cluster_env(**env), start_new_session=True)
    return Head(proc, f"http://127.0.0.1:{ports['dashboard-port']}", temp_dir, log, env)


def wait_for_head(head: Head, timeout: float = 120) -> None:
    proc, url, temp_dir = head.proc, head.url, head.temp_dir
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}: {(Path(temp_dir) / 'head.log').read_text()}")
            # The job server answers with the dashboard; a token cluster wants the token here too.
            token = head.env.get("RAY_AUTH_TOKEN")
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                with urllib.request.urlopen(urllib.request.Request(url + "/api/version", headers=headers), timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Ray dashboard {url} did not come up in {timeout} s") from None
                time.sleep(0.5)
    except BaseException:
        head.stop()
        raise


@pytest.fixture(scope="module")
def cluster(request):
    """(dashboard URL, tracking URL): a Ray head without token auth, and the session's tracking server."""
    head = launch_head(RAY_AUTH_MODE="disabled")
    try:
        url, _ = request.getfixturevalue("server")  # the head starts meanwhile if the server is not up yet
        wait_for_head(head)
        yield head.url, url
    finally:
        head.stop()


def mgkd_submit(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """The real CLI in a fresh process (its Ray auth mode comes from `env` alone), from the package's root."""
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "mgkd.cli", "submit", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def tiny_sets(*extra: str) -> list[str]:
    return [a for s in [*TINY, *extra] for a in ("--set", s)]


def test_submit_follows_a_two_generation_lineage_into_the_tracking_server(cluster, tmp_path):
    ray_head, url = cluster
    out = tmp_path / "cluster-out"
    t0 = time.monotonic()
    done = mgkd_submit("--address", ray_head, "--generations", "2", *tiny_sets("tracking.experiment=submitted"),
                       "--output-dir", str(out), "--tracking-uri", url, "--follow",
                       env=cluster_env(RAY_AUTH_MODE="disabled"))  # fmt: skip
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.split("submitted job ", 1)[1].split()[0]
    assert job_id.startswith("mgkd-demo-")
    assert f"job {job_id}: SUCCEEDED" in done.stdout
    assert f"ray job stop {job_id} --address {ray_head}" in done.stdout
    # the job's own log came through --follow: the lineage table printed by `mgkd run` on the cluster
    assert "runner: Ray" in done.stdout and "cluster" in done.stdout, done.stdout

    # the lineage, read back from the server the job logged to
    info = read_lineage(url, None, "submitted")
    assert info["status"] == "FINISHED"
    gens = info["generations"]
    assert [g["generation"] for g in gens] == [0, 1, 2]
    assert all(g["status"] == "FINISHED" and "test_bleu" in g["metrics"] for g in gens)
    for prev, cur in zip(gens, gens[1:]):
        assert cur["teacher_run_id"] == prev["run_id"]
        assert cur["teacher_checkpoint_sha256"] == prev["checkpoint_sha256"]
    # outputs stay where the config put them on the cluster (here: the same machine)
    assert (out / "last_lineage.json").is_file()
    assert (out / "lineages" / info["lineage_id"] / "gen-2" / "checkpoint.pt").is_file()
    print(f"submit --follow of a 2-generation lineage: {took:.1f} s")


def test_a_job_that_fails_on_the_cluster_fails_follow(cluster, tmp_path):
    """A config that is valid here but whose corpus is not on the cluster: the job FAILS, --follow exits 1."""
    ray_head, url = cluster
    env = cluster_env(RAY_AUTH_MODE="disabled")
    missing = "/nonexistent/mgkd-corpus.tsv"
    args = ("--address", ray_head, "-g", "1", *tiny_sets("corpus.kind=tsv", f"corpus.path={missing}"),
            "--output-dir", str(tmp_path / "out"), "--tracking-uri", url)  # fmt: skip
    done = mgkd_submit(*args, "--follow", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"corpus.path {missing} is not on this machine" in done.stderr
    assert ": FAILED" in done.stdout and "mgkd-corpus.tsv" in done.stdout


@pytest.mark.slow  # another job on the cluster: ~60 s on 2 shared cores
def test_ray_job_submit_runs_mgkd_run_from_the_checkout(cluster, tmp_path):
    """The other way in (README): `ray job submit --working-dir . -- python -m mgkd.cli run ...`."""
    ray_head, url = cluster
    root = Path(__file__).resolve().parents[2]
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    done = subprocess.run(
        [ray_bin, "job", "submit", "--address", ray_head, "--working-dir", str(root), "--", "python", "-m",
         "mgkd.cli", "run", "-g", "1", *tiny_sets("tracking.experiment=ray-job-submit"), "--output-dir",
         str(tmp_path / "out"), "--tracking-uri", url],
        cwd=root, env=cluster_env(RAY_AUTH_MODE="disabled"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout + done.stderr
    info = read_lineage(url, None, "ray-job-submit")
    assert info["status"] == "FINISHED" and [g["generation"] for g in info["generations"]] == [0, 1]


@pytest.mark.slow  # a second head and two more CLI runs: ~40 s on 2 shared cores
def test_a_token_cluster_refuses_a_submit_without_its_token_and_accepts_one_with_it(server, tmp_path):
    """Ray 2.60 token auth: the client sends `Authorization: Bearer` when RAY_AUTH_MODE=token and a token is set."""
    url, _ = server
    token = "mgkd-test-" + os.urandom(16).hex()
    head = launch_head(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    address = head.url
    try:
        wait_for_head(head)
        args = ("--address", address, "-g", "1", *tiny_sets("tracking.experiment=token-cluster"),
                "--output-dir", str(tmp_path / "out"),
                "--tracking-uri", url)  # fmt: skip
        refused = mgkd_submit(*args, env=cluster_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="wrong-token"))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "requires a token" in refused.stderr and "RAY_AUTH_TOKEN" in refused.stderr
        accepted = mgkd_submit(*args, env=cluster_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        job_id = accepted.stdout.split("submitted job ", 1)[1].split()[0]
        assert job_id.startswith("mgkd-demo-")
    finally:
        head.stop()


def test_a_bad_config_stops_before_the_cluster_is_contacted(tmp_path):
    # the address is unreachable: the config's error comes first
    env = cluster_env(RAY_AUTH_MODE="disabled")
    done = mgkd_submit("--address", f"http://127.0.0.1:{free_port()}", "--set", "train.lr=-1",
                       "--tracking-uri", "http://127.0.0.1:5000", env=env, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "invalid config: train.lr" in done.stderr and "Ray dashboard" not in done.stderr
    schedule = mgkd_submit("--address", f"http://127.0.0.1:{free_port()}", "--set",
                           "generations.per_generation={0: {}}", "--tracking-uri", "http://127.0.0.1:5000",
                           env=env, timeout=60)  # fmt: skip
    assert schedule.returncode == 2 and "per_generation" in schedule.stderr
