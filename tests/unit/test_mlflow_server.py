"""The lineage record against a real `mlflow server` over HTTP, `mgkd ui`, and the UI in a real browser."""

from __future__ import annotations

import time

import pytest
from rich.console import Console

from mgkd.errors import MgkdError
from mgkd.orchestration.controller import run_lineage

from ..helpers import free_port, tiny_config


def test_unreachable_server_fails_before_training(tmp_path):
    cfg = tiny_config(tmp_path, f"tracking.uri=http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(MgkdError, match="unreachable"):
        run_lineage(cfg, Console(quiet=True))
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "lineages").exists() and not (tmp_path / "cache").exists()
