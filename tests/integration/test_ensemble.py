"""Generation ensembles (BAN-E): decoding, as the teacher of a next generation, and `mgkd evaluate`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rich.console import Console

from mgkd.lineage.tracking import mlflow_client, read_lineage
from mgkd.orchestration.controller import run_lineage
from mgkd.orchestration.evaluation import evaluate_ensemble

from ..helpers import tiny_config


@pytest.fixture(scope="module")
def ensemble_lineage(tmp_path_factory):
    """Teacher, two born-again students, and a third taught by the ensemble of generations 1 and 2."""
    out = tmp_path_factory.mktemp("ensemble")
    cfg = tiny_config(
        out, "generations.count=3", "ray.enabled=false", "train.max_epochs=1",
        'generations.per_generation={"3": {"teacher_generations": [1, 2], "init": "teacher"}}',
    )  # fmt: skip
    outcome = run_lineage(cfg, Console(quiet=True))
    return cfg, outcome


def test_an_ensemble_teaches_the_next_generation(ensemble_lineage):
    cfg, outcome = ensemble_lineage
    info = read_lineage(outcome.tracking_uri, outcome.lineage_id)
    g1, g2, g3 = info["generations"][1:]
    assert g3["teacher_run_id"] == f"{g1['run_id']},{g2['run_id']}"
    assert g3["teacher_checkpoint_sha256"] == f"{g1['checkpoint_sha256']},{g2['checkpoint_sha256']}"
    assert g3["params"]["teacher_generations"] == "[1, 2]"
    assert g3["metrics"]["test_chrf"] > 0 and "loss.soft_label" in g3["metrics"]
    # the teacher (the ensemble) did not change while generation 3 trained
    assert outcome.results[3].teacher_hash is not None


def test_evaluate_ensemble_reports_members_and_ensemble(ensemble_lineage):
    cfg, outcome = ensemble_lineage
    report = evaluate_ensemble(outcome.tracking_uri, outcome.lineage_id, None, [1, 2], output_dir=cfg.output_dir)
    assert [r["model"] for r in report.rows] == ["gen 1", "gen 2", "ensemble 1,2"]
    # the members' scores are those their runs recorded (same data, same decoding)
    recorded = {r.index: r.metrics["test_bleu"] for r in outcome.results}
    for r in report.rows[:2]:
        assert r["bleu"] == pytest.approx(recorded[r["generation"]], abs=1e-6)
    run = mlflow_client(outcome.tracking_uri).get_run(report.run_id)
    assert run.data.tags["mgkd.kind"] == "evaluation" and run.data.params["members"] == "1,2"
    assert run.data.metrics["ensemble_test_bleu"] == pytest.approx(report.rows[2]["bleu"])
    # the lineage still lists only generations
    assert [g["generation"] for g in read_lineage(outcome.tracking_uri, outcome.lineage_id)["generations"]] == [
        0, 1, 2, 3,
    ]  # fmt: skip


def test_evaluate_command(ensemble_lineage):
    cfg, outcome = ensemble_lineage
    res = subprocess.run(
        [sys.executable, "-m", "mgkd.cli", "evaluate", outcome.lineage_id, "--ensemble", "2,3",
         "--output-dir", str(cfg.output_dir)],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "ensemble 2,3" in res.stdout and "gen 3" in res.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "mgkd.cli", "evaluate", outcome.lineage_id, "--ensemble", "2,9",
         "--output-dir", str(cfg.output_dir)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "no finished generation(s) [9]" in bad.stderr + bad.stdout
