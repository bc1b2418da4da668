"""The demo preset itself (what `mgkd run` runs), on tiny data: its compression chain with seq-KD and matched
controls runs end to end in this process, and the table's KD − control is there."""

from __future__ import annotations

from rich.console import Console

from mgkd.config import build_config
from mgkd.lineage.tracking import read_lineage
from mgkd.models import build_model, count_parameters
from mgkd.orchestration.controller import run_lineage

# The demo's data and steps made tiny; its chain (sizes, losses, init) left as the preset has it, with its controls
# (`mgkd run --control`).
DATA = ["corpus.max_pairs=600", "tokenizer.vocab_size=400", "split.max_valid=30", "split.max_test=30",
        "train.max_epochs=1", "train.max_tokens=2048", "train.warmup_steps=5", "train.threads=1",
        "generations.student.train.max_steps=8", "generations.student.train.max_epochs=1",
        "train.log_every_steps=2", "eval.max_len_b=5"]  # fmt: skip


def test_the_demo_chain_shrinks_and_records_kd_minus_control(tmp_path):
    cfg = build_config(preset="demo", overrides=[*DATA, f"output_dir={tmp_path}", "generations.count=2",
                                                 "ray.enabled=false", "generations.control=true"])  # fmt: skip
    outcome = run_lineage(cfg, Console(quiet=True))
    info = read_lineage(outcome.tracking_uri, outcome.lineage_id)
    gens = info["generations"]
    assert [g["status"] for g in gens] == ["FINISHED"] * 3
    sizes = [count_parameters(build_model(s.model, cfg.tokenizer.vocab_size)) for s in outcome.specs]
    assert [int(g["metrics"]["parameters"]) for g in gens] == sizes and sizes[0] > sizes[1] > sizes[2]
    assert sorted(outcome.controls) == [1, 2] and all(c["matched"] for c in info["controls"])
    for g in gens[1:]:  # each student trained on its teacher's outputs; its control on gold only
        m = g["metrics"]
        assert "loss.seq_kd" in m and "loss.label_smoothing" not in m, sorted(m)
        control = outcome.controls[g["generation"]].metrics
        assert m["kd_minus_control_test_bleu"] == m["test_bleu"] - control["test_bleu"]
