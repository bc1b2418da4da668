"""The BiGRU student: the model contract, batched decoding, checkpoints, and a mixed-architecture lineage."""

from pathlib import Path

import pytest
from rich.console import Console

from mgkd.generations import build_schedule
from mgkd.generations.checkpoint import load_checkpoint, sha256_file
from mgkd.lineage.tracking import read_lineage
from mgkd.models.bigru import BiGRUSeq2Seq
from mgkd.orchestration.controller import run_lineage

from ..helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- a lineage across architectures ---------------------------------------------


def test_transformer_to_bigru_to_bigru_lineage(tmp_path, tiny_data):
    bigru = "{arch: bigru, d_model: 32, embed_dim: 16}"
    cfg = tiny_config(
        tmp_path,
        "generations.count=2",
        "ray.enabled=false",
        f"generations.per_generation={{1: {{model: {bigru}, init: scratch}}, 2: {{model: {bigru}, init: teacher}}}}",
    )
    specs = build_schedule(cfg)
    assert [s.model.arch for s in specs] == ["transformer", "bigru", "bigru"]
    assert {t.name for t in specs[1].losses} == {"label_smoothing", "soft_label"}
    outcome = run_lineage(cfg, Console(quiet=True))
    info = read_lineage(outcome.tracking_uri, outcome.lineage_id)
    gens = info["generations"]
    assert [g["arch"] for g in gens] == ["transformer", "bigru", "bigru"]
    assert [g["params"]["init"] for g in gens] == ["scratch", "scratch", "teacher"]
    assert "loss.soft_label" in gens[1]["metrics"]
    for g, r in zip(gens, outcome.results):
        assert g["checkpoint_sha256"] == r.checkpoint_sha256 == sha256_file(Path(r.checkpoint))
        assert g["metrics"]["test_bleu"] >= 0 and g["metrics"]["test_chrf"] > 0
        # the metric comes from decoding the whole test split
        rows = Path(r.translations).read_text(encoding="utf-8").splitlines()[1:]
        assert len(rows) == len(tiny_data.splits["test"]) and any(row.split("\t")[3] for row in rows)
    for prev, cur in zip(gens, gens[1:]):
        assert cur["teacher_run_id"] == prev["run_id"]
        assert cur["teacher_checkpoint_sha256"] == prev["checkpoint_sha256"]
    assert outcome.results[1].parameters < outcome.results[0].parameters
    model, _ = load_checkpoint(Path(outcome.results[2].checkpoint), outcome.results[2].checkpoint_sha256)
    assert isinstance(model, BiGRUSeq2Seq) and model.cfg.embed_dim == 16
