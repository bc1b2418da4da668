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
