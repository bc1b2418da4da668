"""Sequence-level KD and pseudo-labels: n-best search, the teacher-output store, both plugins, a lineage."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from rich.console import Console

from mgkd.generations.checkpoint import load_checkpoint
from mgkd.generations.views import GenerationViewContext
from mgkd.lineage.tracking import mlflow_client, read_lineage
from mgkd.losses.sequence import SequenceKD
from mgkd.orchestration.controller import run_lineage

from ..helpers import tiny_config
from ..helpers.sequence_kd import CountingDecoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- a lineage: seq_kd, then pseudo_label -----------------------------------------------------------


@pytest.fixture(scope="module")
def kd_lineage(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seqkd-lineage")
    cfg = tiny_config(
        tmp, "generations.count=2", "ray.enabled=false",
        "generations.per_generation.1.losses=[{name: seq_kd, weight: 0.5, params: {beam_size: 2}},"
        " {name: label_smoothing, weight: 0.5}]",
        "generations.per_generation.2.losses=[{name: pseudo_label, params: {max_sentences: 200, ratio: 0.5}},"
        " {name: label_smoothing}]",
    )  # fmt: skip
    outcome = run_lineage(cfg, Console(quiet=True))
    return cfg, outcome, read_lineage(outcome.tracking_uri, outcome.lineage_id)


def test_lineage_logs_the_terms_and_the_teacher_outputs(kd_lineage, tiny_data):
    cfg, outcome, info = kd_lineage
    g0, g1, g2 = info["generations"]
    assert "loss.seq_kd" in g1["metrics"] and "loss.label_smoothing" in g1["metrics"]
    assert "loss.pseudo_label" in g2["metrics"] and "loss.seq_kd" not in g2["metrics"]
    assert g1["metrics"]["seq_kd_cached"] == 0.0 and g1["metrics"]["seq_kd_sentences"] > 500
    assert g2["metrics"]["pseudo_label_sentences"] > 0
    client = mlflow_client(outcome.tracking_uri)
    for g, label in ((g1, "seq_kd"), (g2, "pseudo_label")):
        files = [a.path for a in client.list_artifacts(g["run_id"], "teacher_outputs")]
        # the file is named by the teacher's checkpoint sha256: this generation's teacher
        assert files == [f"teacher_outputs/{Path(outcome.results[g['generation']].artifacts[0]).name}"]
        assert files[0].startswith(f"teacher_outputs/{label}-{g['teacher_checkpoint_sha256'][:16]}-")
        assert files[0].endswith(".tsv")
    assert "teacher_outputs" not in {a.path for a in client.list_artifacts(g0["run_id"])}


def test_rebuilding_a_view_with_the_same_teacher_reuses_the_cache(kd_lineage, monkeypatch):
    cfg, outcome, info = kd_lineage
    from mgkd.tasks.translation import prepare

    data = prepare(cfg)
    teacher0 = outcome.results[0]
    teacher, _ = load_checkpoint(Path(teacher0.checkpoint), teacher0.checkpoint_sha256)
    counter = CountingDecoder(monkeypatch)
    ctx = GenerationViewContext(teacher.eval(), teacher0.checkpoint_sha256, data, cfg.eval,
                                Path(data.cache_dir) / "teacher", torch.device("cpu"), cfg.seed + 1,
                                lambda _: None)  # fmt: skip
    view = SequenceKD(beam_size=2).build_view(ctx)
    assert view.metrics["seq_kd_cached"] == 1.0 and counter.calls == 0
    assert str(view.artifact) == outcome.results[1].artifacts[0]
    assert math.isclose(view.metrics["seq_kd_pseudo_bleu"], info["generations"][1]["metrics"]["seq_kd_pseudo_bleu"])


def test_the_demo_time_bench_splits_each_run_and_counts_the_seq_kd_padding(kd_lineage):
    """bench/demo_time.py on a finished lineage: one row per generation whose parts add up to its MLflow run time,
    and the padding of the seq-KD targets recomputed from the stored teacher outputs and the trainer's plan."""
    from ..helpers.bench import load_bench

    bench = load_bench("demo_time")
    cfg, outcome, info = kd_lineage
    where, rows = bench.read_times(Path(cfg.output_dir))
    assert where["lineage_id"] == outcome.lineage_id and [r["generation"] for r in rows] == [0, 1, 2]
    client = mlflow_client(outcome.tracking_uri)
    for r, g in zip(rows, info["generations"]):
        run = client.get_run(g["run_id"]).info
        assert r["total_s"] == pytest.approx((run.end_time - run.start_time) / 1000)
        assert r["decode_s"] + r["targets_s"] + r["train_s"] + r["rest_s"] == pytest.approx(r["total_s"])
        assert r["train_s"] == g["metrics"]["train_time_s"] and r["rest_s"] > 0
    g1, g2 = info["generations"][1]["metrics"], info["generations"][2]["metrics"]
    assert rows[0]["decode_s"] == 0 and rows[1]["decode_s"] == g1["seq_kd_decode_s"]
    assert rows[2]["decode_s"] == g2["pseudo_label_decode_s"]
    # making targets of the outputs: the view's build less its decoding, none for the teacher
    assert rows[0]["targets_s"] == 0
    assert (
        rows[1]["targets_s"] == pytest.approx(g1["seq_kd_view_s"] - g1["seq_kd_decode_s"]) and rows[1]["targets_s"] > 0
    )
    block = bench.report(Path(cfg.output_dir), None, "test machine", None)
    lines = [ln for ln in block.splitlines() if ln.startswith("| ")][1:]
    assert [ln.split(" | ")[0] for ln in lines] == ["| 0", "| 1", "| 2"]
    # generation 1 trains on seq-KD targets of every training source: its padding is counted; the teacher has
    # none, and generation 2's pseudo-labels (a capped side stream) are not batched by this plan
    assert lines[0].endswith("| – |") and lines[2].endswith("| – |")
    gold, seq_kd, longer = (float(x) for x in lines[1].split(" | ")[-1].split(" (")[0].split(" / "))
    assert gold >= 1.0 and seq_kd >= 1.0 and longer >= 1.0
    assert "started" in block and "test machine" in block
    summed = sum(r["total_s"] for r in rows) / 60
    assert f"{summed:.2f} min summed over the generations' runs" in block and summed < 12
    assert block.endswith("part is **met**.")  # a lineage of seconds is inside the 12-minute target
