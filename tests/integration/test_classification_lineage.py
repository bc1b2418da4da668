"""End to end: `mgkd run --task classification`, a teacher and 2 students (soft labels + internal
representations, layers cut from the teacher) through real Ray and real MLflow, read back from MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgkd.cli import app
from mgkd.generations.checkpoint import sha256_file
from mgkd.lineage.tracking import mlflow_client, read_lineage

from ..helpers.classification import TINY_CLASSIFICATION, sentiment_csv


@pytest.fixture(scope="module")
def lineage(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("classification")
    data = sentiment_csv(tmp / "reviews.csv")
    args = ["run", "--task", "classification", "--generations", "2", "--output-dir", str(tmp / "out"),
            "--set", f"classification.source={data}"]  # fmt: skip
    for item in TINY_CLASSIFICATION:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{(tmp / 'out' / 'mlflow.db').resolve()}"
    return result.output, uri, read_lineage(uri, experiment="classification")


def test_each_generation_logs_accuracy_and_f1_in_mlflow(lineage):
    output, uri, info = lineage
    assert info["status"] == "FINISHED"
    gens = info["generations"]
    assert [g["generation"] for g in gens] == [0, 1, 2]
    assert [g["arch"] for g in gens] == ["transformer_classifier"] * 3
    assert [g["params"]["model.encoder_layers"] for g in gens] == ["2", "1", "1"]  # shrink: 2 -> 1 layer, cut
    assert [g["params"]["init"] for g in gens] == ["scratch", "cut", "cut"]
    for g in gens:
        m = g["metrics"]
        for key in ("test_accuracy", "test_macro_f1", "test_mcc", "best_valid_accuracy", "best_valid_macro_f1",
                    "best_valid_loss", "parameters", "train_time_s"):  # fmt: skip
            assert key in m, (g["generation"], key)
        assert 0 <= m["test_macro_f1"] <= 100 and 0 <= m["test_accuracy"] <= 100
        # the printed table holds the numbers MLflow has
        assert f"{m['test_accuracy']:.2f}" in output and f"{m['test_macro_f1']:.2f}" in output
    # one sentiment word decides the label: the teacher learns it well past the majority class (1/3)
    assert gens[0]["metrics"]["test_accuracy"] > 80
    assert gens[1]["metrics"]["parameters"] < gens[0]["metrics"]["parameters"]
    for prev, cur in zip(gens, gens[1:]):
        assert cur["teacher_run_id"] == prev["run_id"]
        assert cur["teacher_checkpoint_sha256"] == prev["checkpoint_sha256"]


def test_students_log_soft_label_and_internal_terms_and_per_epoch_validation(lineage):
    _, uri, info = lineage
    client = mlflow_client(uri)
    for g in info["generations"]:
        run = g["run_id"]
        epochs = int(g["metrics"]["epochs"])
        assert len(client.get_metric_history(run, "valid_accuracy")) == epochs
        assert len(client.get_metric_history(run, "valid_macro_f1")) == epochs
        terms = {"loss.label_smoothing"} | ({"loss.soft_label", "loss.internal"} if g["generation"] else set())
        assert terms <= set(g["metrics"]), g["generation"]
        assert g["params"].get("loss.internal.schedule") == ("stacked" if g["generation"] else None)
        paths = {a.path for a in client.list_artifacts(run)} | {
            a.path for d in ("checkpoint", "tokenizer") for a in client.list_artifacts(run, d)
        }
        assert {"checkpoint/checkpoint.pt", "tokenizer/spm.model", "test_predictions.tsv"} <= paths


def test_the_lineage_records_the_final_accuracy_and_its_plot(lineage, tmp_path):
    _, uri, info = lineage
    client = mlflow_client(uri)
    parent = client.get_run(info["lineage_id"])
    last = info["generations"][-1]
    assert parent.data.metrics["final_test_accuracy"] == last["metrics"]["test_accuracy"]
    assert "lineage.png" in {a.path for a in client.list_artifacts(info["lineage_id"])}
    local = client.download_artifacts(last["run_id"], "checkpoint/checkpoint.pt", str(tmp_path))
    assert sha256_file(Path(local)) == last["checkpoint_sha256"]
    assert parent.data.params["task"] == "classification"


def test_lineage_listing_shows_accuracy_and_evaluate_refuses_the_task(lineage):
    _, uri, info = lineage
    out_dir = uri.removeprefix("sqlite:///").rsplit("/", 1)[0]
    listing = CliRunner().invoke(app, ["lineage", "--output-dir", out_dir])
    assert listing.exit_code == 0, listing.output
    text = " ".join(listing.output.split())
    for g in info["generations"]:
        m = g["metrics"]
        assert (
            f"test accuracy {m['test_accuracy']:.2f} macro-F1 {m['test_macro_f1']:.2f} MCC {m['test_mcc']:.2f}" in text
        )
        assert m["model_size_bytes"] > 0 and m["eval_examples_per_s"] > 0
        assert f"{m['model_size_bytes'] / 1e6:.2f} MB on disk {m['eval_examples_per_s']:.1f} ex/s" in text
    refused = CliRunner().invoke(app, ["evaluate", "--output-dir", out_dir])
    assert refused.exit_code == 2
    assert "is task 'classification': `mgkd evaluate` ensembles translation lineages" in " ".join(
        refused.output.split()
    )
