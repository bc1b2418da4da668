"""What tests/{integration,unit}/test_loss_registry.py share: what more than one layer uses."""

from __future__ import annotations

import pytest
import torch

import mgkd.losses.base as base
from mgkd.tasks.translation import Batch

PLUGIN_SOURCE = '''
import torch
from mgkd.losses import LossPlugin, TeacherNeeds


class LogitNorm(LossPlugin):
    """A third-party term: mean squared logit of the student (a toy regulariser)."""

    name = "logit_norm"
    description = "mean squared student logit over non-padding tokens"

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale_ = scale

    def __call__(self, student, teacher, batch):
        mask = batch.tgt_out.ne(0).unsqueeze(-1).float()
        return self.scale_ * (student.logits.pow(2) * mask).sum() / (mask.sum() * student.logits.size(-1))
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution `mgkd-logit-norm` with an `mgkd.losses` entry point, installed on sys.path
    the way pip lays it out (module + dist-info with entry_points.txt)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "mgkd_logit_norm.py").write_text(PLUGIN_SOURCE)
    info = site / "mgkd_logit_norm-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mgkd-logit-norm\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mgkd.losses]\nlogit_norm = mgkd_logit_norm:LogitNorm\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(base, "_entry_points_loaded", False)
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    return site


def _batch(tgt: list[list[int]]) -> Batch:
    t = torch.tensor(tgt)
    return Batch(list(range(len(tgt))), t, t, t)
