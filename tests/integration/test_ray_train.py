"""Ray Train per generation: data-parallel workers, reported training states, restarts of a dead worker.

Real Ray (the session's local instance, 2 CPUs), real gloo process groups.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mgkd.errors import MgkdError
from mgkd.generations import build_schedule, train_generation
from mgkd.generations.loop import average_gradients
from mgkd.orchestration.runners import RayRunner

from ..helpers import tiny_config
from ..helpers.ray_train import _classification_config, _spec


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


def _broadcast_in_worker(rank: int, world: int, port: int, out: dict) -> None:
    from mgkd.generations.loop import broadcast_from_worker_0, gather_to_worker_0

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(rank)
    tensors = [torch.nn.Parameter(torch.randn(3, 4, generator=g)), torch.randint(0, 9, (5,), generator=g),
               torch.rand(6, generator=g) > 0.5, torch.randn(2, generator=g, dtype=torch.float64)]  # fmt: skip
    out[f"built{rank}"] = [t.detach().clone() for t in tensors]
    broadcast_from_worker_0(tensors)
    out[rank] = [t.detach().clone() for t in tensors]
    out[f"gathered{rank}"] = gather_to_worker_0({"rank": rank}, world)
    torch.distributed.destroy_process_group()


def test_worker_0s_tensors_reach_every_worker_whatever_their_dtype():
    """Parameters, integer and bool buffers, float64: after the broadcast every worker holds worker 0's values
    (dtypes kept); gathering collects every worker's object on worker 0, in rank order."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = torch.multiprocessing.get_context("spawn")
    out = ctx.Manager().dict()
    procs = [ctx.Process(target=_broadcast_in_worker, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert any(not torch.equal(a, b) for a, b in zip(out["built0"], out["built1"]))  # they started different
    for mine, worker0 in zip(out[1], out["built0"]):
        assert mine.dtype == worker0.dtype and torch.equal(mine, worker0)
    assert all(torch.equal(a, b) for a, b in zip(out[0], out["built0"]))
    assert out["gathered0"] == [{"rank": 0}, {"rank": 1}] and out["gathered1"] is None


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


def test_two_workers_train_what_one_worker_accumulating_their_two_batches_trains(ray_session, tiny_data, tmp_path):
    """The data-parallel arithmetic end to end: 2 Ray Train workers (one batch each per step, gradients averaged)
    end with the weights of 1 in-process worker that takes the same 2 batches per step with
    train.accumulate_batches=2, up to float rounding. Dropout is off: each worker draws its own masks, which one
    process cannot reproduce. Fails if the workers' batches, the averaging or the step sequence differ."""
    common = ("model.dropout=0", "train.max_epochs=1", "train.checkpoint_every_steps=1000")
    cfg, two = _spec(tmp_path, *common, "ray.workers=2", "ray.cpus_per_generation=2")
    one = _spec(tmp_path, *common, "train.accumulate_batches=2")[1]
    plain = _spec(tmp_path, *common)[1]  # one batch per step: another step sequence, which the test must tell
    r2 = RayRunner(cfg.ray, tiny_data, tmp_path).run(two, tmp_path / "lineages" / "L" / "gen-0", None, lambda e: None)
    r1 = train_generation(one, tiny_data, tmp_path / "one")
    rp = train_generation(plain, tiny_data, tmp_path / "plain")
    w2, w1, wp = (torch.load(r.checkpoint, map_location="cpu", weights_only=True)["state_dict"] for r in (r2, r1, rp))
    assert r2.metrics["steps"] == r1.metrics["steps"] == rp.metrics["steps"] // 2
    assert r1.metrics["train_tokens_per_s"] * r1.metrics["train_time_s"] == pytest.approx(
        r2.metrics["train_tokens_per_s"] * r2.metrics["train_time_s"]
    )  # the same tokens: the same batches
    for k in w1:
        assert torch.allclose(w2[k], w1[k], rtol=1e-4, atol=1e-5), f"{k}: max diff {(w2[k] - w1[k]).abs().max()}"
    assert max(float((w1[k] - wp[k]).abs().max()) for k in w1 if w1[k].is_floating_point()) > 1e-3


def test_two_data_parallel_workers_hold_identical_replicas(ray_session, tiny_data, tmp_path):
    """Two workers, a student from scratch (each worker seeds its own: spec.seed + rank) and an internal loss whose
    projection is the plugin's own parameter: the workers' replicas differ as built, are worker 0's after the
    set-up's broadcast, and are equal again after training (gradients averaged, the same optimizer arithmetic).
    Without the broadcast the end hashes differ."""
    cfg = tiny_config(
        tmp_path, "generations.count=1", "ray.workers=2", "ray.cpus_per_generation=2", "train.max_epochs=1",
        "generations.student.init=scratch", "generations.student.model={d_model: 16, n_heads: 1, ff_dim: 32}",
        "generations.student.losses=[{name: label_smoothing}, {name: internal, params: {schedule: joint}}]",
    )  # fmt: skip
    teacher_spec, student_spec = build_schedule(cfg)
    teacher = train_generation(teacher_spec, tiny_data, tmp_path / "g0")  # d_model 32: the student's 16 is projected
    seen: list[dict] = []
    result = RayRunner(cfg.ray, tiny_data, tmp_path).run(student_spec, tmp_path / "lineages" / "L" / "gen-1",
                                                         teacher, seen.append)  # fmt: skip
    assert any("loss.internal" in e["metrics"] for e in seen if e["type"] == "step")
    replicas = {e["stage"]: e for e in seen if e["type"] == "replicas"}
    built, set_up, end = replicas["set-up"]["before"], replicas["set-up"]["after"], replicas["end"]["after"]
    assert len(built) == len(set_up) == len(end) == 2  # one hash per worker, gathered from both
    assert end[0] == end[1], "the workers' replicas differ after training"
    assert built[0] != built[1]  # each worker built its own weights: the broadcast is what makes them equal
    assert set_up == [built[0], built[0]] and end[0] != built[0]  # worker 0's weights, then trained
    assert result.metrics["steps"] > 0 and Path(result.checkpoint).is_file()


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


def test_an_error_of_the_run_itself_is_not_retried(ray_session, tiny_data, tmp_path):
    cfg, spec = _spec(tmp_path, "ray.max_failures=3", "train.lr=1e6", "train.warmup_steps=0", "train.clip_norm=null")
    runner = RayRunner(cfg.ray, tiny_data, tmp_path)
    seen: list[dict] = []
    with pytest.raises(MgkdError, match="not finite"):
        runner.run(spec, tmp_path / "lineages" / "L" / "gen-0", None, seen.append)
    assert [e["type"] for e in seen].count("start") == 1


def test_more_workers_than_batches_is_an_error_naming_the_fix(ray_session, classification_data, tmp_path):
    cfg = _classification_config(tmp_path, "ray.workers=2", "ray.cpus_per_generation=2", "train.max_tokens=100000")
    runner = RayRunner(cfg.ray, classification_data, tmp_path)
    with pytest.raises(MgkdError, match="fewer training batches than the 2 data-parallel workers; lower ray.workers"):
        runner.run(build_schedule(cfg)[0], tmp_path / "lineages" / "L" / "gen-0", None, lambda _: None)
