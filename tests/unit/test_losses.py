import math

import pytest
import torch

from mgkd.config import LossTerm
from mgkd.errors import MgkdError
from mgkd.losses import Criterion, create
from mgkd.losses.soft_label import soft_label_kd
from mgkd.models.transformer import Seq2SeqOutput
from mgkd.tasks.translation import PAD, Batch


def _batch(tgt_out: list[list[int]]) -> Batch:
    t = torch.tensor(tgt_out)
    return Batch(list(range(len(tgt_out))), t, t, t)


def test_label_smoothing_by_hand():
    # one sentence, two real tokens and one pad; vocabulary of 4
    logits = torch.tensor([[[2.0, 0.0, 1.0, 0.0], [0.0, 3.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]])
    batch = _batch([[2, 1, PAD]])
    s = 0.2
    loss = create(LossTerm(name="label_smoothing", params={"smoothing": s}))(Seq2SeqOutput(logits), None, batch)

    def term(row, gold):
        z = math.log(sum(math.exp(x) for x in row))
        logp = [x - z for x in row]
        return (1 - s) * -logp[gold] + s * sum(-lp for lp in logp) / len(row)

    expected = (term([2.0, 0.0, 1.0, 0.0], 2) + term([0.0, 3.0, 0.0, 0.0], 1)) / 2  # the pad row is ignored
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_soft_label_kd_by_hand():
    t = 2.0
    student = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [5.0, -5.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [-5.0, 5.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])

    def softmax(row):
        e = [math.exp(x / t) for x in row]
        return [x / sum(e) for x in e]

    def kl(p_t, p_s):
        return sum(a * math.log(a / b) for a, b in zip(p_t, p_s))

    per_token = [kl(softmax(teacher[0, i].tolist()), softmax(student[0, i].tolist())) for i in range(2)]
    expected = sum(per_token) / 2 * t * t
    assert soft_label_kd(student, teacher, mask, t).item() == pytest.approx(expected, rel=1e-6)


def test_soft_label_ignores_padding_and_is_zero_for_equal_models():
    torch.manual_seed(0)
    student = torch.randn(2, 5, 7)
    teacher = torch.randn(2, 5, 7)
    tgt = [[3, 4, 5, PAD, PAD], [3, 4, 5, 6, 4]]
    plugin = create(LossTerm(name="soft_label", params={"temperature": 1.5}))
    base = plugin(Seq2SeqOutput(student), Seq2SeqOutput(teacher), _batch(tgt))
    # changing logits at padded positions changes nothing
    s2, t2 = student.clone(), teacher.clone()
    s2[0, 3:] += 100.0
    t2[0, 3:] -= 50.0
    assert plugin(Seq2SeqOutput(s2), Seq2SeqOutput(t2), _batch(tgt)).item() == pytest.approx(base.item(), rel=1e-6)
    assert plugin(Seq2SeqOutput(teacher), Seq2SeqOutput(teacher), _batch(tgt)).item() == pytest.approx(0.0, abs=1e-6)


def test_criterion_is_the_weighted_sum_and_reports_teacher_needs():
    torch.manual_seed(1)
    s, te = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    batch = _batch([[1, 2, PAD]])
    crit = Criterion([LossTerm(name="label_smoothing", weight=0.3, params={"smoothing": 0.0}),
                      LossTerm(name="soft_label", weight=0.7, params={"temperature": 3.0})])  # fmt: skip
    total, parts = crit(Seq2SeqOutput(s), Seq2SeqOutput(te), batch)
    assert total.item() == pytest.approx(0.3 * parts["label_smoothing"].item() + 0.7 * parts["soft_label"].item())
    assert crit.teacher_needs.logits and not crit.teacher_needs.hidden
    assert not Criterion([LossTerm(name="label_smoothing")]).teacher_needs.any


def test_bad_plugin_parameters():
    with pytest.raises(MgkdError, match="temperature"):
        create(LossTerm(name="soft_label", params={"temperature": -1}))
    with pytest.raises(MgkdError, match="registered losses"):
        create(LossTerm(name="nope"))
