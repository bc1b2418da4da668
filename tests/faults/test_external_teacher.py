"""An external generation 0: a Hugging Face seq2seq folder (here a tiny random Marian) teaching through its text."""

from __future__ import annotations

import pytest
from rich.console import Console

pytest.importorskip("transformers")

from mgkd.errors import MgkdError  # noqa: E402
from mgkd.lineage.tracking import mlflow_client, read_lineage  # noqa: E402
from mgkd.orchestration.controller import resume_lineage  # noqa: E402

# transformers' Marian tokenizer asks for sacremoses, which it does not need for this.
pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_resume_reuses_the_external_generation_and_refuses_a_changed_one(external_lineage):
    cfg, folder, outcome, info = external_lineage
    client = mlflow_client(outcome.tracking_uri)
    client.set_terminated(outcome.lineage_id, "KILLED")  # as if the driver died after the last generation
    config = folder / "config.json"
    original = config.read_bytes()
    config.write_bytes(original.replace(b"\n", b"\n ", 1))
    try:
        with pytest.raises(MgkdError, match="changed since lineage"):
            resume_lineage(str(cfg.output_dir), console=Console(quiet=True))
    finally:
        config.write_bytes(original)
    again = resume_lineage(str(cfg.output_dir), console=Console(quiet=True))
    assert again.run_ids == outcome.run_ids and again.results[0].checkpoint == str(folder)
    assert read_lineage(outcome.tracking_uri, outcome.lineage_id)["status"] == "FINISHED"
