"""What tests/{integration,unit}/test_bad_input.py share: what more than one layer uses."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from mgkd.cli import app

runner = CliRunner()


def _run(tmp_path: Path, *args: str):
    result = runner.invoke(app, ["run", "--output-dir", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())
