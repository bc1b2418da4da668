"""Ray Tune per generation: a tiny sweep picks the trial with the best validation metric, which becomes the
generation and the next generation's teacher; trials share the teacher's cached outputs and are MLflow runs
nested under their generation's run. Real Ray Tune + Ray Train, real MLflow (sqlite)."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from mgkd.config import build_config
from mgkd.lineage.tracking import mlflow_client, read_lineage
from mgkd.orchestration.controller import run_lineage

from ..helpers import tiny_config
from ..helpers.tune import SEARCH


@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("tune")
    cfg = tiny_config(tmp, "generations.count=2", "train.max_epochs=2", SEARCH)
    outcome = run_lineage(cfg, Console(quiet=True))
    return cfg, outcome, read_lineage(outcome.tracking_uri, outcome.lineage_id)


def test_the_best_trial_by_validation_becomes_the_generation_and_the_next_teacher(swept):
    cfg, outcome, info = swept
    client = mlflow_client(outcome.tracking_uri)
    gen1, gen2 = info["generations"][1], info["generations"][2]
    trials = client.search_runs(
        [info["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{gen1['run_id']}'"
    )
    assert len(trials) == 3
    assert all(t.data.tags["mgkd.kind"] == "trial" and t.data.tags["mgkd.generation"] == "1" for t in trials)
    completed = [t for t in trials if t.data.tags["mgkd.trial_status"] == "completed"]
    assert len(completed) == 3  # fifo: every trial runs to its end
    # Selection by the validation split only: the smallest best_valid_loss wins.
    best = min(completed, key=lambda t: t.data.metrics["best_valid_loss"])
    assert [t.data.tags["mgkd.selected"] for t in trials].count("true") == 1
    assert best.data.tags["mgkd.selected"] == "true"
    assert gen1["metrics"]["best_valid_loss"] == best.data.metrics["best_valid_loss"]
    # The trials tried different values; the generation records the winner's.
    assert len({(t.data.params["train.lr"], t.data.params["loss.soft_label.temperature"]) for t in trials}) > 1
    assert gen1["params"]["search.best.train.lr"] == best.data.params["train.lr"]
    # The generation's checkpoint is that trial's, and it teaches generation 2.
    assert gen1["checkpoint_sha256"] == best.data.tags["mgkd.checkpoint_sha256"]
    assert gen2["teacher_checkpoint_sha256"] == best.data.tags["mgkd.checkpoint_sha256"]
    assert gen1["metrics"]["search_trials"] == 3
    # Every trial has its epoch-end validation history.
    for t in trials:
        history = client.get_metric_history(t.info.run_id, "valid_loss")
        assert [m.step for m in history] == [1, 2] and all(math.isfinite(m.value) for m in history)


def test_trials_share_the_teachers_cached_outputs(swept):
    cfg, outcome, info = swept
    client = mlflow_client(outcome.tracking_uri)
    gen1 = info["generations"][1]
    trials = client.search_runs(
        [info["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{gen1['run_id']}'"
    )
    # Built once before the trials: every trial found it (a cache hit), none rebuilt it.
    assert all(t.data.metrics["teacher_cache_hit"] == 1.0 for t in trials)
    caches = list((cfg.output_dir / "cache").glob("data-*/teacher/topk*"))
    assert len(caches) == 1


@pytest.fixture(scope="module")
def swept_classification(tmp_path_factory, ray_session):
    from ..helpers.classification import TINY_CLASSIFICATION, sentiment_csv

    tmp = tmp_path_factory.mktemp("tune-classification")
    data = sentiment_csv(tmp / "reviews.csv")
    cfg = build_config(preset="classification", overrides=[
        *TINY_CLASSIFICATION, f"classification.source={data}", f"output_dir={tmp / 'out'}", "generations.count=2",
        "eval.select_by=valid_accuracy", "generations.control=true",
        "generations.per_generation={1: {search: {space: {train.lr: {grid: [0.00003, 0.003]}}, num_samples: 1, "
        "scheduler: fifo}}}",
    ])  # fmt: skip
    outcome = run_lineage(cfg, Console(quiet=True))
    return outcome, read_lineage(outcome.tracking_uri, outcome.lineage_id)


def test_a_classification_sweep_selects_by_validation_accuracy_and_its_best_trial_teaches_on(swept_classification):
    outcome, info = swept_classification
    client = mlflow_client(outcome.tracking_uri)
    gen1, gen2 = info["generations"][1], info["generations"][2]
    trials = client.search_runs(
        [info["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{gen1['run_id']}'"
    )
    assert sorted(float(t.data.params["train.lr"]) for t in trials) == [0.00003, 0.003]
    assert all(t.data.tags["mgkd.trial_status"] == "completed" for t in trials)
    assert client.get_run(gen1["run_id"]).data.tags["mgkd.search_metric"] == "valid_accuracy (max)"
    # The highest best_valid_accuracy wins (ties: the lower trial id, as the sweep breaks them).
    best = min(trials, key=lambda t: (-t.data.metrics["best_valid_accuracy"], t.data.tags["mgkd.trial_id"]))
    assert [t.data.tags["mgkd.selected"] for t in trials].count("true") == 1
    assert best.data.tags["mgkd.selected"] == "true"
    assert gen1["metrics"]["best_valid_accuracy"] == best.data.metrics["best_valid_accuracy"]
    assert gen1["checkpoint_sha256"] == best.data.tags["mgkd.checkpoint_sha256"]
    assert gen2["teacher_checkpoint_sha256"] == best.data.tags["mgkd.checkpoint_sha256"]
    # The classification loop reports every epoch to Ray Train, so Tune (and the trial's run) has its history.
    for t in trials:
        for key in ("valid_accuracy", "valid_macro_f1", "valid_loss"):
            history = client.get_metric_history(t.info.run_id, key)
            assert [m.step for m in history] == [1, 2], key
            assert all(math.isfinite(m.value) for m in history)


def test_the_control_of_a_swept_generation_trains_with_the_winners_settings(swept_classification):
    """Matched controls under Tune, on the classification task: generation 1's control takes the winning
    trial's lr (not the base one), gold labels only; KD − control is in accuracy and macro-F1."""
    outcome, info = swept_classification
    gen1 = info["generations"][1]
    control = next(c for c in info["controls"] if c["control_of"] == gen1["run_id"])
    assert float(control["params"]["train.lr"]) == float(gen1["params"]["search.best.train.lr"])
    assert control["matched"] and control["init_sha256"] == gen1["init_sha256"]
    assert not any(k.startswith("loss.soft_label") for k in control["params"])
    for score in ("test_accuracy", "test_macro_f1"):
        gap = gen1["metrics"][score] - control["metrics"][score]
        assert gen1["metrics"][f"kd_minus_control_{score}"] == pytest.approx(gap)
    assert sorted(c["generation"] for c in info["controls"]) == [1, 2]


def test_asha_stops_a_trailing_trial_and_its_run_says_so(tmp_path, ray_session):
    """ASHA, the default scheduler: trials run one at a time, the good learning rate first; at the first rung
    (epoch 1) the second trial (a learning rate too small to learn) trails the first and ASHA stops it. The stop
    is on its nested MLflow run (status KILLED, mgkd.trial_status=stopped, only epoch 1 in its history), and the
    generation is the completed trial."""
    sweep = ("generations.per_generation={1: {search: {space: {train.lr: {grid: [0.003, 0.0000001]}}, "
             "num_samples: 1, max_concurrent: 1, scheduler: asha, grace_period: 1, reduction_factor: 2}}}")  # fmt: skip
    cfg = tiny_config(tmp_path, "generations.count=1", "train.max_epochs=3", sweep)
    assert cfg.generations.per_generation[1].search.scheduler == "asha"
    outcome = run_lineage(cfg, Console(quiet=True))
    info = read_lineage(outcome.tracking_uri, outcome.lineage_id)
    client = mlflow_client(outcome.tracking_uri)
    gen1 = info["generations"][1]
    trials = client.search_runs(
        [info["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{gen1['run_id']}'"
    )
    by_lr = {float(t.data.params["train.lr"]): t for t in trials}
    assert sorted(by_lr) == [0.0000001, 0.003]
    good, slow = by_lr[0.003], by_lr[0.0000001]
    assert good.data.tags["mgkd.trial_status"] == "completed" and good.info.status == "FINISHED"
    assert slow.data.tags["mgkd.trial_status"] == "stopped" and slow.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(slow.info.run_id, "valid_loss")] == [1]  # stopped at rung 1
    assert [m.step for m in client.get_metric_history(good.info.run_id, "valid_loss")] == [1, 2, 3]
    assert good.data.tags["mgkd.selected"] == "true" and slow.data.tags["mgkd.selected"] == "false"
    assert gen1["checkpoint_sha256"] == good.data.tags["mgkd.checkpoint_sha256"]
    assert gen1["metrics"]["search_trials"] == 2 and gen1["metrics"]["search_trials_completed"] == 1
