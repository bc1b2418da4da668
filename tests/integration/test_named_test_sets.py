"""A tiny lineage with named test sets, read back from MLflow: each set scored, logged and kept apart."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from rich.console import Console
from sacrebleu.metrics import BLEU, CHRF

from mgkd.errors import MgkdError
from mgkd.lineage.tracking import mlflow_client, read_lineage
from mgkd.orchestration.controller import run_lineage
from mgkd.orchestration.evaluation import evaluate_ensemble

from ..conftest import tiny_config

OWN = Path(__file__).resolve().parents[1] / "data" / "own_corpus"


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("named-sets")
    psalms = f"{{source_path: {OWN / 'psalms.en'}, target_path: {OWN / 'psalms.fr'}}}"
    sets = f"eval.test_sets={{cor: {OWN / 'test.tsv'}, psalms: {psalms}}}"
    cfg = tiny_config(
        tmp, "generations.count=1", "ray.enabled=false", sets,
        "corpus.source_lang=en", "corpus.target_lang=fr", "eval.bleu_tokenize=intl", "eval.chrf_word_order=2",
    )  # fmt: skip
    console = Console(record=True, file=io.StringIO(), width=220)
    outcome = run_lineage(cfg, console)
    return outcome, read_lineage(outcome.tracking_uri, outcome.lineage_id), console.export_text()


def _translations(client, run_id: str, path: str, tmp_path: Path) -> list[dict[str, str]]:
    local = client.download_artifacts(run_id, path, str(tmp_path))
    with open(local, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_each_named_set_is_scored_logged_and_kept_apart(lineage, tmp_path):
    outcome, info, _ = lineage
    client = mlflow_client(outcome.tracking_uri)
    assert [g["generation"] for g in info["generations"]] == [0, 1]
    for g in info["generations"]:
        m = g["metrics"]
        # No split.test: the first named set is the test split, so test_bleu is cor's.
        assert m["test_bleu"] == m["test_bleu/cor"] and m["test_chrf"] == m["test_chrf/cor"]
        for name, rows in (("cor", 40), ("psalms", 30)):
            got = _translations(client, g["run_id"], f"test_sets/{name}.tsv", tmp_path / str(g["generation"]))
            assert len(got) == rows
            # The logged scores are these translations scored as the signature says (intl, chrF++).
            hyps, refs = [r["hypothesis"] for r in got], [r["reference"] for r in got]
            assert m[f"test_bleu/{name}"] == pytest.approx(BLEU(tokenize="intl").corpus_score(hyps, [refs]).score)
            assert m[f"test_chrf/{name}"] == pytest.approx(CHRF(word_order=2).corpus_score(hyps, [refs]).score)
        psalms = _translations(client, g["run_id"], "test_sets/psalms.tsv", tmp_path / "p")
        assert psalms[0]["source"] == (OWN / "psalms.en").read_text(encoding="utf-8").splitlines()[0]
    # Selection never read a test set: the selected epoch is the one with the best valid loss.
    lineage_run = client.get_run(outcome.lineage_id)
    assert lineage_run.data.metrics["test_pairs/psalms"] == 30 and lineage_run.data.metrics["test_pairs/cor"] == 40
    assert "train_test_overlap" in lineage_run.data.metrics
    data_files = {a.path for a in client.list_artifacts(outcome.lineage_id, "data/test")}
    assert {"data/test/cor.jsonl", "data/test/psalms.jsonl"} <= data_files


def test_signatures_and_languages_are_tags_of_every_run_and_printed(lineage):
    outcome, info, printed = lineage
    client = mlflow_client(outcome.tracking_uri)
    for run_id in [outcome.lineage_id, *outcome.run_ids]:
        tags = client.get_run(run_id).data.tags
        assert "tok:intl" in tags["mgkd.bleu_signature"] and "nrefs:1" in tags["mgkd.bleu_signature"]
        assert "nw:2" in tags["mgkd.chrf_signature"]
        assert tags["mgkd.source_lang"] == "en" and tags["mgkd.target_lang"] == "fr"
    sig = client.get_run(outcome.lineage_id).data.tags["mgkd.bleu_signature"]
    assert sig in printed.split("lineage " + outcome.lineage_id)[-1]  # under the final table


def test_evaluate_scores_a_named_set_as_the_run_did(lineage, tmp_path):
    outcome, info, _ = lineage
    report = evaluate_ensemble(outcome.tracking_uri, outcome.lineage_id, None, [0, 1], split="test/psalms",
                               output_dir=outcome.output_dir, log=False)  # fmt: skip
    logged = {g["generation"]: g["metrics"] for g in info["generations"]}
    for row in report.rows[:2]:  # each generation alone: the same decode and scoring as its run's
        assert row["bleu"] == pytest.approx(logged[row["generation"]]["test_bleu/psalms"])
        assert row["chrf"] == pytest.approx(logged[row["generation"]]["test_chrf/psalms"])
    with pytest.raises(MgkdError, match="no test set 'test/news'; its named sets: test/cor, test/psalms"):
        evaluate_ensemble(outcome.tracking_uri, outcome.lineage_id, None, [0, 1], split="test/news",
                          output_dir=outcome.output_dir, log=False)  # fmt: skip
