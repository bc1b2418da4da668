"""Data-parallel workers: each draws its own share of a side stream, and keeps its own random generators across
a resume. (The identical replicas themselves need a process group: tests/integration/test_ray_train.py.)"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mgkd.generations.recipe import cycle_batches
from mgkd.generations.train_state import (
    load_train_state,
    restore_worker_rng,
    rng_state,
    save_train_state,
    set_rng_state,
    worker_rng_states,
)
from mgkd.losses.base import ViewData
from mgkd.tasks.translation import TRANSLATION

MAX_TOKENS, SEED = 2048, 3


def _side_view(tiny_data) -> ViewData:
    return ViewData(split=tiny_data.splits["train"], aligned=False, token_ratio=0.3)


def _old_stream(view: ViewData, epochs: int) -> list[list[int]]:
    """The batches a single process drew before the stream was split by worker (the order is unchanged)."""
    budget = max(1, int(round(MAX_TOKENS * view.token_ratio)))
    orders = [
        TRANSLATION.batch_indices(view.split, budget, shuffle=True, seed=SEED * 7919 + e) for e in range(1, epochs + 1)
    ]
    return [idx for order in orders for idx in order]


def _draw(view: ViewData, n: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    stream = cycle_batches(TRANSLATION, view, MAX_TOKENS, SEED, rank, world)
    return [next(stream).indices for _ in range(n)]


def test_each_worker_takes_its_own_share_of_a_side_stream(tiny_data):
    view = _side_view(tiny_data)
    stream = _old_stream(view, epochs=2)
    per_epoch = len(_old_stream(view, epochs=1))
    assert per_epoch > 6 and per_epoch % 3 != 0  # an epoch does not split evenly: the shares cross epoch ends
    world = 3
    shares = [_draw(view, len(range(r, per_epoch, world)), r, world) for r in range(world)]
    ids = [{i for batch in share for i in batch} for share in shares]
    for a in range(world):
        for b in range(a + 1, world):
            assert not ids[a] & ids[b], f"workers {a} and {b} drew the same examples in one epoch"
    assert set().union(*ids) == {i for batch in stream[:per_epoch] for i in batch}  # together: the whole epoch
    assert sorted(map(tuple, (b for s in shares for b in s))) == sorted(map(tuple, stream[:per_epoch]))
    # Past the epoch's end each worker goes on with the positions it owns: r, r + world, ... of the stream.
    for r in range(world):
        n = len(range(r, len(stream), world))
        assert _draw(view, n, r, world) == stream[r::world]


def test_one_worker_draws_the_side_stream_a_single_process_always_drew(tiny_data):
    view = _side_view(tiny_data)
    old = _old_stream(view, epochs=2)
    drawn = cycle_batches(TRANSLATION, view, MAX_TOKENS, SEED)
    for idx in old:  # the same batches, tensors included, in the same order
        batch, expected = next(drawn), TRANSLATION.collate(view.split, idx)
        assert batch.indices == idx
        assert torch.equal(batch.src, expected.src) and torch.equal(batch.tgt_out, expected.tgt_out)


def _draws(noise: torch.Generator) -> tuple:
    """One draw from every generator a training step may use."""
    return (torch.rand(4).tolist(), float(np.random.rand()), random.random(), torch.rand(3, generator=noise).tolist())


def _seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return torch.Generator().manual_seed(seed + 100)


def test_the_random_state_round_trips_every_generator():
    noise = _seeded(1)
    _draws(noise)
    state = rng_state(noise)
    expected = _draws(noise)
    _draws(noise)  # the generators move on
    set_rng_state(state, noise)
    assert _draws(noise) == expected
    if torch.cuda.is_available():
        assert len(state["cuda"]) == torch.cuda.device_count()
    else:
        assert state["cuda"] is None  # no CUDA here: nothing to keep


def test_each_worker_resumes_its_own_generators_from_the_saved_state(tmp_path):
    """Worker 0 writes every worker's generators (gathered); after a restart worker r gets back its own, through
    the file as it is really written and read (weights_only=True)."""
    world = 3
    states, expected = [], []
    for rank in range(world):
        noise = _seeded(10 + rank)
        states.append(rng_state(noise))
        expected.append(_draws(noise))
    assert len({str(e) for e in expected}) == world  # the workers' draws differ
    save_train_state(tmp_path, {"identity": "x", **worker_rng_states(states)})
    saved = load_train_state(tmp_path, "x")
    assert saved is not None and saved["rng_world"] == world
    for rank in range(world):
        noise = _seeded(99)
        assert restore_worker_rng(saved, rank, world, noise) is None
        assert _draws(noise) == expected[rank]


def test_a_state_from_another_number_of_workers_restores_worker_0_and_says_the_rest_is_not_exact(tmp_path):
    states = [rng_state(_seeded(10 + rank)) for rank in range(3)]
    worker0 = _draws(_seeded(10))
    save_train_state(tmp_path, {"identity": "x", **worker_rng_states(states)})
    saved = load_train_state(tmp_path, "x")
    noise = _seeded(99)
    message = restore_worker_rng(saved, 0, 2, noise)
    assert message is not None and "3 worker(s)" in message and "this run has 2" in message
    assert _draws(noise) == worker0
    own = _draws(_seeded(42))
    noise = _seeded(42)
    assert restore_worker_rng(saved, 1, 2, noise) == message
    assert _draws(noise) == own  # worker 1 keeps the generators it had


@pytest.mark.parametrize("world", [1, 2])
def test_a_state_saved_before_workers_kept_their_own_generators(world):
    """A training state written before per-worker generators (worker 0's under "rng" only) resumes a single
    process exactly and tells a data-parallel run that its other workers draw afresh."""
    noise = _seeded(5)
    old = {"rng": rng_state(noise)}
    expected = _draws(noise)
    noise = _seeded(6)
    message = restore_worker_rng(old, 0, world, noise)
    assert (message is None) == (world == 1)
    assert _draws(noise) == expected
