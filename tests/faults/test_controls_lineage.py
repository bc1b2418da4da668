"""A lineage with matched controls through real Ray Train and a real MLflow store, read back from MLflow;
and a killed lineage whose controls resume without redoing the finished ones."""

from __future__ import annotations

from rich.console import Console

from mgkd.lineage.tracking import mlflow_client, read_lineage
from mgkd.orchestration.controller import resume_lineage, run_lineage

from ..helpers import tiny_config


def test_a_killed_lineage_resumes_without_redoing_finished_controls(tmp_path):
    """In-process: generation 1 and its control finished, generation 2's control was killed mid-way (its run
    left RUNNING->KILLED); resume reuses everything finished and trains only the open control, in its run."""
    cfg = tiny_config(tmp_path, "generations.count=2", "generations.control=true", "ray.enabled=false")
    outcome = run_lineage(cfg, Console(quiet=True))
    before = read_lineage(outcome.tracking_uri, outcome.lineage_id)
    client = mlflow_client(outcome.tracking_uri)
    first, killed = before["controls"][0]["run_id"], before["controls"][1]["run_id"]
    first_end, first_steps = client.get_run(first).info.end_time, len(client.get_metric_history(first, "loss"))
    client.set_terminated(killed, "KILLED")
    client.delete_tag(killed, "mgkd.checkpoint_sha256")  # as a control killed before its end has none
    client.set_terminated(outcome.lineage_id, "KILLED")
    resumed = resume_lineage(str(cfg.output_dir), console=Console(quiet=True))
    after = read_lineage(outcome.tracking_uri, outcome.lineage_id)
    assert after["status"] == "FINISHED"
    assert [c["run_id"] for c in after["controls"]] == [c["run_id"] for c in before["controls"]]  # no new runs
    assert resumed.control_run_ids == {1: first, 2: killed}
    # The finished control was not trained again: its run neither reopened nor given more steps.
    assert client.get_run(first).info.end_time == first_end
    assert len(client.get_metric_history(first, "loss")) == first_steps
    assert after["controls"][1]["status"] == "FINISHED" and after["controls"][1]["matched"]
    # Same seed, same data, same machine: the control trained again ends where it ended before.
    assert after["controls"][1]["checkpoint_sha256"] == before["controls"][1]["checkpoint_sha256"]
    assert [g["run_id"] for g in after["generations"]] == outcome.run_ids
