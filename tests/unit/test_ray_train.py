"""Ray Train per generation: data-parallel workers, reported training states, restarts of a dead worker.

Real Ray (the session's local instance, 2 CPUs), real gloo process groups.
"""

from __future__ import annotations

import pytest
import torch

from mgkd.config import RayConfig
from mgkd.errors import MgkdError
from mgkd.generations.training import average_gradients
from mgkd.orchestration.runners import resolve_gpus


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


def test_gpus_default_to_one_per_worker_where_the_cluster_has_them():
    """`ray.gpus_per_generation` unset: a GPU per worker where there are enough, else none; a number is kept."""
    auto, two = RayConfig(), RayConfig(workers=2)
    assert resolve_gpus(auto, {"CPU": 16.0, "GPU": 1.0}).gpus_per_generation == 1.0
    assert resolve_gpus(two, {"CPU": 16.0, "GPU": 2.0}).gpus_per_generation == 2.0
    assert resolve_gpus(two, {"CPU": 16.0, "GPU": 1.0}).gpus_per_generation == 0.0  # not one for every worker
    assert resolve_gpus(auto, {"CPU": 2.0}).gpus_per_generation == 0.0
    assert resolve_gpus(RayConfig(gpus_per_generation=0), {"CPU": 2.0, "GPU": 8.0}).gpus_per_generation == 0.0
    assert auto.gpus_per_generation is None  # the config keeps "auto"; a resume resolves it again


def test_data_parallel_workers_need_ray_train():
    from mgkd.config import build_config

    with pytest.raises(MgkdError, match="needs ray.backend 'train'"):
        build_config(preset="demo", overrides=["ray.workers=2", "ray.backend=task"])
