"""The lineage record against a real `mlflow server` over HTTP, `mgkd ui`, and the UI in a real browser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console

from mgkd.generations.checkpoint import sha256_file
from mgkd.lineage.note import run_url
from mgkd.lineage.tracking import mlflow_client, read_lineage
from mgkd.orchestration.controller import run_lineage

from ..helpers import free_port, stop, tiny_config, wait_for_health
from ..helpers.browser import CHROMIUM_ARGS, chromium_or_skip, screenshots_dir


@pytest.fixture(scope="module")
def http_lineage(server, tmp_path_factory, ray_session):
    url, _ = server
    cfg = tiny_config(tmp_path_factory.mktemp("http-lineage"), "generations.count=2", f"tracking.uri={url}")
    outcome = run_lineage(cfg, Console(quiet=True))
    return cfg, outcome, read_lineage(url, outcome.lineage_id)


def test_record_over_http(http_lineage, tmp_path):
    cfg, outcome, info = http_lineage
    client = mlflow_client(outcome.tracking_uri)
    assert outcome.tracking_uri.startswith("http://127.0.0.1:")
    parent = client.get_run(outcome.lineage_id)
    # one experiment per config name, one parent run, one child per generation
    assert client.get_experiment(parent.info.experiment_id).name == cfg.name
    assert [g["generation"] for g in info["generations"]] == [0, 1, 2]
    for g in info["generations"]:
        run = client.get_run(g["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == outcome.lineage_id

    # params: the full resolved config on the parent, the generation spec on each child
    assert parent.data.params["generations.count"] == "2"
    assert parent.data.params["model.d_model"] == "32"
    assert parent.data.params["corpus.kind"] == "builtin"
    child = client.get_run(info["generations"][1]["run_id"])
    assert child.data.params["init"] == "teacher" and child.data.params["loss.soft_label.temperature"] == "2.0"

    # metrics: per step, per epoch, final, size, time, decoding speed
    for g in info["generations"]:
        m = g["metrics"]
        for key in (
            "test_bleu",
            "test_chrf",
            "parameters",
            "train_time_s",
            "decode_sentences_per_s",
            "model_size_bytes",
            "best_valid_loss",
        ):
            assert key in m, key
        assert len(client.get_metric_history(g["run_id"], "loss")) >= 2
        assert len(client.get_metric_history(g["run_id"], "valid_loss")) == 2  # one per epoch
    assert "loss.soft_label" in info["generations"][2]["metrics"]
    assert "wall_time_s" in parent.data.metrics

    test_inputs = [d for d in parent.inputs.dataset_inputs if d.dataset.name == f"{cfg.name}-test"]
    test_rows = json.loads(test_inputs[0].dataset.profile)["num_rows"]

    # artifacts: checkpoint, tokenizer, spec, samples (first 50 of the test split), translations; on the parent
    # the resolved config, the data, the plot
    for g in info["generations"]:
        top = {a.path for a in client.list_artifacts(g["run_id"])}
        assert {"checkpoint", "tokenizer", "spec.json", "samples", "test_translations.tsv"} <= top
        local = client.download_artifacts(g["run_id"], "checkpoint/checkpoint.pt", str(tmp_path))
        assert sha256_file(Path(local)) == g["checkpoint_sha256"]
        samples = json.loads(
            Path(client.download_artifacts(g["run_id"], "samples/test_first50.json", str(tmp_path))).read_text()
        )
        assert samples["columns"] == ["source", "reference", "hypothesis"]
        assert len(samples["data"]) == min(50, test_rows) > 0
    parent_artifacts = {a.path for a in client.list_artifacts(outcome.lineage_id)}
    assert {"config.yaml", "lineage.png", "data", "tokenizer"} <= parent_artifacts
    png = Path(client.download_artifacts(outcome.lineage_id, "lineage.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # lineage edges as tags
    gens = info["generations"]
    for prev, cur in zip(gens, gens[1:]):
        tags = client.get_run(cur["run_id"]).data.tags
        assert tags["mgkd.teacher_run_id"] == prev["run_id"]
        assert tags["mgkd.teacher_checkpoint_sha256"] == prev["checkpoint_sha256"]
        assert tags["mgkd.lineage_id"] == outcome.lineage_id and tags["mgkd.generation"] == str(cur["generation"])

    # the model registry: one registered model per lineage, version k+1 is generation k, same tags
    model_name = parent.data.tags["mgkd.registered_model"]
    versions = sorted(client.search_model_versions(f"name='{model_name}'"), key=lambda v: int(v.version))
    assert [v.run_id for v in versions] == [g["run_id"] for g in gens]
    for v, g in zip(versions, gens):
        assert v.tags["mgkd.generation"] == str(g["generation"])
        assert v.tags["mgkd.checkpoint_sha256"] == g["checkpoint_sha256"]
        assert v.tags.get("mgkd.teacher_run_id") == g["teacher_run_id"]

    # datasets: the splits as dataset inputs with their content hash, on the parent and each generation
    for run_id in [outcome.lineage_id, *outcome.run_ids]:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        by_context = {[t.value for t in d.tags if t.key == "mlflow.data.context"][0]: d.dataset for d in inputs}
        assert set(by_context) == {"train", "valid", "test"}
        assert by_context["test"].name == f"{cfg.name}-test"
        assert json.loads(by_context["train"].profile)["num_rows"] > 600
        assert len(by_context["valid"].digest) >= 16


def test_mgkd_ui_serves_a_store_and_stops_on_ctrl_c(server, http_lineage, tmp_path):
    _, root = server
    name = http_lineage[0].name  # the tests' base preset's experiment (born_again_warm since main's issue 18)
    port = free_port()
    log = open(tmp_path / "ui.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mgkd.cli", "ui", "--store", str(root / "mlflow.db"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_health(f"http://127.0.0.1:{port}", proc)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}", timeout=10
        ) as r:
            assert json.loads(r.read())["experiment"]["name"] == name
    finally:
        stop(proc)
        log.close()
    out = (tmp_path / "ui.log").read_text()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/" in out and "MLflow UI stopped." in out


def test_mlflow_ui_lists_the_generations_in_a_browser(server, http_lineage, tmp_path):
    """Headless Chromium opens the experiment and sees each generation's run name and BLEU."""
    exe, playwright = chromium_or_skip()
    url, _ = server
    cfg, outcome, info = http_lineage
    client = mlflow_client(url)
    exp_id = client.get_run(outcome.lineage_id).info.experiment_id
    shots = screenshots_dir(tmp_path)
    expected = {g["run_name"]: g["metrics"]["test_bleu"] for g in info["generations"]}
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 1000})
            # The runs table ("Model training" view), sorted by test BLEU, which lists the generations flat.
            page.goto(
                f"{url}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
                "&orderByKey=metrics.%60test_bleu%60&orderByAsc=false"
            )
            page.get_by_text("gen-0-teacher").first.wait_for(timeout=60_000)
            # Show the test_bleu column, as a user does through "Columns".
            page.get_by_role("button", name="Columns").click()
            page.keyboard.type("test_bleu")
            page.locator("span").filter(has_text=re.compile(r"^test_bleu$")).last.click()
            page.keyboard.press("Escape")
            page.locator('.ag-cell[col-id="metrics.`test_bleu`"]').first.wait_for(timeout=30_000)
            page.screenshot(path=str(shots / "mlflow-experiment.png"), full_page=True)
            # The grid renders run names (pinned left) and metric cells (centre) as rows with the same row-index.
            names = page.eval_on_selector_all(
                ".ag-pinned-left-cols-container .ag-row",
                "rows => rows.map(r => [r.getAttribute('row-index'), r.innerText])",
            )
            bleu = dict(
                page.eval_on_selector_all(
                    '.ag-center-cols-container .ag-cell[col-id="metrics.`test_bleu`"]',
                    "cells => cells.map(c => [c.closest('.ag-row').getAttribute('row-index'), c.innerText])",
                )
            )
            shown = {}
            for index, text in names:
                for run_name in expected:
                    if run_name in text.split("\n"):
                        shown[run_name] = float(bleu[index])
            assert set(shown) == set(expected), names
            for run_name, value in expected.items():
                assert shown[run_name] == pytest.approx(value, abs=1e-9), run_name

            # A generation's run page shows its lineage tags and its test BLEU.
            g = info["generations"][-1]
            page.goto(f"{url}/#/experiments/{exp_id}/runs/{g['run_id']}")
            page.get_by_text("test_bleu", exact=True).first.wait_for(timeout=60_000)
            text = page.inner_text("body")
            assert g["run_name"] in text and "mgkd.generation" in text
            match = re.search(r"\ntest_bleu\n(\S+)\n", text)
            assert match and float(match.group(1)) == pytest.approx(g["metrics"]["test_bleu"], abs=1e-9)
            page.screenshot(path=str(shots / "mlflow-generation.png"), full_page=True)

            # Through a tracking server whose artifacts it proxies, the lineage run's description shows the plot.
            page.goto(run_url(url, exp_id, outcome.lineage_id))
            page.get_by_role("button", name="Expand description").click()
            plot = page.locator('img[src*="get-artifact?path=lineage.png"]')
            plot.wait_for(timeout=60_000)
            page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=plot.element_handle(), timeout=30_000)
        finally:
            browser.close()
