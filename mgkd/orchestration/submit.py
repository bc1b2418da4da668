"""Cluster submission: a lineage as a Ray job, through the Jobs API of the cluster's dashboard (HEAD:8265).

`mgkd submit` builds and validates the config here, so a bad config never
reaches the cluster; stages a small working directory (the `mgkd` package, its
presets, the resolved config, and corpus files that exist on this machine)
and submits `python -m mgkd.cli run --config mgkd-job.yaml` as the job's
entrypoint. Inside the job `mgkd run` connects to its cluster through the
RAY_ADDRESS that Ray sets for every job, exactly like a run started on the
head node.

What stays on the cluster: the job writes its output_dir (caches, checkpoints)
on the filesystem of the node running the job's driver; a relative output_dir
is taken under that node's home folder, because the job's own working
directory is Ray's temporary copy in the session folder, garbage-collected
after the job. What comes back: the lineage, recorded in
an MLflow tracking server that the cluster can reach (a local sqlite store
would stay on the cluster's disk, so submitted jobs require a server).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import socket
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

import mgkd
from mgkd.config import ExperimentConfig
from mgkd.errors import MgkdError

JOB_CONFIG = "mgkd-job.yaml"  # the resolved config, at the root of the job's working directory
CORPUS_FOLDER = "corpus"  # corpus files shipped with the job, next to the config
# Ray uploads a working directory through GCS, bounded by its gRPC message size (512 MiB in Ray 2.60);
# a corpus that big belongs on the cluster's own disk, not in every job.
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


@dataclass
class SubmittedJob:
    job_id: str
    address: str
    entrypoint: str
    # Where the job writes output_dir, as the job's shell sees it ("$HOME"/... for a relative one).
    output_dir: str
    upload_bytes: int
    warnings: list[str] = field(default_factory=list)


def dashboard_address(address: str | None) -> str:
    """The Jobs API URL: --address, else RAY_API_SERVER_ADDRESS / RAY_ADDRESS (as `ray job submit` reads them)."""
    given = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not given:
        raise MgkdError(
            "mgkd submit needs the cluster's dashboard address: --address http://HEAD:8265 (or RAY_ADDRESS); "
            "the head node serves it after `ray start --head --dashboard-host 0.0.0.0`"
        )
    if given.startswith("ray://") or given == "auto":
        raise MgkdError(
            f"address {given!r} is not the Jobs API: give the dashboard's http://HEAD:8265 (`ray start --head` "
            "prints it); ray:// (Ray Client) and GCS addresses are for `mgkd run --ray-address`"
        )
    url = given if "://" in given else f"http://{given}"
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise MgkdError(f"address {given!r} must look like http://HEAD:8265 (the Ray dashboard of the cluster)")
    return url.rstrip("/")


def check_dashboard_reachable(address: str, timeout: float = 5) -> None:
    """Fail in seconds with the fix when nothing listens at the dashboard's host and port."""
    parsed = urllib.parse.urlparse(address)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise MgkdError(
            f"cannot reach the Ray dashboard at {address}: {e}. Start the cluster with `ray start --head "
            "--dashboard-host 0.0.0.0` (the Jobs API listens on the dashboard port, 8265 by default) or fix "
            "--address / RAY_ADDRESS"
        ) from None


def check_job_tracking_uri(uri: str | None, address: str) -> list[str]:
    """A submitted lineage logs where the cluster can reach: a tracking server, never a local store.

    Returns warnings for URIs that are allowed but look wrong from here.
    """
    fix = (
        "give --tracking-uri http://HOST:5000 of an `mlflow server --host 0.0.0.0 --port 5000` "
        "that the cluster can reach"
    )
    if not uri:
        raise MgkdError(
            "a submitted lineage needs an MLflow tracking server: the default sqlite store under output_dir would "
            f"stay on the cluster's disk; {fix} (or set MLFLOW_TRACKING_URI)"
        )
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file", "sqlite"):
        raise MgkdError(
            f"tracking URI {uri!r} is a local store: inside the job it names a file on a cluster node, not here; {fix}"
        )
    warnings = []
    if scheme in ("http", "https"):
        tracking_host = urllib.parse.urlparse(uri).hostname
        dashboard_host = urllib.parse.urlparse(address).hostname
        if tracking_host in _LOCAL_HOSTS and dashboard_host not in _LOCAL_HOSTS:
            warnings.append(
                f"tracking URI {uri} names localhost: inside the job that is the cluster node running it, not this "
                "machine; give an address the cluster can reach"
            )
        from mgkd.lineage.tracking import check_tracking_uri

        try:
            check_tracking_uri(uri)
        except MgkdError as e:
            warnings.append(f"{e} (checked from this machine; the job needs it reachable from the cluster)")
    return warnings


def stage_working_dir(cfg: ExperimentConfig, folder: Path) -> tuple[ExperimentConfig, list[str]]:
    """Fill `folder` with what the job uploads: the mgkd package, its presets, corpus files, the config.

    Nothing else goes: no caches, run outputs, virtual environments or git history. Returns the config as
    the job reads it (corpus paths relative to the config file) and warnings.
    """
    warnings = []
    package = Path(mgkd.__file__).resolve().parent
    shutil.copytree(package, folder / "mgkd", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    # In a checkout the presets live in configs/ (installed as mgkd.configs); the job's copy keeps them in reach.
    presets = folder / "mgkd" / "configs"
    presets.mkdir(exist_ok=True)
    for entry in resources.files("mgkd.configs").iterdir():
        if entry.name.endswith(".yaml"):
            (presets / entry.name).write_text(entry.read_text(encoding="utf-8"), encoding="utf-8")

    corpus = cfg.corpus.model_copy()
    for key in ("path", "source_path", "target_path"):
        path = getattr(corpus, key)
        if path is None:
            continue
        if not Path(path).is_file():
            warnings.append(f"corpus.{key} {path} is not on this machine: the job reads it from the cluster's disk")
            continue
        target = folder / CORPUS_FOLDER / f"{key}-{Path(path).name}"
        target.parent.mkdir(exist_ok=True)
        shutil.copy2(path, target)
        setattr(corpus, key, Path(CORPUS_FOLDER) / target.name)  # relative to the config file: load_raw resolves it
    job_cfg = cfg.model_copy(update={"corpus": corpus})
    if job_cfg.generations.teacher.external is not None:
        warnings.append(
            f"generations.teacher.external.path {job_cfg.generations.teacher.external.path} is read on the cluster: "
            "the folder must exist there at the same path"
        )
    data = job_cfg.model_dump(mode="json")
    (folder / JOB_CONFIG).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    size = folder_bytes(folder)
    if size > MAX_UPLOAD_BYTES:
        raise MgkdError(
            f"the job's working directory would upload {size / 2**20:.0f} MiB (limit {MAX_UPLOAD_BYTES / 2**20:.0f} "
            "MiB), mostly the corpus: copy the corpus to the cluster's disk and give corpus paths there"
        )
    return job_cfg, warnings


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def job_entrypoint(cfg: ExperimentConfig, force: bool) -> tuple[str, str]:
    """(entrypoint shell command, output_dir as the job sees it).

    `python -m mgkd.cli` runs the uploaded package (the working directory is first on sys.path), whatever
    mgkd version the cluster has installed. A relative output_dir goes under the job's $HOME: the working
    directory is Ray's temporary copy, garbage-collected after the job.
    """
    output_dir = str(cfg.output_dir)
    if Path(output_dir).is_absolute():
        argument, shown = shlex.quote(output_dir), output_dir
    else:
        argument, shown = '"$HOME"/' + shlex.quote(output_dir), f"$HOME/{output_dir}"
    command = f"python -m mgkd.cli run --config {JOB_CONFIG} --output-dir {argument}"
    if force:
        command += " --force"
    return command, shown


def _jobs_client(address: str):
    """A JobSubmissionClient, its errors turned into ours (auth, unreachable, not a dashboard)."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError/RuntimeError/ValueError by cause
        raise _jobs_error(address, e) from None


def _jobs_error(address: str, e: Exception) -> MgkdError:
    from ray.exceptions import AuthenticationError

    text = str(e)
    if isinstance(e, AuthenticationError):  # Ray's client raises it for HTTP 401 (no token) and 403 (wrong one)
        return MgkdError(
            f"the Ray cluster at {address} requires a token: set RAY_AUTH_MODE=token and the cluster's token in "
            "RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token (`ray get-auth-token` "
            f"on the head prints it) ({text.splitlines()[0][:200]})"
        )
    return MgkdError(
        f"the Ray Jobs API at {address} failed: {text.splitlines()[0][:300] if text else type(e).__name__}. "
        "Check that it is the dashboard of a running cluster (`ray start --head`, port 8265) with ray[default] "
        "installed on the head"
    )


def submit_lineage(cfg: ExperimentConfig, address: str | None, *, force: bool = False,
                   env: dict[str, str] | None = None) -> SubmittedJob:  # fmt: skip
    """Submit the lineage `cfg` describes as a Ray job; returns when the cluster has accepted it."""
    import tempfile

    from mgkd.generations import build_schedule

    build_schedule(cfg)  # every generation checked here, before anything reaches the cluster
    url = dashboard_address(address)
    warnings = check_job_tracking_uri(cfg.tracking.uri, url)
    check_dashboard_reachable(url)
    client = _jobs_client(url)

    job_id = f"mgkd-{cfg.name}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="mgkd-job-") as tmp:
        folder = Path(tmp)
        job_cfg, staged_warnings = stage_working_dir(cfg, folder)
        warnings += staged_warnings
        entrypoint, output_dir = job_entrypoint(job_cfg, force)
        runtime_env = {
            "working_dir": str(folder),
            "env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1", **(env or {})},
        }
        size = folder_bytes(folder)
        try:
            client.submit_job(
                entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env,
                metadata={"mgkd.config_name": cfg.name, "mgkd.experiment": cfg.experiment_name},
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001
            raise _jobs_error(url, e) from None
    return SubmittedJob(job_id, url, entrypoint, output_dir, size, warnings)


def follow_job(address: str, job_id: str, write: Callable[[str], None], poll_s: float = 1.0) -> str:
    """Stream the job's logs until it ends; returns its final status (SUCCEEDED, FAILED or STOPPED)."""
    client = _jobs_client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
        # The log stream closes when the job ends; the status may lag it by a moment.
        while (status := str(client.get_job_status(job_id).value)) not in TERMINAL:
            time.sleep(poll_s)
    except Exception as e:  # noqa: BLE001 - the dashboard went away or refused us while following
        raise _jobs_error(address, e) from None
    return status


__all__ = ["SubmittedJob", "follow_job", "submit_lineage"]
