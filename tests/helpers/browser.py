"""Headless Chromium for the MLflow UI tests: found or skipped (required where .ci/run could install it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

# No first-run dialogs, sync, component updates or background traffic: the page as a fresh profile shows it.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


def chromium_or_skip() -> tuple[str, ModuleType]:
    """(Chromium's executable, playwright.sync_api); skips without them, fails under MGKD_REQUIRE_BROWSER=1."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("MGKD_REQUIRE_BROWSER") == "1":  # .ci/run on a machine that can install it
            pytest.fail("MGKD_REQUIRE_BROWSER=1 but Chromium is not installed (Debian: apt-get install chromium)")
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    return exe, playwright


def screenshots_dir(tmp_path: Path) -> Path:
    """Where a browser test saves its screenshots: $MGKD_SCREENSHOTS, else the test's tmp folder."""
    shots = Path(os.environ.get("MGKD_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    return shots
