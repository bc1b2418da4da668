"""Ray Tune per generation: a tiny sweep picks the trial with the best validation metric, which becomes the
generation and the next generation's teacher; trials share the teacher's cached outputs and are MLflow runs
nested under their generation's run. Real Ray Tune + Ray Train, real MLflow (sqlite)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from mgkd.generations.checkpoint import sha256_file
from mgkd.lineage.tracking import mlflow_client, read_lineage

from ..helpers import TINY, mgkd_cli


def _tune_statuses(out) -> dict[str, str]:
    """Trial id -> status, as Tune last saved the sweep's state (what a resume starts from)."""
    statuses: dict[str, str] = {}
    for path in out.glob("ray_train/*-gen-1-tune-*/experiment_state-*.json"):
        try:
            for trial, _ in json.loads(path.read_text())["trial_data"]:
                trial = json.loads(trial)
                statuses[trial["trial_id"]] = trial["status"]
        except (OSError, ValueError, KeyError):
            return {}  # being written
    return statuses


@pytest.mark.parametrize("how", ["SIGKILL", "Ctrl-C"])
def test_a_killed_sweep_resumes_with_its_finished_trials_kept(tmp_path, how):
    """Kill `mgkd run` (SIGKILL, or Ctrl-C: SIGINT to its process group as a terminal sends it) after the first of
    three trials (one at a time) has finished; `mgkd resume` runs only the unfinished trials, keeps the finished
    one's checkpoint file untouched, and records each trial once."""
    out = tmp_path / "run"
    sweep = ("generations.per_generation={1: {search: {space: {train.lr: {grid: [0.0001, 0.003, 0.01]}}, "
             "num_samples: 1, max_concurrent: 1, scheduler: fifo}}}")  # fmt: skip
    sets = [x for s in [*TINY, "generations.count=1", "train.max_epochs=3", sweep] for x in ("--set", s)]
    proc = mgkd_cli("run", *sets, "--output-dir", str(out), start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the kill point:\n{proc.stdout.read()}")
        statuses = _tune_statuses(out)
        if list(statuses.values()).count("TERMINATED") >= 1:
            if how == "SIGKILL":
                proc.send_signal(signal.SIGKILL)
            else:
                os.killpg(proc.pid, signal.SIGINT)
            break
        time.sleep(0.1)
    else:
        pytest.fail("no trial finished in time")
    log, _ = proc.communicate(timeout=120)
    if how == "Ctrl-C":  # the lineage stops (it does not go on with the trials that ran) and says how to resume
        assert proc.returncode == 130 and "mgkd resume" in log, log
        info = read_lineage(f"sqlite:///{out / 'mlflow.db'}", None, "demo")
        assert info["status"] == "KILLED" and [g["status"] for g in info["generations"]] == ["FINISHED", "KILLED"]
    finished = [t for t, status in statuses.items() if status == "TERMINATED"]
    assert len(finished) == 1, statuses  # one at a time (max_concurrent: 1): the others had not finished
    lineage_dir = next((out / "lineages").iterdir())
    ckpt = lineage_dir / "gen-1" / "trials" / finished[0] / "checkpoint.pt"
    kept = (sha256_file(ckpt), ckpt.stat().st_mtime_ns)
    gen0 = read_lineage(f"sqlite:///{out / 'mlflow.db'}", lineage_dir.name)["generations"][0]

    res = mgkd_cli("resume", str(out))
    log, _ = res.communicate(timeout=600)
    assert res.returncode == 0, log
    assert "resuming the Ray Tune sweep" in log
    assert f"trial {finished[0]} (" not in log  # the finished trial reported nothing: it did not run again
    assert (sha256_file(ckpt), ckpt.stat().st_mtime_ns) == kept
    trial_ids = sorted(p.name for p in (lineage_dir / "gen-1" / "trials").iterdir())
    assert len(trial_ids) == 3 and set(statuses) <= set(trial_ids)  # no trial started twice under a new id

    uri = f"sqlite:///{out / 'mlflow.db'}"
    info = read_lineage(uri, lineage_dir.name)
    assert info["status"] == "FINISHED" and [g["generation"] for g in info["generations"]] == [0, 1]
    assert info["generations"][0]["run_id"] == gen0["run_id"]
    client = mlflow_client(uri)
    gen1 = info["generations"][1]
    trials = client.search_runs(
        [info["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{gen1['run_id']}'"
    )
    assert sorted(t.data.tags["mgkd.trial_id"] for t in trials) == trial_ids  # each trial recorded once
    assert sorted(float(t.data.params["train.lr"]) for t in trials) == [0.0001, 0.003, 0.01]  # each grid point once
    assert all(t.data.tags["mgkd.trial_status"] == "completed" for t in trials)
    for t in trials:  # the finished trial's epoch history survived the kill
        history = client.get_metric_history(t.info.run_id, "valid_loss")
        assert [m.step for m in history] == [1, 2, 3]
    best = min(trials, key=lambda t: t.data.metrics["best_valid_loss"])
    assert best.data.tags["mgkd.selected"] == "true"
    assert gen1["checkpoint_sha256"] == best.data.tags["mgkd.checkpoint_sha256"]
    assert sha256_file(lineage_dir / "gen-1" / "checkpoint.pt") == gen1["checkpoint_sha256"]
