"""All four loss families at once in one 2-generation lineage, read back from MLflow through real Ray."""

from __future__ import annotations

import json
import math

from rich.console import Console

from mgkd.lineage.tracking import mlflow_client, read_lineage
from mgkd.orchestration.controller import run_lineage

from ..helpers import tiny_config

FAMILIES = [
    {"name": "label_smoothing", "weight": 0.3, "params": {"smoothing": 0.1}},
    {"name": "soft_label", "weight": 0.3, "params": {"temperature": 2.0, "top_k": 8}},
    {"name": "seq_kd", "weight": 0.2, "params": {"beam_size": 2, "max_sentences": 200}},
    {"name": "pseudo_label", "weight": 0.1, "params": {"max_sentences": 100, "ratio": 0.25}},
    {"name": "internal", "weight": 0.1, "params": {"uniform_features": ["hidden", "attention"]}},
]


def test_every_family_trains_and_logs_its_term(tmp_path, ray_session):
    cfg = tiny_config(
        tmp_path, "generations.count=2", "generations.student.init=scratch",
        "generations.student.model={d_model: 24, n_heads: 2, ff_dim: 48}",
        f"generations.student.losses={json.dumps(FAMILIES)}",
        'generations.per_generation={"2": {"model": {"d_model": 24, "n_heads": 2, "ff_dim": 48}, "init": "teacher"}}',
    )  # fmt: skip
    outcome = run_lineage(cfg, Console(quiet=True))
    info = read_lineage(outcome.tracking_uri, outcome.lineage_id)
    client = mlflow_client(outcome.tracking_uri)
    for g in info["generations"][1:]:
        for term in FAMILIES:
            history = client.get_metric_history(g["run_id"], f"loss.{term['name']}")
            assert history, (g["generation"], term["name"])
            assert all(math.isfinite(m.value) for m in history)
        # the logged total is the weighted sum of the logged terms (same steps, same window means)
        totals = {m.step: m.value for m in client.get_metric_history(g["run_id"], "loss")}
        parts = {t["name"]: {m.step: m.value for m in client.get_metric_history(g["run_id"], f"loss.{t['name']}")}
                 for t in FAMILIES}  # fmt: skip
        for step, total in totals.items():
            expected = sum(t["weight"] * parts[t["name"]][step] for t in FAMILIES)
            assert math.isclose(total, expected, rel_tol=1e-4, abs_tol=1e-5), (step, total, expected)
        # the teacher-made corpora are recorded with the generation
        outputs = {a.path.split("/")[-1].split("-")[0] for a in client.list_artifacts(g["run_id"], "teacher_outputs")}
        assert outputs == {"seq_kd", "pseudo_label"}, outputs
        assert (
            g["metrics"]["test_chrf"] >= 0
            and g["metrics"]["parameters"] < info["generations"][0]["metrics"]["parameters"]
        )
    assert info["generations"][2]["teacher_checkpoint_sha256"] == info["generations"][1]["checkpoint_sha256"]
