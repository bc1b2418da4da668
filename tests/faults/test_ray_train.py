"""Ray Train per generation: data-parallel workers, reported training states, restarts of a dead worker.

Real Ray (the session's local instance, 2 CPUs), real gloo process groups.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from mgkd.generations import build_schedule, train_generation
from mgkd.orchestration.runners import RayRunner

from ..helpers.ray_train import _classification_config, _spec


def _kill_the_worker_mid_run(runner: RayRunner, spec, out_dir: Path):
    """Run the generation through Ray Train (states reported every 4 steps) and SIGKILL its worker once step 10
    is logged, after removing the local training state (as on another node); what the run returned.

    Why step 10: a worker's report waits until Ray Train's controller has collected the one before (a result
    queue of one), so once the worker is past its step-8 report, the step-4 state is registered; a kill any
    earlier could beat the controller's poll (every 0.5 s) and restart the run from scratch."""
    seen: list[dict] = []
    killed: list[int] = []

    def events(event: dict) -> None:
        seen.append(event)
        if event["type"] == "step" and event["step"] >= 10 and not killed:
            pid = next(e["pid"] for e in seen if e["type"] == "start")
            (out_dir / "train_state.pt").unlink(missing_ok=True)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    result = runner.run(spec, out_dir, None, events)
    assert killed
    starts = [e for e in seen if e["type"] == "start"]
    assert len(starts) == 2 and starts[1]["pid"] != killed[0]  # a new worker process
    resumes = [e for e in seen if e["type"] == "resume"]
    assert resumes and resumes[0]["step"] >= 4  # from a reported state, not from scratch
    return result


def test_a_killed_worker_is_restarted_from_its_reported_state(ray_session, tiny_data, tmp_path):
    """SIGKILL the training worker mid-generation: Ray Train restarts it (max_failures=1) from the last state
    it reported to storage (the local copy is removed first, as on another node), and the generation ends with
    the checkpoint an uninterrupted run makes."""
    cfg, spec = _spec(tmp_path, "ray.max_failures=1")
    straight = train_generation(spec, tiny_data, tmp_path / "straight")
    runner = RayRunner(cfg.ray, tiny_data, tmp_path)
    result = _kill_the_worker_mid_run(runner, spec, tmp_path / "lineages" / "L" / "gen-0")
    assert result.checkpoint_sha256 == straight.checkpoint_sha256
    assert result.metrics["test_bleu"] == straight.metrics["test_bleu"]


def test_a_killed_classification_worker_is_restarted_from_its_reported_state(
    ray_session, classification_data, tmp_path
):
    """The same for the classification task's loop: its states reach Ray Train storage too."""
    cfg = _classification_config(tmp_path, "ray.max_failures=1")
    spec, data = build_schedule(cfg)[0], classification_data
    straight = train_generation(spec, data, tmp_path / "straight")
    runner = RayRunner(cfg.ray, data, tmp_path)
    result = _kill_the_worker_mid_run(runner, spec, tmp_path / "lineages" / "L" / "gen-0")
    assert result.checkpoint_sha256 == straight.checkpoint_sha256
    assert result.metrics["test_accuracy"] == straight.metrics["test_accuracy"]


def test_ctrl_c_stops_the_workers_after_a_whole_step_with_the_state_saved(ray_session, tiny_data, tmp_path):
    """Ctrl-C in the driver while Ray Train trains: the worker finishes its step, saves the training state (no
    periodic state exists yet) and the run ends; running the generation again resumes at that step and ends
    with the checkpoint an uninterrupted run makes."""
    # 20 epochs (380 steps): the Ctrl-C sent at step 3's event must land mid-run, and the driver reads the
    # workers' events up to seconds late on a loaded machine (4 epochs, ~5 s, once ended before it arrived).
    cfg, spec = _spec(tmp_path, "train.checkpoint_every_steps=1000", "train.log_every_steps=1", "train.max_epochs=20")
    straight = train_generation(spec, tiny_data, tmp_path / "straight")
    out_dir = tmp_path / "lineages" / "L" / "gen-0"
    runner = RayRunner(cfg.ray, tiny_data, tmp_path)
    seen: list[dict] = []

    def events(event: dict) -> None:
        seen.append(event)
        if event["type"] == "step" and event["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C reaches the driver

    with pytest.raises(KeyboardInterrupt):
        runner.run(spec, out_dir, None, events)
    stopped = [e for e in seen if e["type"] == "interrupted"]
    assert len(stopped) == 1 and stopped[0]["step"] >= 3
    assert (out_dir / "train_state.pt").is_file()
    assert not (out_dir / "checkpoint.pt").exists()

    seen.clear()
    result = runner.run(spec, out_dir, None, seen.append)
    resumes = [e for e in seen if e["type"] == "resume"]
    assert [e["step"] for e in resumes] == [stopped[0]["step"]]
    assert result.checkpoint_sha256 == straight.checkpoint_sha256


def test_two_workers_resume_each_with_its_own_generators_to_the_uninterrupted_checkpoint(
    ray_session, tiny_data, tmp_path
):
    """Ctrl-C in the driver during a 2-worker run: both workers stop after the same step and worker 0 saves both
    workers' random generators; the resumed run gives each worker its own back (worker 1's dropout masks are
    its own, not worker 0's) and ends with the checkpoint of an uninterrupted 2-worker run, byte for byte."""
    # 30 epochs (270 steps of 2 workers): long enough for the Ctrl-C sent at step 3's event to land mid-run
    # (3 epochs ended in ~1.5 s, before the driver had read step 3's event, on a loaded machine).
    cfg, spec = _spec(tmp_path, "ray.workers=2", "ray.cpus_per_generation=2", "train.checkpoint_every_steps=1000",
                      "train.log_every_steps=1", "train.max_epochs=30")  # fmt: skip
    assert spec.model.dropout > 0  # dropout draws from each worker's generator
    runner = RayRunner(cfg.ray, tiny_data, tmp_path)
    straight = runner.run(spec, tmp_path / "lineages" / "S" / "gen-0", None, lambda _: None)
    out_dir = tmp_path / "lineages" / "L" / "gen-0"
    seen: list[dict] = []

    def events(event: dict) -> None:
        seen.append(event)
        if event["type"] == "step" and event["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C reaches the driver

    with pytest.raises(KeyboardInterrupt):
        runner.run(spec, out_dir, None, events)
    stopped = [e for e in seen if e["type"] == "interrupted"]
    assert len(stopped) == 1 and stopped[0]["step"] >= 3
    seen.clear()
    result = runner.run(spec, out_dir, None, seen.append)
    assert [e["step"] for e in seen if e["type"] == "resume"] == [stopped[0]["step"]]
    assert not [e for e in seen if e["type"] == "rng-fallback"]
    assert result.checkpoint_sha256 == straight.checkpoint_sha256
