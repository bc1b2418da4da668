"""An external generation 0: a Hugging Face seq2seq folder (here a tiny random Marian) teaching through its text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from mgkd.generations.teacher import load_teacher  # noqa: E402
from mgkd.lineage.tracking import mlflow_client  # noqa: E402
from mgkd.models import count_parameters  # noqa: E402
from mgkd.models.external import HFTeacher, folder_sha256  # noqa: E402

# transformers' Marian tokenizer asks for sacremoses, which it does not need for this.
pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_generation_0_is_the_external_model_evaluated(external_lineage, tiny_data):
    cfg, folder, outcome, info = external_lineage
    g0 = info["generations"][0]
    sha = folder_sha256(folder)
    assert g0["status"] == "FINISHED" and g0["checkpoint_sha256"] == sha == outcome.results[0].checkpoint_sha256
    assert outcome.results[0].checkpoint == str(folder)
    m = g0["metrics"]
    assert m["test_bleu"] >= 0 and m["test_chrf"] >= 0 and m["decode_sentences_per_s"] > 0 and m["steps"] == 0
    assert m["parameters"] == count_parameters(HFTeacher.load(folder))
    # its size on disk: the model folder's files (hidden ones aside, as in the folder's checksum)
    assert m["model_size_bytes"] == sum(
        f.stat().st_size
        for f in folder.rglob("*")
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts)
    )
    assert g0["params"]["model.arch"] == "hf:marian" and g0["params"]["external.num_beams"] == "2"
    client = mlflow_client(outcome.tracking_uri)
    # real decoding: the logged test translations are the model's own, one per test sentence
    local = Path(client.download_artifacts(g0["run_id"], "test_translations.tsv", str(folder.parent / "dl")))
    rows = [r.split("\t") for r in local.read_text(encoding="utf-8").splitlines()[1:]]
    teacher = HFTeacher.load(folder, sha, max_new_tokens=6)
    expect = teacher.translate_texts([r[1] for r in rows[:5]], 2, 1, cfg.eval.max_len_a, cfg.eval.max_len_b)
    assert [r[3] for r in rows[:5]] == [e[0][1] for e in expect] and len(rows) == len(tiny_data.splits["test"])
    # the folder is recorded as a manifest of its files, not copied; the registry version points at it
    assert [a.path for a in client.list_artifacts(g0["run_id"], "checkpoint")] == ["checkpoint/manifest.json"]
    assert "tokenizer" not in {a.path for a in client.list_artifacts(g0["run_id"])}
    manifest = json.loads(Path(client.download_artifacts(g0["run_id"], "checkpoint/manifest.json",
                                                         str(folder.parent / "dl"))).read_text())  # fmt: skip
    assert manifest["sha256"] == sha and {f["path"] for f in manifest["files"]} >= {"config.json", "vocab.json"}
    tags = client.get_run(g0["run_id"]).data.tags
    version = client.get_model_version(tags["mgkd.registered_model"], tags["mgkd.model_version"])
    assert version.source.endswith("/checkpoint") and version.tags["mgkd.checkpoint_sha256"] == sha


def test_students_learn_from_its_text_then_from_each_other(external_lineage, tiny_data):
    cfg, folder, outcome, info = external_lineage
    g0, g1, g2 = info["generations"]
    sha = folder_sha256(folder)
    assert g1["teacher_run_id"] == g0["run_id"] and g1["teacher_checkpoint_sha256"] == sha
    assert g2["teacher_run_id"] == g1["run_id"] and g2["teacher_checkpoint_sha256"] == g1["checkpoint_sha256"]
    client = mlflow_client(outcome.tracking_uri)
    for g, teacher_sha in ((g1, sha), (g2, g1["checkpoint_sha256"])):
        assert g["status"] == "FINISHED" and g["metrics"]["steps"] > 0 and "loss.seq_kd" in g["metrics"]
        assert g["metrics"]["seq_kd_sentences"] == 200 and g["metrics"]["test_chrf"] >= 0
        files = [a.path for a in client.list_artifacts(g["run_id"], "teacher_outputs")]
        assert len(files) == 1 and files[0].startswith(f"teacher_outputs/seq_kd-{teacher_sha[:16]}-")
    # generation 1's targets are the external model's translations of the sources (text in, text out)
    tsv = Path(outcome.results[1].artifacts[0])
    rows = [r.split("\t") for r in tsv.read_text(encoding="utf-8").splitlines()[1:4]]
    teacher = HFTeacher.load(folder, sha, max_new_tokens=6)
    expect = teacher.translate_texts([r[3] for r in rows], 2, 1, cfg.eval.max_len_a, cfg.eval.max_len_b)
    assert [r[4] for r in rows] == [e[0][1] for e in expect]
    # load_teacher knows the folder: it is the teacher of generation 1
    loaded, init_source, digest = load_teacher(str(folder), sha)
    assert isinstance(loaded, HFTeacher) and digest == sha
