"""Generation ensembles (BAN-E): decoding, as the teacher of a next generation, and `mgkd evaluate`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from mgkd.config import ModelConfig
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule
from mgkd.lineage.tracking import _client, read_lineage
from mgkd.models import build_model
from mgkd.models.decoding import beam_decode, greedy_decode
from mgkd.models.ensemble import EnsembleSeq2Seq
from mgkd.orchestration.controller import run_lineage
from mgkd.orchestration.evaluation import evaluate_ensemble
from mgkd.tasks.translation import pad_sources

from .conftest import tiny_config


def _members(n: int = 2) -> list[torch.nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        cfg = ModelConfig(d_model=32, n_heads=2, ff_dim=64, encoder_layers=1, decoder_layers=1 + seed % 2)
        out.append(build_model(cfg, 40).eval())
    return out


def test_ensemble_averages_log_probabilities():
    a, b = _members()
    ens = EnsembleSeq2Seq([a, b]).eval()
    src, tgt = torch.randint(4, 40, (2, 5)), torch.randint(4, 40, (2, 4))
    expected = (F.log_softmax(a(src, tgt).logits, -1) + F.log_softmax(b(src, tgt).logits, -1)) / 2
    assert torch.allclose(ens(src, tgt).logits, expected, atol=1e-6)
    # incremental scoring agrees with teacher forcing
    state = ens.init_state(src)
    for step in range(tgt.size(1)):
        step_logits = ens.decode_step(tgt[:, step], state, step)
        assert torch.allclose(F.log_softmax(step_logits, -1), F.log_softmax(expected[:, step], -1), atol=1e-5)
    with pytest.raises(MgkdError, match="share one vocabulary"):
        EnsembleSeq2Seq([a, build_model(ModelConfig(d_model=32, n_heads=2, ff_dim=64), 41)])


def test_ensemble_of_one_decodes_like_its_member_and_batches_like_one_by_one():
    (a,) = _members(1)
    sources = [torch.randint(4, 40, (n,)).numpy() for n in (3, 7, 5, 1)]
    src = pad_sources(sources)
    max_lens = torch.tensor([8, 12, 9, 4])
    assert greedy_decode(EnsembleSeq2Seq([a]), src, max_lens) == greedy_decode(a, src, max_lens)
    ens = EnsembleSeq2Seq(_members(2)).eval()
    batched = beam_decode(ens, src, max_lens, beam_size=3)
    for i, s in enumerate(sources):
        assert beam_decode(ens, pad_sources([s]), max_lens[i : i + 1], beam_size=3)[0] == batched[i]


def test_teacher_generations_must_be_earlier(tmp_path):
    cfg = tiny_config(tmp_path, "generations.count=2", 'generations.per_generation={"2": {"teacher_generations": [2]}}')
    with pytest.raises(MgkdError, match=r"generation 2: teacher_generations \[2\] must be earlier generations"):
        build_schedule(cfg)


@pytest.fixture(scope="module")
def ensemble_lineage(tmp_path_factory):
    """Teacher, two born-again students, and a third taught by the ensemble of generations 1 and 2."""
    out = tmp_path_factory.mktemp("ensemble")
    cfg = tiny_config(
        out, "generations.count=3", "ray.enabled=false", "train.max_epochs=1",
        'generations.per_generation={"3": {"teacher_generations": [1, 2], "init": "teacher"}}',
    )  # fmt: skip
    outcome = run_lineage(cfg, Console(quiet=True))
    return cfg, outcome


def test_an_ensemble_teaches_the_next_generation(ensemble_lineage):
    cfg, outcome = ensemble_lineage
    info = read_lineage(outcome.tracking_uri, outcome.lineage_id)
    g1, g2, g3 = info["generations"][1:]
    assert g3["teacher_run_id"] == f"{g1['run_id']},{g2['run_id']}"
    assert g3["teacher_checkpoint_sha256"] == f"{g1['checkpoint_sha256']},{g2['checkpoint_sha256']}"
    assert g3["params"]["teacher_generations"] == "[1, 2]"
    assert g3["metrics"]["test_chrf"] > 0 and "loss.soft_label" in g3["metrics"]
    # the teacher (the ensemble) did not change while generation 3 trained
    assert outcome.results[3].teacher_hash is not None


def test_evaluate_ensemble_reports_members_and_ensemble(ensemble_lineage):
    cfg, outcome = ensemble_lineage
    report = evaluate_ensemble(outcome.tracking_uri, outcome.lineage_id, None, [1, 2], output_dir=cfg.output_dir)
    assert [r["model"] for r in report.rows] == ["gen 1", "gen 2", "ensemble 1,2"]
    # the members' scores are those their runs recorded (same data, same decoding)
    recorded = {r.index: r.metrics["test_bleu"] for r in outcome.results}
    for r in report.rows[:2]:
        assert r["bleu"] == pytest.approx(recorded[r["generation"]], abs=1e-6)
    run = _client(outcome.tracking_uri).get_run(report.run_id)
    assert run.data.tags["mgkd.kind"] == "evaluation" and run.data.params["members"] == "1,2"
    assert run.data.metrics["ensemble_test_bleu"] == pytest.approx(report.rows[2]["bleu"])
    # the lineage still lists only generations
    assert [g["generation"] for g in read_lineage(outcome.tracking_uri, outcome.lineage_id)["generations"]] == [
        0, 1, 2, 3,
    ]  # fmt: skip


def test_evaluate_command(ensemble_lineage):
    cfg, outcome = ensemble_lineage
    res = subprocess.run(
        [sys.executable, "-m", "mgkd.cli", "evaluate", outcome.lineage_id, "--ensemble", "2,3",
         "--output-dir", str(cfg.output_dir)],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "ensemble 2,3" in res.stdout and "gen 3" in res.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "mgkd.cli", "evaluate", outcome.lineage_id, "--ensemble", "2,9",
         "--output-dir", str(cfg.output_dir)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "no finished generation(s) [9]" in bad.stderr + bad.stdout
