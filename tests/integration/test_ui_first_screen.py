"""What a new user first sees: `mgkd ui` over a finished lineage, the URL it prints opened as printed in a fresh
Chromium profile. The first screen is the lineage run in MLflow's "Model training" view with the generation
table (each generation's row and its BLEU) in its description, not the GenAI side and its pop-ups."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from mgkd.lineage.note import run_url
from mgkd.lineage.tracking import read_lineage
from mgkd.orchestration.controller import run_lineage

from ..helpers import free_port, stop, tiny_config, wait_for_health
from ..helpers.browser import CHROMIUM_ARGS, chromium_or_skip, screenshots_dir

SCREEN = {"width": 1920, "height": 1080}  # a common desktop screen: the run page shows its description first

# Where a cell is drawn, and whether all of it lies inside the viewport and inside every clipping ancestor
# (the description shows its first 100 px until "Show more").
ON_SCREEN = """c => {
    const r = c.getBoundingClientRect();
    let inside = r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth && r.height > 0;
    for (let a = c.parentElement; a; a = a.parentElement) {
        if (getComputedStyle(a).overflow === 'visible') continue;
        const b = a.getBoundingClientRect();
        inside = inside && r.top >= b.top && r.bottom <= b.bottom && r.left >= b.left && r.right <= b.right;
    }
    return inside;
}"""


@pytest.fixture(scope="module")
def finished_lineage(tmp_path_factory):
    """A finished 3-generation lineage in its own output folder's sqlite store (what `mgkd ui` serves)."""
    cfg = tiny_config(tmp_path_factory.mktemp("ui-lineage"), "generations.count=2", "ray.enabled=false")
    outcome = run_lineage(cfg, Console(quiet=True))
    return cfg, outcome, read_lineage(outcome.tracking_uri, outcome.lineage_id)


def _printed_url(log: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("lineage: "):
                return line.removeprefix("lineage: ").strip()
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"`mgkd ui` printed no lineage URL:\n{log.read_text()}")


def test_the_url_mgkd_ui_prints_opens_on_the_generation_table(finished_lineage, tmp_path):
    exe, playwright = chromium_or_skip()
    cfg, outcome, info = finished_lineage
    shots = screenshots_dir(tmp_path)
    port = free_port()
    log_path = tmp_path / "ui.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mgkd.cli", "ui", "--output-dir", str(cfg.output_dir),
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = _printed_url(log_path, proc)
        assert url == run_url(f"http://127.0.0.1:{port}", info["experiment_id"], outcome.lineage_id)
        wait_for_health(f"http://127.0.0.1:{port}", proc)
        gens = info["generations"]
        with playwright.sync_playwright() as p:
            # A fresh profile: no remembered GenAI / Model training choice, no dismissed pop-ups.
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=exe, headless=True, args=CHROMIUM_ARGS, viewport=SCREEN
            )
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.goto(url)  # exactly what was printed
                # The generation table: the description's Markdown, rendered.
                table = page.locator("table").filter(has=page.locator("th", has_text="test BLEU"))
                table.locator("td a").first.wait_for(timeout=90_000)
                page.wait_for_timeout(2_000)  # let late pop-ups and panels appear before judging the screen
                page.screenshot(path=str(shots / "ui-first-screen.png"))

                body = page.inner_text("body")
                assert "Detect Issues" not in body and "Evaluation runs" not in body, "the GenAI side opened"
                # The Model training view's breadcrumb (the GenAI view's reads "Evaluations").
                assert page.get_by_role("link", name="Runs", exact=True).count() >= 1
                header = table.locator("th").evaluate_all("hs => hs.map(h => h.innerText.trim())")
                assert header[:6] == ["gen", "architecture", "params", "valid loss", "test BLEU", "test chrF"]
                bleu_col = header.index("test BLEU")
                table_rows = table.locator("tr").filter(has=page.locator("td"))
                assert table_rows.count() == len(gens) == 3
                for g, row in zip(gens, table_rows.all()):
                    cells = row.locator("td")
                    link = cells.nth(0).locator("a")
                    assert link.inner_text() == str(g["generation"])
                    assert f"/runs/{g['run_id']}?workflowType=machine_learning" in link.get_attribute("href")
                    bleu = cells.nth(bleu_col)
                    assert bleu.inner_text() == f"{g['metrics']['test_bleu']:.2f}"
                    # On the first screen: no click, no scroll, not cut off by the description's fold.
                    assert bleu.evaluate(ON_SCREEN) and cells.nth(0).evaluate(ON_SCREEN), g["generation"]

                # "Show more": the whole note, the plot (served by the UI's own server) and the links.
                page.get_by_role("button", name="Expand description").click()
                plot = page.locator('img[src*="get-artifact?path=lineage.png"]')
                page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=plot.element_handle(),
                                       timeout=30_000)  # fmt: skip
                page.screenshot(path=str(shots / "ui-description.png"), full_page=True)
                last = gens[-1]
                with context.expect_page() as opened:  # MLflow opens a description's links in a new tab
                    table.locator("td a").nth(len(gens) - 1).click()
                gen_page = opened.value
                gen_page.get_by_text("Registered models").first.wait_for(timeout=60_000)
                gen_page.get_by_text(f"v{last['generation'] + 1}", exact=True).first.wait_for(timeout=60_000)
                gen_page.get_by_text("Logged models (1)").first.wait_for(timeout=60_000)
                text = gen_page.inner_text("body")
                assert last["run_name"] in text and last["run_id"] in text
                gen_page.screenshot(path=str(shots / "ui-generation.png"))
            finally:
                context.close()
    finally:
        stop(proc)
    out = log_path.read_text()
    assert proc.returncode == 0 and "MLflow UI stopped." in out, out
