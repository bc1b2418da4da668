"""Ray Train per generation: data-parallel workers, reported training states, restarts of a dead worker.

Real Ray (the session's local instance, 2 CPUs), real gloo process groups.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from mgkd.config import RayConfig
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule, train_generation
from mgkd.generations.loop import average_gradients
from mgkd.orchestration.runners import RayRunner, resolve_gpus

from .conftest import tiny_config


def _spec(tmp_path: Path, *extra: str):
    cfg = tiny_config(tmp_path, "generations.count=1", "train.checkpoint_every_steps=4", *extra)
    return cfg, build_schedule(cfg)[0]


def _average_in_worker(rank: int, world: int, port: int, grads: list[list[torch.Tensor]], out: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads[rank]]
    for p, g in zip(params, grads[rank]):
        p.grad = None if g is None else g.clone()
    finite, tokens, stop = average_gradients(params, rank != 1 or out["finite1"], 10 + rank, world, rank == 0)
    out[rank] = (finite, tokens, stop, [p.grad.clone() for p in params])
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("finite1", [True, False])
def test_gradients_are_averaged_over_workers_in_one_all_reduce(finite1):
    """Two gloo workers: each ends with the mean of both gradients (DDP's arithmetic), the tokens summed, a
    non-finite loss on one worker stops both, and so does a stop request (Ctrl-C) seen by worker 0 only."""
    import socket

    g = torch.Generator().manual_seed(0)
    grads = [[torch.randn(3, 4, generator=g), torch.randn(5, generator=g)] for _ in range(2)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # One process per worker (a process holds one default group), as under Ray Train.
    ctx = torch.multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    out = manager.dict({"finite1": finite1})
    procs = [ctx.Process(target=_average_in_worker, args=(r, 2, port, grads, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    for rank in range(2):
        finite, tokens, stop, averaged = out[rank]
        assert tokens == 21
        assert stop is True
        assert finite == finite1
        if finite1:
            for a, g0, g1 in zip(averaged, grads[0], grads[1]):
                torch.testing.assert_close(a, (g0 + g1) / 2)


def test_a_generation_runs_as_a_ray_train_run_with_the_same_result_as_in_process(ray_session, tiny_data, tmp_path):
    """One worker under Ray Train is the in-process run, step for step: the same checkpoint bytes. Its training
    states are reported to Ray Train's storage."""
    cfg, spec = _spec(tmp_path)
    straight = train_generation(spec, tiny_data, tmp_path / "straight")
    runner = RayRunner(cfg.ray, tiny_data, tmp_path)
    assert "Ray Train" in runner.description
    seen: list[dict] = []
    result = runner.run(spec, tmp_path / "lineages" / "L" / "gen-0", None, seen.append)
    assert result.checkpoint_sha256 == straight.checkpoint_sha256
    assert result.metrics["test_bleu"] == straight.metrics["test_bleu"]
    assert [e["type"] for e in seen].count("epoch") == 2  # worker 0's events reached the driver
    reported = list((tmp_path / "ray_train" / "L-gen-0").glob("checkpoint_*/train_state.pt"))
    assert reported, "training states were reported to Ray Train's storage"


def test_gpus_default_to_one_per_worker_where_the_cluster_has_them():
    """`ray.gpus_per_generation` unset: a GPU per worker where there are enough, else none; a number is kept."""
    auto, two = RayConfig(), RayConfig(workers=2)
    assert resolve_gpus(auto, {"CPU": 16.0, "GPU": 1.0}).gpus_per_generation == 1.0
    assert resolve_gpus(two, {"CPU": 16.0, "GPU": 2.0}).gpus_per_generation == 2.0
    assert resolve_gpus(two, {"CPU": 16.0, "GPU": 1.0}).gpus_per_generation == 0.0  # not one for every worker
    assert resolve_gpus(auto, {"CPU": 2.0}).gpus_per_generation == 0.0
    assert resolve_gpus(RayConfig(gpus_per_generation=0), {"CPU": 2.0, "GPU": 8.0}).gpus_per_generation == 0.0
    assert auto.gpus_per_generation is None  # the config keeps "auto"; a resume resolves it again


def test_a_cpu_cluster_runs_generations_without_gpus(ray_session, tiny_data, tmp_path):
    cfg, _ = _spec(tmp_path)
    assert cfg.ray.gpus_per_generation is None
    runner = RayRunner(cfg.ray, tiny_data, tmp_path)
    assert runner.cfg.gpus_per_generation == 0.0  # this machine's Ray has no GPU


def test_two_data_parallel_workers_split_each_step(ray_session, tiny_data, tmp_path):
    cfg, spec = _spec(tmp_path, "ray.workers=2", "ray.cpus_per_generation=2")
    single = _spec(tmp_path)[1]
    runner = RayRunner(cfg.ray, tiny_data, tmp_path)
    seen: list[dict] = []
    result = runner.run(spec, tmp_path / "lineages" / "L" / "gen-0", None, seen.append)
    start = next(e for e in seen if e["type"] == "start")
    from mgkd.tasks.translation import batch_indices

    batches = len(batch_indices(tiny_data.splits["train"], spec.train.max_tokens, shuffle=False))
    assert start["total_steps"] == 2 * (batches // 2)  # 2 epochs of half as many (twice as large) steps
    assert result.metrics["steps"] == start["total_steps"]
    assert result.metrics["test_bleu"] >= 0 and Path(result.checkpoint).is_file()
    # Each step saw both workers' batches: the tokens are those of (almost) all batches of 2 epochs.
    straight = train_generation(single, tiny_data, tmp_path / "straight")
    epochs = 2
    per_epoch = straight.metrics["train_tokens_per_s"] * straight.metrics["train_time_s"] / epochs
    seen_tokens = result.metrics["train_tokens_per_s"] * result.metrics["train_time_s"] / epochs
    assert 0.8 * per_epoch <= seen_tokens <= per_epoch * 1.0001


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


@pytest.fixture(scope="module")
def classification_data(tmp_path_factory):
    from mgkd.tasks import prepare

    tmp = tmp_path_factory.mktemp("classification-data")
    cfg = _classification_config(tmp)
    return prepare(cfg)


def _classification_config(tmp_path: Path, *extra: str):
    from mgkd.config import build_config

    from .test_classification_lineage import TINY_CLASSIFICATION, sentiment_csv

    data = tmp_path / "reviews.csv"
    if not data.is_file():
        sentiment_csv(data)
    return build_config(preset="classification", overrides=[
        *TINY_CLASSIFICATION, f"classification.source={data}", f"output_dir={tmp_path / 'out'}",
        "generations.count=1", "train.checkpoint_every_steps=4", "train.log_every_steps=1", "train.max_epochs=2",
        *extra,
    ])  # fmt: skip


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


def test_two_data_parallel_classification_workers_split_each_step(ray_session, classification_data, tmp_path):
    from mgkd.tasks.classification import batch_indices, collate

    cfg = _classification_config(tmp_path, "ray.workers=2", "ray.cpus_per_generation=2")
    spec, data = build_schedule(cfg)[0], classification_data
    seen: list[dict] = []
    result = RayRunner(cfg.ray, data, tmp_path).run(spec, tmp_path / "lineages" / "L" / "gen-0", None, seen.append)
    start = next(e for e in seen if e["type"] == "start")
    batches = len(batch_indices(data.splits["train"], spec.train.max_tokens, shuffle=False))
    assert start["total_steps"] == 2 * (batches // 2)  # 2 epochs of half as many (twice as large) steps
    assert result.metrics["steps"] == start["total_steps"]
    # Each step saw both workers' batches: the tokens are those of (almost) all batches of the 2 epochs.
    train = data.splits["train"]
    per_epoch = sum(collate(train, idx).tokens for idx in batch_indices(train, spec.train.max_tokens, shuffle=False))
    seen_tokens = result.metrics["train_tokens_per_s"] * result.metrics["train_time_s"] / 2
    assert 0.8 * per_epoch <= seen_tokens <= per_epoch * 1.0001
    # Worker 0 wrote the checkpoint and scored the test split.
    assert Path(result.checkpoint).is_file() and 0 <= result.metrics["test_accuracy"] <= 100
    assert [e["type"] for e in seen].count("start") == 1  # worker 1 sends no events


def test_ctrl_c_stops_the_workers_after_a_whole_step_with_the_state_saved(ray_session, tiny_data, tmp_path):
    """Ctrl-C in the driver while Ray Train trains: the worker finishes its step, saves the training state (no
    periodic state exists yet) and the run ends; running the generation again resumes at that step and ends
    with the checkpoint an uninterrupted run makes."""
    cfg, spec = _spec(tmp_path, "train.checkpoint_every_steps=1000", "train.log_every_steps=1", "train.max_epochs=4")
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


def test_an_error_of_the_run_itself_is_not_retried(ray_session, tiny_data, tmp_path):
    cfg, spec = _spec(tmp_path, "ray.max_failures=3", "train.lr=1e6", "train.warmup_steps=0", "train.clip_norm=null")
    runner = RayRunner(cfg.ray, tiny_data, tmp_path)
    seen: list[dict] = []
    with pytest.raises(MgkdError, match="not finite"):
        runner.run(spec, tmp_path / "lineages" / "L" / "gen-0", None, seen.append)
    assert [e["type"] for e in seen].count("start") == 1


def test_data_parallel_workers_need_ray_train():
    from mgkd.config import build_config

    with pytest.raises(MgkdError, match="needs ray.backend 'train'"):
        build_config(preset="demo", overrides=["ray.workers=2", "ray.backend=task"])


def test_more_workers_than_batches_is_an_error_naming_the_fix(ray_session, classification_data, tmp_path):
    cfg = _classification_config(tmp_path, "ray.workers=2", "ray.cpus_per_generation=2", "train.max_tokens=100000")
    runner = RayRunner(cfg.ray, classification_data, tmp_path)
    with pytest.raises(MgkdError, match="fewer training batches than the 2 data-parallel workers; lower ray.workers"):
        runner.run(build_schedule(cfg)[0], tmp_path / "lineages" / "L" / "gen-0", None, lambda _: None)
