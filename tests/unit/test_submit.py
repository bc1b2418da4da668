"""`mgkd submit` against a real Ray head (`ray start --head`, Jobs API) and a real `mlflow server`, on 127.0.0.1.

Each head runs in its own temp dir and session, on free ports, and is stopped by killing exactly its own
processes: never `ray stop`, which stops every Ray on the machine (other tests' and other people's).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from mgkd.config import load_raw, validate
from mgkd.errors import MgkdError
from mgkd.orchestration.submit import JOB_CONFIG, job_entrypoint, stage_working_dir, submit_lineage

from ..helpers import free_port, tiny_config

# --- what never reaches a cluster -------------------------------------------------------------------------


@pytest.mark.parametrize("uri", [None, "sqlite:///tmp/mlflow.db", "/tmp/mlruns", "file:///tmp/mlruns"])
def test_a_local_tracking_store_is_refused(tmp_path, uri):
    cfg = tiny_config(tmp_path, *([f"tracking.uri={uri}"] if uri else []))
    with pytest.raises(MgkdError, match=r"--tracking-uri http://HOST:5000 of an `mlflow server"):
        submit_lineage(cfg, "http://127.0.0.1:8265")


def test_an_unreachable_dashboard_fails_in_seconds_naming_the_fix(tmp_path):
    cfg = tiny_config(tmp_path, "tracking.uri=http://127.0.0.1:5000")
    t0 = time.monotonic()
    with pytest.raises(MgkdError, match=r"ray start --head.*8265"):
        submit_lineage(cfg, f"http://127.0.0.1:{free_port()}")
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("address", ["ray://10.0.0.5:10001", "auto", "ftp://head:8265"])
def test_an_address_that_is_not_the_jobs_api_is_refused(tmp_path, address):
    cfg = tiny_config(tmp_path, "tracking.uri=http://127.0.0.1:5000")
    with pytest.raises(MgkdError, match="http://HEAD:8265"):
        submit_lineage(cfg, address)


def test_a_missing_address_names_the_option(tmp_path, monkeypatch):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MgkdError, match="--address http://HEAD:8265"):
        submit_lineage(tiny_config(tmp_path, "tracking.uri=http://127.0.0.1:5000"), None)


def test_the_job_uploads_the_package_and_config_only(tmp_path):
    """The staged working dir: mgkd (no caches), presets, the config, and a local corpus file, nothing else."""
    corpus = tmp_path / "pairs.tsv"
    corpus.write_text("".join(f"hello {i}\tbonjour {i}\n" for i in range(50)), encoding="utf-8")
    cfg = tiny_config(tmp_path / "out", "corpus.kind=tsv", f"corpus.path={corpus}", "tracking.uri=http://h:5000")
    stage = tmp_path / "stage"
    stage.mkdir()
    job_cfg, warnings = stage_working_dir(cfg, stage)
    assert warnings == []
    top = {p.name for p in stage.iterdir()}
    assert top == {"mgkd", JOB_CONFIG, "corpus"}
    assert not list(stage.rglob("__pycache__")) and not list(stage.rglob("*.pyc"))
    # `python -m mgkd.cli` (the job's entrypoint) runs the uploaded mgkd/cli/__main__.py
    assert (stage / "mgkd" / "cli" / "__main__.py").is_file() and (stage / "mgkd" / "configs" / "demo.yaml").is_file()
    assert sum(p.stat().st_size for p in stage.rglob("*") if p.is_file()) < 2 * 2**20
    # the job reads the config as `mgkd run --config` does: corpus relative to the config file, in the upload
    cwd = os.getcwd()
    os.chdir(stage)
    try:
        read_back = validate(load_raw(Path(JOB_CONFIG)))
    finally:
        os.chdir(cwd)
    assert read_back.corpus.path == (stage / "corpus" / "path-pairs.tsv").resolve()
    assert read_back.corpus.path.read_text(encoding="utf-8") == corpus.read_text(encoding="utf-8")
    assert read_back.model_dump(exclude={"corpus"}) == cfg.model_dump(exclude={"corpus"})
    raw = yaml.safe_load((stage / JOB_CONFIG).read_text(encoding="utf-8"))
    assert raw["tracking"]["uri"] == "http://h:5000"
    assert job_cfg.corpus.path == Path("corpus/path-pairs.tsv")


def test_the_entrypoint_runs_the_uploaded_package_and_keeps_outputs_off_the_working_dir(tmp_path):
    cfg = tiny_config(tmp_path)
    command, where = job_entrypoint(cfg.model_copy(update={"output_dir": Path("runs/x")}), force=False)
    assert command == f'python -m mgkd.cli run --config {JOB_CONFIG} --output-dir "$HOME"/runs/x'
    assert where == "$HOME/runs/x"
    command, where = job_entrypoint(cfg.model_copy(update={"output_dir": Path("/data/my runs")}), force=True)
    assert command.endswith("--output-dir '/data/my runs' --force") and where == "/data/my runs"
