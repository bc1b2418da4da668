"""End to end: a tiny 2-generation lineage through real Ray and real MLflow, read back from MLflow."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mgkd.cli import app
from mgkd.generations.checkpoint import sha256_file
from mgkd.lineage.tracking import mlflow_client, read_lineage
from mgkd.orchestration.controller import run_lineage

from ..helpers import TINY, tiny_config


@pytest.fixture(scope="module")
def lineage(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("lineage")
    cfg = tiny_config(tmp, "generations.count=2")
    outcome = run_lineage(cfg, Console(quiet=True))
    return cfg, outcome, read_lineage(outcome.tracking_uri, outcome.lineage_id)


def test_lineage_is_recorded_generation_by_generation(lineage):
    cfg, outcome, info = lineage
    assert outcome.tracking_uri.startswith("sqlite:///") and info["status"] == "FINISHED"
    gens = info["generations"]
    assert [g["generation"] for g in gens] == [0, 1, 2]
    assert [g["run_id"] for g in gens] == outcome.run_ids
    assert all(g["status"] == "FINISHED" for g in gens)
    assert gens[0]["teacher_run_id"] is None
    for prev, cur in zip(gens, gens[1:]):
        # generation k's teacher is exactly generation k-1's selected checkpoint
        assert cur["teacher_run_id"] == prev["run_id"]
        assert cur["teacher_checkpoint_sha256"] == prev["checkpoint_sha256"]
    for g, r in zip(gens, outcome.results):
        assert g["checkpoint_sha256"] == r.checkpoint_sha256 == sha256_file(Path(r.checkpoint))
        assert g["arch"] == "transformer" and g["params"]["generation"] == str(g["generation"])
        for key in ("test_bleu", "test_chrf", "best_valid_loss", "train_time_s", "parameters"):
            assert key in g["metrics"]
        assert g["metrics"]["test_chrf"] > 0
        # size on disk and test decode speed, recorded beside the quality
        assert g["metrics"]["model_size_bytes"] == Path(r.checkpoint).stat().st_size > 0
        assert g["metrics"]["decode_sentences_per_s"] > 0


def test_artifacts_and_metric_history_are_in_mlflow(lineage, tmp_path):
    cfg, outcome, info = lineage
    client = mlflow_client(outcome.tracking_uri)
    for g in info["generations"]:
        paths = {a.path for a in client.list_artifacts(g["run_id"])} | {
            a.path for d in ("checkpoint", "tokenizer") for a in client.list_artifacts(g["run_id"], d)
        }
        assert {"checkpoint/checkpoint.pt", "tokenizer/spm.model", "test_translations.tsv"} <= paths
        # the logged checkpoint is byte-identical to the one the next generation learned from
        local = client.download_artifacts(g["run_id"], "checkpoint/checkpoint.pt", str(tmp_path))
        assert sha256_file(Path(local)) == g["checkpoint_sha256"]
        history = client.get_metric_history(g["run_id"], "loss")
        assert len(history) >= 2 and [m.step for m in history] == sorted(m.step for m in history)
        assert client.get_metric_history(g["run_id"], "valid_loss")
    assert "loss.soft_label" in info["generations"][1]["metrics"]
    assert "loss.soft_label" not in info["generations"][0]["metrics"]
    parent = {a.path for a in client.list_artifacts(info["lineage_id"])}
    assert {"config.yaml", "tokenizer", "data"} <= parent
    assert info["tags"]["mgkd.data_hash"]


def test_lineage_command_reads_it_back(lineage):
    cfg, outcome, info = lineage
    result = CliRunner().invoke(app, ["lineage", "--output-dir", str(cfg.output_dir), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["lineage_id"] == outcome.lineage_id
    assert [g["run_id"] for g in shown["generations"]] == outcome.run_ids
    assert all(g["metrics"]["model_size_bytes"] > 0 for g in shown["generations"])
    table = CliRunner().invoke(app, ["lineage", outcome.lineage_id, "--tracking-uri", outcome.tracking_uri])
    assert table.exit_code == 0 and outcome.run_ids[0] in table.stdout
    text = " ".join(table.stdout.split())
    for g in info["generations"]:
        m = g["metrics"]
        assert f"{m['model_size_bytes'] / 1e6:.2f} MB on disk {m['decode_sentences_per_s']:.1f} sent/s" in text


def test_cli_run_through_ray(tmp_path, ray_session):
    args = ["run", "--generations", "1", "--output-dir", str(tmp_path)]
    for o in TINY:
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Ray" in result.output and "mgkd ui --output-dir" in result.output
    last = json.loads((tmp_path / "last_lineage.json").read_text())
    info = read_lineage(last["tracking_uri"], last["lineage_id"])
    assert [g["generation"] for g in info["generations"]] == [0, 1]


def test_console_script_runs_without_ray(tmp_path):
    """The installed `mgkd` entry point, as a user runs it."""
    cmd = [sys.executable, "-m", "mgkd.cli", "run", "--no-ray", "-g", "1", "--output-dir", str(tmp_path)]
    for o in TINY:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "in-process (no Ray)" in proc.stdout
    assert (tmp_path / "mlflow.db").is_file()
