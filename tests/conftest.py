"""Fixtures for every layer: a tiny experiment on the real built-in corpus, one Ray and one tracking server per session.

The layers: tests/unit (no Ray, no MLflow server, no subprocess: `pytest tests/unit`, the quick loop),
tests/integration (real Ray, MLflow, the CLI in a child process) and tests/faults (kills, Ctrl-C, resume).
`pytest` runs all three. `ray_session` and `server` start only when an integration or fault test asks for them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The base every test's config starts from (build_config without a preset, `mgkd run` without --preset, in this
# process and in the CLI children it starts): the same-size, soft-label chain whose arithmetic the tests pin.
# The demo preset (a compression chain with controls) is tested by name, in tests that ask for it.
os.environ["MGKD_PRESET"] = "born_again_warm"

from mgkd.config import ExperimentConfig  # noqa: E402

# Re-exported: test modules import these from tests.helpers (older ones from here).
from .helpers import (  # noqa: E402, F401
    QUIET_MLFLOW_SERVER,
    TINY,
    free_port,
    mgkd_cli,
    stop,
    teacher_then_student,
    tiny_config,
    wait_for_health,
)

# Fixtures shared by two layers of one topic (a module's fixtures reach every test module this way).
pytest_plugins = ["tests.helpers.external_teacher", "tests.helpers.loss_registry", "tests.helpers.ray_train"]


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> ExperimentConfig:
    return tiny_config(tmp_path, "generations.count=1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory):
    from mgkd.tasks.translation import prepare

    return prepare(tiny_config(tmp_path_factory.mktemp("tiny-data")))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one torch thread; on 2 shared cores more threads only wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (ray.init takes ~9 s); runners reuse it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A real tracking server: sqlite backend, artifacts served by the server, 127.0.0.1, a free port.

    One per session (it takes ~30 s to start on 2 shared cores): test_mlflow_server and test_submit share it,
    each in its own experiment.
    """
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]  # fmt: skip
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **QUIET_MLFLOW_SERVER})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc)
        yield url, root
    finally:
        stop(proc)
        log.close()
