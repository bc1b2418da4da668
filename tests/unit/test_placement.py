"""`ray.workers` that the cluster cannot place is refused before anything trains, naming the resources seen."""

from __future__ import annotations

import pytest

from mgkd.config import RayConfig
from mgkd.errors import MgkdError
from mgkd.orchestration.placement import check_workers_fit, placeable_workers


def node(address: str, cpu: float, gpu: float = 0.0, alive: bool = True) -> dict:
    """A node as `ray.nodes()` describes it (the keys mgkd reads)."""
    resources = {"CPU": cpu, **({"GPU": gpu} if gpu else {}), "memory": 1e9}
    return {"NodeManagerAddress": address, "Alive": alive, "Resources": resources}


def test_workers_are_counted_per_node_not_over_the_cluster_total():
    two_nodes = [node("10.0.0.1", 2), node("10.0.0.2", 2)]
    # 4 CPUs in all, but a 1.5-CPU worker fits once per 2-CPU node: 2 workers, not 2.67.
    assert placeable_workers(two_nodes, {"CPU": 1.5}) == 2
    assert placeable_workers(two_nodes, {"CPU": 2 / 3}) == 6  # float division does not lose the third worker
    assert placeable_workers([*two_nodes, node("10.0.0.3", 8, alive=False)], {"CPU": 1}) == 4  # dead nodes hold none
    assert placeable_workers([node("a", 8, gpu=1), node("b", 8)], {"CPU": 1, "GPU": 1}) == 1


def test_too_many_workers_name_the_nodes_and_the_fix():
    cfg = RayConfig(workers=3, cpus_per_generation=4.5, gpus_per_generation=0)
    with pytest.raises(MgkdError) as e:
        check_workers_fit(cfg, [node("10.0.0.1", 2), node("10.0.0.2", 2)])
    msg = str(e.value)
    assert "ray.workers=3 needs 1.5 CPU per worker" in msg and "hold only 2 such worker(s)" in msg
    assert "10.0.0.1: 2 CPU, 0 GPU" in msg and "10.0.0.2: 2 CPU, 0 GPU" in msg and "lower ray.workers" in msg
    check_workers_fit(cfg.model_copy(update={"workers": 2, "cpus_per_generation": 3}),
                      [node("10.0.0.1", 2), node("10.0.0.2", 2)])  # fmt: skip
