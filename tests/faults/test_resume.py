"""Resume: a killed generation continues from its saved state to the same result; a killed lineage
(SIGKILL) is finished by `mgkd resume` without redoing or duplicating finished generations."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from mgkd.errors import MgkdError
from mgkd.generations import build_schedule, train_generation
from mgkd.generations.checkpoint import sha256_file
from mgkd.generations.train_state import STATE_FILE
from mgkd.lineage.tracking import mlflow_client, read_lineage

from ..helpers import TINY, mgkd_cli, tiny_config


class Stop(Exception):
    pass


def _spec(tmp_path, *extra):
    cfg = tiny_config(tmp_path, "generations.count=1", "train.checkpoint_every_steps=4", *extra)
    return build_schedule(cfg)[0]


def test_a_killed_generation_resumes_to_the_same_checkpoint(tiny_data, tmp_path):
    spec = _spec(tmp_path)
    straight = train_generation(spec, tiny_data, tmp_path / "straight")

    def kill_after_step_6(event):
        if event["type"] == "step" and event["step"] >= 6:  # step events come every 5 steps: killed at 10
            raise Stop

    with pytest.raises(Stop):
        train_generation(spec, tiny_data, tmp_path / "killed", events=kill_after_step_6)
    assert (tmp_path / "killed" / STATE_FILE).is_file()
    seen = []
    resumed = train_generation(spec, tiny_data, tmp_path / "killed", events=seen.append)
    assert [e for e in seen if e["type"] == "resume"][0]["step"] == 8  # the last state saved before the kill
    assert resumed.metrics["test_bleu"] == straight.metrics["test_bleu"]
    assert resumed.metrics["best_valid_loss"] == straight.metrics["best_valid_loss"]
    assert resumed.checkpoint_sha256 == straight.checkpoint_sha256  # bit for bit
    assert not (tmp_path / "killed" / STATE_FILE).exists()  # done: the checkpoint is what counts


def test_ctrl_c_during_the_optimizer_step_still_saves_that_step(tiny_data, tmp_path, monkeypatch):
    """SIGINT while the weights are mid-update waits for the update to finish; the state after that step is
    saved (it used to be dropped, losing everything since the last periodic checkpoint)."""
    spec = _spec(tmp_path)
    straight = train_generation(spec, tiny_data, tmp_path / "straight")
    real_step, calls = torch.optim.AdamW.step, []

    def step_with_ctrl_c(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler at once, in the middle of the update
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_with_ctrl_c)
    seen = []
    with pytest.raises(KeyboardInterrupt):
        train_generation(spec, tiny_data, tmp_path / "killed", events=seen.append)
    assert [e["step"] for e in seen if e["type"] == "interrupted"] == [6]
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    seen = []
    resumed = train_generation(spec, tiny_data, tmp_path / "killed", events=seen.append)
    assert [e["step"] for e in seen if e["type"] == "resume"] == [6]
    assert resumed.checkpoint_sha256 == straight.checkpoint_sha256  # bit for bit


@pytest.mark.parametrize("calls", [1, 6])
def test_ctrl_c_inside_the_forward_pass_resumes_bit_for_bit(tiny_data, tmp_path, monkeypatch, calls):
    """SIGINT after a step's forward pass drew its dropout masks, before its update: the saved state holds the
    generators as that step found them, so the resumed run redraws the same masks (it used to save the
    generators after the lost step's draws and resume to different weights). calls=1: the very first step."""
    import mgkd.generations.recipe as recipe

    spec = _spec(tmp_path)
    assert spec.model.dropout > 0  # the masks are what the generators decide here
    straight = train_generation(spec, tiny_data, tmp_path / "straight")
    real_forward, seen_calls = recipe.forward_pair, []

    def forward_then_ctrl_c(*args, **kwargs):
        out = real_forward(*args, **kwargs)  # the dropout masks of this step are drawn
        seen_calls.append(1)
        if len(seen_calls) == calls:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(recipe, "forward_pair", forward_then_ctrl_c)
    seen = []
    with pytest.raises(KeyboardInterrupt):
        train_generation(spec, tiny_data, tmp_path / "killed", events=seen.append)
    assert [e["step"] for e in seen if e["type"] == "interrupted"] == [calls - 1]
    monkeypatch.setattr(recipe, "forward_pair", real_forward)
    seen = []
    resumed = train_generation(spec, tiny_data, tmp_path / "killed", events=seen.append)
    assert [e["step"] for e in seen if e["type"] == "resume"] == [calls - 1]
    assert resumed.checkpoint_sha256 == straight.checkpoint_sha256  # bit for bit


def test_a_foreign_or_corrupt_state_is_refused(tiny_data, tmp_path):
    spec = _spec(tmp_path)
    with pytest.raises(Stop):
        train_generation(spec, tiny_data, tmp_path / "g", events=lambda e: (_ for _ in ()).throw(Stop)
                         if e["type"] == "step" else None)  # fmt: skip
    other = _spec(tmp_path, "model.d_model=48")
    with pytest.raises(MgkdError, match="belongs to another model or data"):
        train_generation(other, tiny_data, tmp_path / "g")
    state = tmp_path / "g" / STATE_FILE
    state.write_bytes(state.read_bytes()[:-100])
    with pytest.raises(MgkdError, match="does not match its checksum"):
        train_generation(spec, tiny_data, tmp_path / "g")


def test_sigkill_after_generation_1_then_resume(tmp_path):
    """Through Ray Train (each generation a TorchTrainer run), as a user runs it."""
    out = tmp_path / "run"
    sets = [x for item in [*TINY, "generations.count=3", "train.max_epochs=3"] for x in ("--set", item)]
    proc = mgkd_cli("run", *sets, "--output-dir", str(out))
    # wait until generation 1 is recorded as finished, then kill -9 (no cleanup runs)
    deadline = time.monotonic() + 300
    killed_info = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed:\n{proc.stdout.read()}")
        marker = out / "last_lineage.json"
        if marker.is_file():
            try:
                info = read_lineage(f"sqlite:///{out / 'mlflow.db'}", None, "demo")
            except Exception:  # noqa: BLE001 - the store may be mid-write
                info = None
            if info and any(g["generation"] == 1 and g["status"] == "FINISHED" for g in info["generations"]):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_info = read_lineage(f"sqlite:///{out / 'mlflow.db'}", None, "demo")
                break
        time.sleep(0.2)
    assert killed_info is not None, "generation 1 did not finish in time"
    before = {g["generation"]: g for g in killed_info["generations"] if g["status"] == "FINISHED"}
    assert {0, 1} <= set(before)

    res = mgkd_cli("resume", str(out))
    log, _ = res.communicate(timeout=600)
    assert res.returncode == 0, log
    assert "generations [0, 1] finished and reused" in log or "finished and reused" in log

    uri = f"sqlite:///{out / 'mlflow.db'}"
    after = read_lineage(uri, killed_info["lineage_id"])
    assert after["status"] == "FINISHED"
    gens = after["generations"]
    assert [g["generation"] for g in gens] == [0, 1, 2, 3]  # no duplicate runs
    for k, g in before.items():
        assert gens[k]["run_id"] == g["run_id"] and gens[k]["checkpoint_sha256"] == g["checkpoint_sha256"]
        ckpt = out / "lineages" / after["lineage_id"] / f"gen-{k}" / "checkpoint.pt"
        assert sha256_file(ckpt) == g["checkpoint_sha256"]
    assert all(g["status"] == "FINISHED" for g in gens)
    for prev, cur in zip(gens, gens[1:]):
        assert cur["teacher_run_id"] == prev["run_id"]
        assert cur["teacher_checkpoint_sha256"] == prev["checkpoint_sha256"]
    client = mlflow_client(uri)
    model = client.get_run(after["lineage_id"]).data.tags["mgkd.registered_model"]
    versions = client.search_model_versions(f"name='{model}'")
    assert sorted(v.run_id for v in versions) == sorted(g["run_id"] for g in gens)  # one version per generation

    again = mgkd_cli("resume", str(out))
    log2, _ = again.communicate(timeout=120)
    assert again.returncode == 2 and "already finished" in log2
    assert Path(out / "lineages").is_dir()


@pytest.mark.parametrize("ray", [False, True], ids=["in-process", "Ray Train"])
def test_ctrl_c_saves_the_state_marks_runs_killed_and_resume_finishes(tmp_path, ray):
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group (under Ray: the driver, Ray's own
    processes it started and the training worker)."""
    out = tmp_path / "run"
    sets = [x for item in [*TINY, "generations.count=1", "generations.student.train={max_epochs: 10}",
                           "train.checkpoint_every_steps=1000"] for x in ("--set", item)]  # fmt: skip
    proc = mgkd_cli("run", *sets, *([] if ray else ["--no-ray"]), "--output-dir", str(out), start_new_session=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    deadline = time.monotonic() + 300
    state = None
    while time.monotonic() < deadline and proc.poll() is None:
        # interrupt generation 1 (10 epochs) once it has logged its first training steps
        try:
            gens = read_lineage(uri, None, "demo")["generations"] if (out / "last_lineage.json").is_file() else []
        except Exception:  # noqa: BLE001 - the store may be mid-write
            gens = []
        if len(gens) == 2 and "loss" in gens[1]["metrics"]:
            os.killpg(proc.pid, signal.SIGINT)
            state = next((out / "lineages").glob("*/gen-1")) / STATE_FILE
            break
        time.sleep(0.2)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log
    assert "mgkd resume" in log
    assert state is not None and state.is_file(), log  # saved at the interrupt, not at a periodic checkpoint
    info = read_lineage(uri, None, "demo")
    assert info["status"] == "KILLED"
    assert [g["status"] for g in info["generations"]] == ["FINISHED", "KILLED"]

    res = mgkd_cli("resume", str(out))
    log, _ = res.communicate(timeout=600)
    assert res.returncode == 0, log
    assert "resumes at step" in log
    after = read_lineage(uri, info["lineage_id"])
    assert [g["status"] for g in after["generations"]] == ["FINISHED", "FINISHED"]
    assert after["generations"][1]["run_id"] == info["generations"][1]["run_id"]


def test_nan_stops_the_generation_and_resume_with_a_changed_config_finishes(tmp_path):
    out = tmp_path / "run"
    student = [
        "generations.student.train={lr: 1.0e6, warmup_steps: 0}",
        "generations.student.losses=[{name: label_smoothing}]",
    ]
    sets = [x for item in [*TINY, "generations.count=1", *student] for x in ("--set", item)]
    proc = mgkd_cli("run", *sets, "--no-ray", "--output-dir", str(out))
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, log
    assert "generation 1: loss is not finite at step" in log and "label_smoothing" in log
    uri = f"sqlite:///{out / 'mlflow.db'}"
    info = read_lineage(uri, None, "demo")
    assert [g["status"] for g in info["generations"]] == ["FINISHED", "FAILED"]
    teacher = info["generations"][0]

    res = mgkd_cli("resume", str(out), "--set", "generations.student.train.lr=0.002")
    log, _ = res.communicate(timeout=300)
    assert res.returncode == 0, log
    after = read_lineage(uri, info["lineage_id"])
    assert [g["status"] for g in after["generations"]] == ["FINISHED", "FINISHED"]
    assert after["generations"][0]["run_id"] == teacher["run_id"]
    assert after["generations"][1]["run_id"] == info["generations"][1]["run_id"]
    assert mlflow_client(uri).get_run(info["lineage_id"]).data.tags["mgkd.resume_overrides"] == (
        "generations.student.train.lr=0.002"
    )


def test_resume_of_an_unknown_lineage_is_a_clear_error(tmp_path):
    res = mgkd_cli("resume", "0123456789abcdef", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    log, _ = res.communicate(timeout=120)
    assert res.returncode == 2 and "no lineage run '0123456789abcdef'" in log
    res = mgkd_cli("resume", str(tmp_path))
    log, _ = res.communicate(timeout=120)
    assert res.returncode == 2 and "holds no mgkd run" in log


def _kill_when(out: Path, ready, sets: list[str]) -> dict:
    """Start a lineage, SIGKILL it when `ready(info)` holds, return the lineage as it was left."""
    proc = mgkd_cli("run", *sets, "--no-ray", "--output-dir", str(out))
    uri = f"sqlite:///{out / 'mlflow.db'}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the kill point:\n{proc.stdout.read()}")
        try:
            info = read_lineage(uri, None, "demo") if (out / "last_lineage.json").is_file() else None
        except Exception:  # noqa: BLE001 - the store may be mid-write
            info = None
        if info and ready(info["generations"]):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return read_lineage(uri, None, "demo")
        time.sleep(0.1)
    pytest.fail("the kill point was not reached")


KILL_POINTS = {
    "teacher mid-training": lambda gens: len(gens) == 1 and "loss" in gens[0]["metrics"],
    "between generations": lambda gens: len(gens) >= 1 and gens[0]["status"] == "FINISHED",
    "generation 2 mid-training": lambda gens: len(gens) == 3 and "loss" in gens[2]["metrics"],
}


@pytest.fixture(scope="module")
def reference_lineage(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = mgkd_cli("run", *CHAOS_SETS, "--no-ray", "--output-dir", str(out))
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    return read_lineage(f"sqlite:///{out / 'mlflow.db'}", None, "demo")


CHAOS_SETS = [x for item in [*TINY, "generations.count=2", "train.max_epochs=3", "train.checkpoint_every_steps=3"]
              for x in ("--set", item)]  # fmt: skip


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_chaos_kill_anywhere_then_resume_gives_the_same_lineage(point, tmp_path, reference_lineage):
    out = tmp_path / "run"
    left = _kill_when(out, KILL_POINTS[point], CHAOS_SETS)
    finished_before = {g["generation"]: g for g in left["generations"] if g["status"] == "FINISHED"}
    res = mgkd_cli("resume", str(out))
    log, _ = res.communicate(timeout=600)
    assert res.returncode == 0, log
    after = read_lineage(f"sqlite:///{out / 'mlflow.db'}", left["lineage_id"])
    assert after["status"] == "FINISHED"
    assert [g["generation"] for g in after["generations"]] == [0, 1, 2]  # no duplicates
    for k, g in finished_before.items():  # finished generations untouched
        assert after["generations"][k]["run_id"] == g["run_id"]
        assert after["generations"][k]["checkpoint_sha256"] == g["checkpoint_sha256"]
    # the same lineage as an uninterrupted run: same checkpoints (bit for bit) and scores
    for got, ref in zip(after["generations"], reference_lineage["generations"]):
        assert got["checkpoint_sha256"] == ref["checkpoint_sha256"], (point, got["generation"])
        assert got["metrics"]["test_bleu"] == ref["metrics"]["test_bleu"]
