"""Schedules (born_again, shrink, per-generation lists) and layer cutting."""

from __future__ import annotations

import pytest
import torch

from mgkd.config import ModelConfig
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule
from mgkd.generations.teacher import build_student
from mgkd.models import build_model
from mgkd.models.cutting import cut_layers, plan_cut, select_layers

from ..helpers import tiny_config


def test_select_layers():
    assert select_layers("first", 6, 3) == [1, 2, 3]
    assert select_layers("every_other", 6, 3) == [1, 3, 5]
    assert select_layers("spread", 6, 3) == [2, 4, 6]
    assert select_layers("spread", 6, 2) == [3, 6]
    assert select_layers([6, 1], 6, 2) == [6, 1]
    with pytest.raises(MgkdError, match="every_other fits students of up to 3"):
        select_layers("every_other", 6, 4)
    with pytest.raises(MgkdError, match=r"outside the teacher's 1..6"):
        select_layers([0, 7], 6, 2)
    with pytest.raises(MgkdError, match="use first, every_other, spread"):
        select_layers("middle", 6, 2)


def _models(enc_t=4, dec_t=4, enc_s=2, dec_s=2):
    teacher_cfg = ModelConfig(d_model=32, n_heads=2, ff_dim=64, encoder_layers=enc_t, decoder_layers=dec_t)
    student_cfg = teacher_cfg.model_copy(update={"encoder_layers": enc_s, "decoder_layers": dec_s})
    torch.manual_seed(0)
    return teacher_cfg, student_cfg, build_model(teacher_cfg, 50), build_model(student_cfg, 50)


def test_cut_copies_the_chosen_layers_and_shares_nothing():
    teacher_cfg, student_cfg, teacher, student = _models(enc_t=4, dec_t=3, enc_s=2, dec_s=2)
    plan = plan_cut({"encoder": "every_other", "decoder": [1, 3]}, student_cfg, teacher_cfg)
    assert plan == {"encoder": [1, 3], "decoder": [1, 3]}
    cut_layers(student, teacher, plan)
    t, s = teacher.state_dict(), student.state_dict()
    for j, i in enumerate(plan["encoder"]):
        for name, value in student.encoder[j].state_dict().items():
            assert torch.equal(value, teacher.encoder[i - 1].state_dict()[name]), (j, name)
    for j, i in enumerate(plan["decoder"]):
        for name, value in student.decoder[j].state_dict().items():
            assert torch.equal(value, teacher.decoder[i - 1].state_dict()[name]), (j, name)
    for name in ("embed.weight", "encoder_norm.weight", "decoder_norm.bias"):
        assert torch.equal(s[name], t[name])
    # copies: no tensor of the student shares storage with the teacher's
    teacher_ptrs = {p.data_ptr() for p in teacher.parameters()}
    assert not teacher_ptrs & {p.data_ptr() for p in student.parameters()}
    # and they stay independent after a training step
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    src = torch.randint(4, 50, (3, 7))
    tgt = torch.randint(4, 50, (3, 5))
    student(src, tgt).logits.sum().backward()
    opt.step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(student.encoder[0].ff[0].weight, teacher.encoder[0].ff[0].weight)


def test_cut_student_computes_what_the_teacher_layers_compute():
    # a student cut to the teacher's first layers with the same count is the teacher itself
    teacher_cfg, _, teacher, _ = _models()
    student = build_model(teacher_cfg, 50)
    cut_layers(student, teacher, plan_cut("first", teacher_cfg, teacher_cfg))
    teacher.eval(), student.eval()
    src, tgt = torch.randint(4, 50, (2, 6)), torch.randint(4, 50, (2, 4))
    assert torch.allclose(student(src, tgt).logits, teacher(src, tgt).logits, atol=1e-6)


def test_cut_refuses_other_widths_and_architectures():
    teacher_cfg, student_cfg, _, _ = _models()
    with pytest.raises(MgkdError, match=r"d_model \(32, student has 64\)"):
        plan_cut("first", student_cfg.model_copy(update={"d_model": 64}), teacher_cfg)


def test_shrink_schedule_cuts_layers_generation_by_generation(tmp_path):
    cfg = tiny_config(
        tmp_path, "model.encoder_layers=6", "model.decoder_layers=6", "generations.count=4",
        "generations.schedule=shrink", "generations.shrink.cut_layers=spread",
    )  # fmt: skip
    specs = build_schedule(cfg)
    assert [s.model.encoder_layers for s in specs] == [6, 4, 3, 2, 1]
    assert [s.model.decoder_layers for s in specs] == [6, 4, 3, 2, 1]
    assert [s.init for s in specs] == ["scratch", "cut", "cut", "cut", "cut"]
    # each generation is cut from its own teacher (the previous generation)
    assert [s.cut_layers["encoder"] for s in specs[1:]] == [[2, 3, 4, 6], [1, 3, 4], [2, 3], [2]]
    assert specs[1].as_params()["cut_layers.encoder"] == [2, 3, 4, 6]


def test_shrink_by_width_starts_from_scratch(tmp_path):
    cfg = tiny_config(
        tmp_path, "model.d_model=64", "model.ff_dim=128", "generations.count=2", "generations.schedule=shrink",
        "generations.shrink.dimension=width", "generations.shrink.factor=0.5", "generations.shrink.min_d_model=16",
    )  # fmt: skip
    specs = build_schedule(cfg)
    assert [s.model.d_model for s in specs] == [64, 32, 16]
    assert [s.model.ff_dim for s in specs] == [128, 64, 32]
    assert [s.init for s in specs[1:]] == ["scratch", "scratch"]


def test_explicit_per_generation_list_overrides_the_schedule(tmp_path):
    cfg = tiny_config(
        tmp_path, "model.encoder_layers=4", "model.decoder_layers=4", "generations.count=3",
        "generations.schedule=shrink",
        'generations.per_generation={"2": {"model": {"encoder_layers": 1, "decoder_layers": 1}, "cut_layers": [3],'
        ' "train": {"max_steps": 7}, "losses": [{"name": "label_smoothing"}]}}',
    )  # fmt: skip
    specs = build_schedule(cfg)
    assert [s.model.encoder_layers for s in specs] == [4, 3, 1, 1]
    assert specs[2].cut_layers == {"encoder": [3], "decoder": [3]}
    assert specs[2].train.max_steps == 7 and [t.name for t in specs[2].losses] == ["label_smoothing"]


def test_cut_init_through_build_student(tmp_path):
    cfg = tiny_config(tmp_path, "model.encoder_layers=2", "model.decoder_layers=2", "generations.count=1",
                      "generations.schedule=shrink")  # fmt: skip
    teacher_spec, student_spec = build_schedule(cfg)
    teacher = build_model(teacher_spec.model, 60)
    student = build_student(student_spec, 60, teacher)
    assert len(student.encoder) == 1 and student is not teacher
    assert torch.equal(student.encoder[0].attn.q.weight, teacher.encoder[0].attn.q.weight)


def test_bad_cut_configs_fail_before_training(tmp_path):
    cfg = tiny_config(tmp_path, "generations.count=1", "generations.student.init=cut",
                      "generations.student.model={encoder_layers: 1, decoder_layers: 1, d_model: 64}")  # fmt: skip
    with pytest.raises(MgkdError, match="generation 1: init: cut copies whole layers"):
        build_schedule(cfg)
    cfg = tiny_config(tmp_path, "generations.count=1", "generations.student.init=teacher",
                      "generations.student.model={encoder_layers: 2}")  # fmt: skip
    with pytest.raises(MgkdError, match="init 'teacher' copies.*init: cut"):
        build_schedule(cfg)
