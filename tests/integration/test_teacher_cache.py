"""The cached teacher signal: same loss as online top-k, built once, invalidated when anything changes."""

import json
from pathlib import Path

import pytest
from rich.console import Console

from ..helpers import tiny_config
from ..helpers.teacher_cache import CACHED, LOSSES_TOP_K

# One torch thread, as the tiny generations use (the unit layer's module does the same with its own fixture).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# -- in a lineage ------------------------------------------------------------------------


def test_a_lineage_with_a_cached_teacher(tmp_path):
    from mgkd.lineage.tracking import mlflow_client, read_lineage
    from mgkd.orchestration.controller import run_lineage

    cfg = tiny_config(tmp_path, "generations.count=1", "ray.enabled=false", "train.max_epochs=1",
                      CACHED, f"generations.student.losses={LOSSES_TOP_K}")  # fmt: skip
    outcome = run_lineage(cfg, Console(quiet=True))
    student = outcome.results[1]
    assert student.metrics["teacher_cache_hit"] == 0.0 and student.metrics["teacher_cache_build_s"] > 0
    assert 32 <= student.metrics["teacher_cache_bytes_per_token"] < 34
    manifest = Path(student.artifacts[-1])
    assert manifest.name == "manifest.json" and json.loads(manifest.read_text())["k"] == 8
    info = read_lineage(outcome.tracking_uri, outcome.lineage_id)
    gen1 = info["generations"][1]
    assert gen1["params"]["teacher_signal"] == "cached" and "loss.soft_label" in gen1["metrics"]
    assert gen1["metrics"]["teacher_cache_hit"] == 0.0
    logged = {a.path for a in mlflow_client(outcome.tracking_uri).list_artifacts(gen1["run_id"], "teacher_outputs")}
    assert logged == {"teacher_outputs/manifest.json"}
