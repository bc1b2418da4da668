"""The unit layer's rule, checked at collection: no Ray, no MLflow server (no subprocess either: kept by review)."""

from __future__ import annotations

from pathlib import Path

import pytest

# Fixtures that start Ray or a tracking server: tests that need them belong in tests/integration or tests/faults.
HEAVY_FIXTURES = {"ray_session", "server"}
UNIT = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stop before anything starts (a session-scoped Ray would start before any function-scoped check)."""
    for item in items:
        heavy = HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))
        if heavy and UNIT in item.path.parents:
            names = ", ".join(sorted(heavy))
            raise pytest.UsageError(f"{item.nodeid} uses {names}: move it to tests/integration or tests/faults")
