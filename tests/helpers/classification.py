"""What tests/{faults,unit}/test_classification.py share: what more than one layer uses."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "classification.yaml"
