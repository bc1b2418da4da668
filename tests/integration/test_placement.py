"""`ray.workers` that the cluster cannot place is refused before anything trains, naming the resources seen."""

from __future__ import annotations

import pytest

from mgkd.config import RayConfig
from mgkd.errors import MgkdError
from mgkd.orchestration.placement import check_workers_fit


def test_the_check_reads_a_real_ray_cluster(ray_session):
    nodes = ray_session.nodes()
    cpus = sum(n["Resources"].get("CPU", 0) for n in nodes if n["Alive"])
    check_workers_fit(RayConfig(workers=2, cpus_per_generation=cpus, gpus_per_generation=0), nodes)
    with pytest.raises(MgkdError, match=r"hold only 1 such worker\(s\)"):
        check_workers_fit(RayConfig(workers=2, cpus_per_generation=cpus + 1, gpus_per_generation=0), nodes)
