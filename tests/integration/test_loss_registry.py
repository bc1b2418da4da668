"""The loss-plugin registry: a third-party plugin installed as a distribution, `mgkd losses`, config errors,
views and schedules in the criterion, and soft-label's top-k and temperature schedule."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mgkd.config import LossTerm
from mgkd.generations import build_schedule
from mgkd.losses import Criterion, registry
from mgkd.models.transformer import Seq2SeqOutput
from mgkd.tasks.translation import PAD

from ..helpers import tiny_config
from ..helpers.loss_registry import _batch


def test_third_party_plugin_through_entry_point(installed_plugin, tmp_path):
    plugins = registry()
    assert "logit_norm" in plugins and plugins["logit_norm"].__module__ == "mgkd_logit_norm"
    assert {"label_smoothing", "soft_label"} <= set(plugins)
    # a config can name it and weight it like a built-in one
    crit = Criterion([LossTerm(name="label_smoothing"), LossTerm(name="logit_norm", weight=0.5, params={"scale": 2})])
    logits = torch.tensor([[[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]])
    total, parts = crit(Seq2SeqOutput(logits), None, _batch([[1, PAD]]))
    assert parts["logit_norm"].item() == pytest.approx(2 * (1 + 4 + 0) / 3)
    assert total.item() == pytest.approx(parts["label_smoothing"].item() + 0.5 * parts["logit_norm"].item())
    cfg = tiny_config(tmp_path, 'generations.student.losses=[{"name": "logit_norm"}, {"name": "label_smoothing"}]')
    assert [t.name for t in build_schedule(cfg)[1].losses] == ["logit_norm", "label_smoothing"]

    # `mgkd losses` (a fresh process) lists it next to the built-in ones
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_plugin), *sys.path])}
    out = subprocess.run(
        [sys.executable, "-m", "mgkd.cli", "losses", "--json"], capture_output=True, text=True, env=env, check=True
    ).stdout
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["logit_norm"]["parameters"] == {"scale": 1.0}
    assert rows["logit_norm"]["module"] == "mgkd_logit_norm"
    assert rows["soft_label"]["teacher_needs"] == ["logits"]
    assert rows["label_smoothing"]["view"] == "gold"


def test_losses_command_lists_views_and_needs():
    out = subprocess.run(
        [sys.executable, "-m", "mgkd.cli", "losses"], capture_output=True, text=True, check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout  # fmt: skip
    assert "label_smoothing" in out and "soft_label" in out and "temperature=2.0" in out
