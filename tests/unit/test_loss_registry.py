"""The loss-plugin registry: a third-party plugin installed as a distribution, `mgkd losses`, config errors,
views and schedules in the criterion, and soft-label's top-k and temperature schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mgkd.losses.base as base
from mgkd.config import LossTerm
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule
from mgkd.losses import Criterion, LossPlugin, create, registry
from mgkd.losses.soft_label import soft_label_kd, top_k_kd
from mgkd.models.transformer import Seq2SeqOutput

from ..helpers import tiny_config
from ..helpers.loss_registry import _batch


def test_broken_entry_point_is_a_clear_error(installed_plugin):
    (installed_plugin / "mgkd_logit_norm-0.1.dist-info" / "entry_points.txt").write_text(
        "[mgkd.losses]\nbroken = mgkd_no_such_module:Nope\n"
    )
    with pytest.raises(MgkdError, match="broken.*failed to load"):
        registry()


def test_unknown_plugin_in_config_fails_before_training(tmp_path):
    cfg = tiny_config(tmp_path, 'generations.student.losses=[{"name": "soft_labels"}]')
    with pytest.raises(MgkdError, match=r"generation 1: unknown loss 'soft_labels'; registered losses: .*soft_label"):
        build_schedule(cfg)
    cfg = tiny_config(tmp_path, 'generations.student.losses=[{"name": "soft_label", "params": {"temp": 2}}]')
    with pytest.raises(MgkdError, match="no parameter.*temp.*temperature"):
        build_schedule(cfg)
    cfg = tiny_config(tmp_path, 'generations.teacher.losses=[{"name": "soft_label"}]')
    with pytest.raises(MgkdError, match="generations.teacher: .*soft_label need a teacher"):
        build_schedule(cfg)


# -- the criterion: views, schedules ----------------------------------------------


class _Phased(LossPlugin):
    name = "phased_test"
    description = "test double: exclusive during the first half"

    def __call__(self, student, teacher, batch):
        return student.logits.sum() * 0 + 1.0

    def exclusive(self) -> bool:
        return self.progress < 0.5

    def scale(self) -> float:
        return 0.0 if self.progress >= 0.5 else 1.0


def test_exclusive_phase_silences_the_other_terms(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", {**base._REGISTRY, "phased_test": _Phased})
    crit = Criterion([LossTerm(name="label_smoothing", weight=0.7), LossTerm(name="phased_test", weight=2.0)])
    logits = torch.randn(1, 2, 5)
    crit.set_progress(0.2)
    assert crit.weights() == {"label_smoothing": 0.0, "phased_test": 2.0}
    total, parts = crit(Seq2SeqOutput(logits), None, _batch([[1, 2]]))
    assert set(parts) == {"phased_test"} and total.item() == pytest.approx(2.0)
    crit.set_progress(0.6)
    assert crit.weights() == {"label_smoothing": 0.7, "phased_test": 0.0}
    total, parts = crit(Seq2SeqOutput(logits), None, _batch([[1, 2]]))
    assert total.item() == pytest.approx(0.7 * parts["label_smoothing"].item())


def test_terms_on_other_views_read_their_own_batch():
    class OnUnlabeled(LossPlugin):
        name = "on_unlabeled"
        description = "test double"
        view = "unlabeled"

        def __call__(self, student, teacher, batch):
            return student.logits.sum()

    base._REGISTRY["on_unlabeled"] = OnUnlabeled
    try:
        crit = Criterion([LossTerm(name="label_smoothing"), LossTerm(name="on_unlabeled", weight=0.5)])
        assert crit.views == ["gold", "unlabeled"]
        gold = (Seq2SeqOutput(torch.zeros(1, 1, 3)), None, _batch([[1]]))
        unl = (Seq2SeqOutput(torch.ones(1, 1, 3)), None, _batch([[2]]))
        total, parts = crit(None, views={"gold": gold, "unlabeled": unl})
        assert parts["on_unlabeled"].item() == 3.0
        assert total.item() == pytest.approx(math.log(3) + 1.5)
        with pytest.raises(ValueError, match="view 'unlabeled'"):
            crit(None, views={"gold": gold})
    finally:
        del base._REGISTRY["on_unlabeled"]


def test_duplicate_terms_are_refused():
    with pytest.raises(MgkdError, match="distinct names"):
        Criterion([LossTerm(name="label_smoothing"), LossTerm(name="label_smoothing")])


# -- soft_label: top-k and the temperature schedule -------------------------------


def test_top_k_with_the_whole_vocabulary_equals_full_kd():
    torch.manual_seed(3)
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    values, indices = F.log_softmax(t, -1).topk(6, -1)
    assert top_k_kd(s, values, indices, mask, 2.0).item() == pytest.approx(
        soft_label_kd(s, t, mask, 2.0).item(), rel=1e-5
    )


def test_top_k_kd_by_hand():
    # vocabulary 3, k = 2: the teacher's two best tokens, renormalised at T; the student's full log-softmax at T
    temp = 2.0
    s = torch.tensor([[[1.0, 0.0, -1.0]]])
    t = torch.tensor([[[2.0, 1.0, -3.0]]])
    plugin = create(LossTerm(name="soft_label", params={"temperature": temp, "top_k": 2}))
    got = plugin(Seq2SeqOutput(s), Seq2SeqOutput(t), _batch([[1]])).item()
    pt = [math.exp(2.0 / temp), math.exp(1.0 / temp)]
    pt = [x / sum(pt) for x in pt]
    zs = sum(math.exp(x / temp) for x in (1.0, 0.0, -1.0))
    ps = [math.exp(1.0 / temp) / zs, math.exp(0.0 / temp) / zs]
    expected = sum(a * math.log(a / b) for a, b in zip(pt, ps)) * temp * temp
    assert got == pytest.approx(expected, rel=1e-6)
    assert plugin.teacher_needs.top_k == 2 and not plugin.teacher_needs.logits
    # a cached teacher (top-k log-probs + indices, no logits) gives the same value
    logp = F.log_softmax(t, -1)
    values, indices = logp.topk(2, -1)
    cached = Seq2SeqOutput(torch.empty(0), topk_logprobs=values.half().float(), topk_indices=indices)
    assert plugin(Seq2SeqOutput(s), cached, _batch([[1]])).item() == pytest.approx(expected, rel=1e-3)


def test_temperature_schedule_is_linear_in_progress():
    plugin = create(LossTerm(name="soft_label", params={"temperature": 4.0, "final_temperature": 1.0}))
    values = []
    for p in (0.0, 0.5, 1.0):
        plugin.set_progress(p)
        values.append(plugin.current_temperature())
    assert values == [4.0, 2.5, 1.0]
    s, t = torch.randn(1, 2, 5), torch.randn(1, 2, 5)
    plugin.set_progress(0.5)
    got = plugin(Seq2SeqOutput(s), Seq2SeqOutput(t), _batch([[1, 2]])).item()
    assert got == pytest.approx(soft_label_kd(s, t, torch.ones(1, 2, dtype=torch.bool), 2.5).item(), rel=1e-6)
    with pytest.raises(MgkdError, match="temperatures must be > 0"):
        create(LossTerm(name="soft_label", params={"final_temperature": 0}))
