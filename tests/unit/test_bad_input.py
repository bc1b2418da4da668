"""Bad input across commands: one clear error (exit 2, no traceback), before anything is written."""

from __future__ import annotations

import pytest
import torch

from mgkd.config import ModelConfig
from mgkd.errors import MgkdError
from mgkd.generations.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from mgkd.models import build_model

from ..helpers.bad_input import _run


def test_unknown_model_and_schedule_list_the_choices(tmp_path):
    assert "unknown model arch 'lstm'; known architectures: bigru, transformer, transformer_classifier" in _run(
        tmp_path, "--no-ray", "--set", "model.arch=lstm"
    )
    out = _run(tmp_path, "--no-ray", "--schedule", "grow")
    assert "generations.schedule" in out and "born_again" in out and "shrink" in out


def test_vocabulary_larger_than_the_corpus_allows(tmp_path):
    tsv = tmp_path / "small.tsv"
    tsv.write_text("".join(f"word{i} a b\tmot{i} c d\n" for i in range(60)), encoding="utf-8")
    out = _run(tmp_path, "--no-ray", "--set", "corpus.kind=tsv", "--set", f"corpus.path={tsv}",
               "--set", "tokenizer.vocab_size=4000")  # fmt: skip
    assert "tokenizer.vocab_size=4000 is too large" in out
    assert not list((tmp_path / "out").glob("lineages/*"))


def test_tracking_store_that_cannot_be_created(tmp_path):
    out = _run(tmp_path, "--no-ray", "--tracking-uri", "sqlite:////proc/mgkd-no/mlflow.db")
    assert "cannot create the folder of the MLflow store" in out
    out = _run(tmp_path, "--no-ray", "--tracking-uri", str(tmp_path / "mlruns"))
    assert "file store is deprecated" in out


def test_checkpoint_of_another_architecture_says_which(tmp_path):
    cfg = ModelConfig(d_model=32, n_heads=2, ff_dim=64, encoder_layers=1, decoder_layers=1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, build_model(cfg, 50), 50)
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["encoder_layers"] = 3  # the weights are of a 1-layer encoder
    torch.save(payload, path)
    with pytest.raises(MgkdError, match=r"does not match architecture 'transformer': missing \['encoder.1"):
        load_checkpoint(path)
    payload["format"] = "other"
    torch.save(payload, path)
    with pytest.raises(MgkdError, match=f"not an mgkd checkpoint \\(format {FORMAT} expected\\)"):
        load_checkpoint(path)


def test_a_lineage_command_on_a_moved_run_folder_names_its_store_and_creates_none(tmp_path):
    """last_lineage.json records the store's absolute path; after the folder moved, opening that path would
    create an empty store there and then report that the lineage does not exist."""
    import json

    from typer.testing import CliRunner

    from mgkd.cli import app

    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "mlflow.db").write_bytes(b"")  # the store moved with its folder
    gone = tmp_path / "old" / "mlflow.db"
    (moved / "last_lineage.json").write_text(json.dumps({"lineage_id": "abc", "tracking_uri": f"sqlite:///{gone}",
                                                         "experiment": "demo", "experiment_id": "1"}))  # fmt: skip
    for args in (["lineage", "--output-dir", str(moved)], ["lineage", "--tracking-uri", f"sqlite:///{gone}"]):
        result = CliRunner().invoke(app, args)
        out = " ".join(result.output.split())
        assert result.exit_code == 2 and "Traceback" not in out, out
        assert f"the MLflow store {gone}, which does not exist (was the run's folder moved?)" in out
    assert f"give --tracking-uri sqlite:///{(moved / 'mlflow.db').resolve()}" in " ".join(
        CliRunner().invoke(app, ["lineage", "--output-dir", str(moved)]).output.split()
    )
    assert not gone.parent.exists()  # nothing created where the store used to be
