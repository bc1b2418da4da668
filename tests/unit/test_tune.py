"""Ray Tune per generation: a tiny sweep picks the trial with the best validation metric, which becomes the
generation and the next generation's teacher; trials share the teacher's cached outputs and are MLflow runs
nested under their generation's run. Real Ray Tune + Ray Train, real MLflow (sqlite)."""

from __future__ import annotations

import pytest
import yaml

from mgkd.config import ExperimentConfig
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule
from mgkd.orchestration.sweep import experiment_path

from ..helpers import tiny_config
from ..helpers.tune import SEARCH


def test_a_changed_sweep_is_not_restored_from_the_old_one(tmp_path):
    cfg = tiny_config(tmp_path, "generations.count=1", SEARCH)
    spec = build_schedule(cfg)[1]
    # As `mgkd resume` reads it: the config.yaml the run wrote (a default of 2 comes back as 2.0).
    stored = yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))
    again = build_schedule(ExperimentConfig.model_validate(stored))[1]
    changed = build_schedule(tiny_config(tmp_path, "generations.count=1", SEARCH.replace("0.01]", "0.02]")))[1]
    assert experiment_path("s", "L-gen-1", spec) == experiment_path("s", "L-gen-1", again)  # resume finds it
    assert experiment_path("s", "L-gen-1", spec) != experiment_path("s", "L-gen-1", changed)


def test_a_search_is_checked_before_anything_runs(tmp_path):
    bad_key = SEARCH.replace("loss.soft_label.temperature", "loss.seq_kd.beam_size")
    with pytest.raises(MgkdError, match="no loss term 'seq_kd'"):
        build_schedule(tiny_config(tmp_path, "generations.count=1", bad_key))
    with pytest.raises(MgkdError, match="train.<field>"):
        build_schedule(tiny_config(tmp_path, "generations.count=1", SEARCH.replace("train.lr", "train.speed")))
    with pytest.raises(MgkdError, match="drop --no-ray"):
        tiny_config(tmp_path, "generations.count=1", "ray.enabled=false", SEARCH)
    with pytest.raises(MgkdError, match="low < high"):
        tiny_config(tmp_path, "generations.count=1", SEARCH.replace("{choice: [1.0, 4.0]}", "{uniform: [4.0, 1.0]}"))


def test_asha_lets_a_trial_reach_its_last_epoch_and_stops_one_that_trails_at_a_rung(tmp_path):
    """ASHA's default stops every trial at max_t, on its last epoch's report, and Tune then kills the trial
    before its worker has written the result (the best trial of a sweep ended 'stopped', no generation)."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from mgkd.orchestration.sweep import scheduler

    asha = "scheduler: asha, grace_period: 1, reduction_factor: 2"
    spec = build_schedule(tiny_config(tmp_path, "generations.count=1", "train.max_epochs=3",
                                      SEARCH.replace("scheduler: fifo", asha)))[1]  # fmt: skip
    assert spec.search.scheduler == "asha"
    sched = scheduler(spec)
    sched.set_search_properties("valid_loss", "min")
    good, slow = SimpleNamespace(trial_id="a_00000"), SimpleNamespace(trial_id="a_00001")
    for t in (good, slow):
        sched.on_trial_add(None, t)
    for epoch in (1, 2, 3):
        assert sched.on_trial_result(None, good, {"epoch": epoch, "valid_loss": 1.0}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, slow, {"epoch": 1, "valid_loss": 9.0}) == TrialScheduler.STOP


def test_a_trial_that_never_reported_is_found_by_its_folders_name():
    from types import SimpleNamespace

    from mgkd.orchestration.sweep import _trial_id

    silent = SimpleNamespace(metrics={}, path="/x/tune-ab12/trial_52812_00001_1_train.lr=0.0000_2026-12-06")
    assert _trial_id(silent) == "52812_00001"
    assert _trial_id(SimpleNamespace(metrics={"trial_id": "52812_00000"}, path="/x/y")) == "52812_00000"
