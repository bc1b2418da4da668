"""Ray Train per generation: data-parallel workers, reported training states, restarts of a dead worker.

Real Ray (the session's local instance, 2 CPUs), real gloo process groups.
"""

from __future__ import annotations

import pytest

from mgkd.config import RayConfig
from mgkd.errors import MgkdError
from mgkd.orchestration.placement import resolve_gpus


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
        build_config(overrides=["ray.workers=2", "ray.backend=task"])
