"""A lineage with matched controls through real Ray Train and a real MLflow store, read back from MLflow;
and a killed lineage whose controls resume without redoing the finished ones."""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mgkd.cli import app
from mgkd.generations.controls import CONTROL_MAY_DIFFER
from mgkd.lineage.compare import check_only, params_diff
from mgkd.lineage.tracking import mlflow_client, read_lineage
from mgkd.orchestration.controller import run_lineage

from ..helpers import tiny_config


@pytest.fixture(scope="module")
def lineage(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("controls")
    cfg = tiny_config(tmp, "generations.count=2", "generations.control=true", "generations.student.init=scratch")
    outcome = run_lineage(cfg, Console(quiet=True))
    return cfg, outcome, read_lineage(outcome.tracking_uri, outcome.lineage_id)


def test_each_distilled_generation_has_a_matched_control_run(lineage):
    cfg, outcome, info = lineage
    gens, controls = info["generations"], info["controls"]
    assert [g["generation"] for g in gens] == [0, 1, 2]  # controls are not generations
    assert [c["generation"] for c in controls] == [1, 2] and sorted(outcome.controls) == [1, 2]
    client = mlflow_client(outcome.tracking_uri)
    for c in controls:
        g = gens[c["generation"]]
        tags = client.get_run(c["run_id"]).data.tags
        assert tags["mgkd.kind"] == "control" and tags["mlflow.parentRunId"] == info["lineage_id"]
        assert c["control_of"] == g["run_id"] and g["control_run_id"] == c["run_id"]
        assert c["status"] == "FINISHED" and c["matched"]
        # The same seed, init path and budget: the same initial weights and batch order, recorded by the trainer.
        assert c["init_sha256"] == g["init_sha256"] and len(g["init_sha256"]) == 64
        assert c["data_order_sha256"] == g["data_order_sha256"]
        # the order the trainer cut, carried back from the Ray Train worker, is what the tag says
        assert outcome.results[g["generation"]].data_order[-1] == g["data_order_sha256"]
        assert len(outcome.results[g["generation"]].data_order) == int(g["params"]["train.max_epochs"])
        assert params_diff(g["params"], c["params"], CONTROL_MAY_DIFFER) == []
        assert "loss.soft_label.weight" in g["params"] and "loss.soft_label.weight" not in c["params"]
        assert c["params"]["loss.label_smoothing.weight"] == "1.0" and c["params"]["seed"] == g["params"]["seed"]
        check_only(f"gen {g['generation']} vs control", g["params"], c["params"], CONTROL_MAY_DIFFER,
                   g["init_sha256"], c["init_sha256"])  # fmt: skip
        # The control trained on gold only, and the KD − control values on the generation's run say so.
        assert "loss.soft_label" not in c["metrics"] and "loss.label_smoothing" in c["metrics"]
        for score in ("test_bleu", "test_chrf"):
            assert g["metrics"][f"kd_minus_control_{score}"] == pytest.approx(g["metrics"][score] - c["metrics"][score])
        paths = {a.path for a in client.list_artifacts(c["run_id"], "checkpoint")}
        assert paths == {"checkpoint/checkpoint.pt"}
    # Students of different seeds start apart: the hash tells them apart.
    assert gens[1]["init_sha256"] != gens[2]["init_sha256"]
    # A control never teaches: generation 2 learned from generation 1's run, and only generations are registered.
    assert gens[2]["teacher_run_id"] == gens[1]["run_id"]
    versions = client.search_model_versions(f"name='{info['tags']['mgkd.registered_model']}'")
    assert sorted(v.run_id for v in versions) == sorted(g["run_id"] for g in gens)
    assert "lineage.png" in {a.path for a in client.list_artifacts(info["lineage_id"])}


def test_lineage_command_shows_the_controls(lineage):
    cfg, outcome, info = lineage
    shown = json.loads(CliRunner().invoke(app, ["lineage", "--output-dir", str(cfg.output_dir), "--json"]).stdout)
    assert [c["run_id"] for c in shown["controls"]] == [c["run_id"] for c in info["controls"]]
    assert "kd_minus_control_test_bleu" in shown["generations"][1]["metrics"]
    table = CliRunner().invoke(app, ["lineage", "--output-dir", str(cfg.output_dir)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())
    gap = info["generations"][1]["metrics"]["kd_minus_control_test_bleu"]
    assert f"KD − control: bleu {gap:+.2f}" in text and info["controls"][0]["run_id"] in text


def test_a_control_held_to_the_generations_batches_trains_as_many_of_them(tmp_path):
    """generations.control_budget=batches: a student whose step reads the gold and the seq-KD view gets a
    control with twice the steps, epochs and warm-up, whose first epochs are the generation's batches (in-process
    runner: the budget is the controller's business, not Ray's)."""
    from mgkd.generations.controls import control_may_differ

    cfg = tiny_config(tmp_path, "generations.count=1", "generations.control=true", "ray.enabled=false",
                      "generations.control_budget=batches", "generations.student.init=scratch",
                      "generations.student.train.max_steps=6", "generations.student.train.warmup_steps=2",
                      "generations.student.losses=[{name: label_smoothing, weight: 0.5}, "
                      "{name: seq_kd, weight: 0.5, params: {beam_size: 1, max_sentences: 100}}]")  # fmt: skip
    outcome = run_lineage(cfg, Console(quiet=True))
    info = read_lineage(outcome.tracking_uri, outcome.lineage_id)
    (g, c) = info["generations"][1], info["controls"][0]
    assert g["metrics"]["steps"] == 6 and c["metrics"]["steps"] == 12
    assert c["params"]["train.max_steps"] == "12" and c["params"]["train.warmup_steps"] == "4"
    assert int(c["params"]["train.max_epochs"]) == 2 * int(g["params"]["train.max_epochs"])
    assert c["matched"] and c["init_sha256"] == g["init_sha256"]
    assert c["data_order_sha256"] != g["data_order_sha256"]  # its own (longer) order, of which the first half is g's
    assert params_diff(g["params"], c["params"], control_may_differ("batches")) == []
    assert params_diff(g["params"], c["params"], CONTROL_MAY_DIFFER) == [
        "train.max_epochs", "train.max_steps", "train.warmup_steps",
    ]  # fmt: skip
