"""An output folder holding another experiment's lineage, or an unfinished one, is not silently reused."""

from __future__ import annotations

import pytest
from rich.console import Console

from mgkd.errors import MgkdError
from mgkd.lineage.tracking import mlflow_client
from mgkd.orchestration.controller import run_lineage

from ..helpers import tiny_config


def test_output_folder_guard(tmp_path):
    fast = ["generations.count=1", "ray.enabled=false", "train.max_epochs=1", "split.max_test=10"]
    first = run_lineage(tiny_config(tmp_path, *fast), Console(quiet=True))
    # another experiment in the same folder: refused before anything trains
    other = tiny_config(tmp_path, *fast, "name=other")
    with pytest.raises(MgkdError, match=r"holds lineage .* of experiment 'demo', not 'other'.*--force"):
        run_lineage(other, Console(quiet=True))
    # an unfinished lineage: refused with the resume command
    mlflow_client(first.tracking_uri).set_terminated(first.lineage_id, "KILLED")
    with pytest.raises(MgkdError, match=rf"unfinished lineage {first.lineage_id} \(KILLED\); `mgkd resume"):
        run_lineage(tiny_config(tmp_path, *fast), Console(quiet=True))
    # --force starts a new lineage beside it, which the folder now points at
    second = run_lineage(tiny_config(tmp_path, *fast), Console(quiet=True), force=True)
    assert second.lineage_id != first.lineage_id
    assert mlflow_client(first.tracking_uri).get_run(first.lineage_id).info.status == "KILLED"
    # a finished lineage of the same experiment: a new run is fine
    third = run_lineage(tiny_config(tmp_path, *fast), Console(quiet=True))
    assert third.lineage_id not in (first.lineage_id, second.lineage_id)
