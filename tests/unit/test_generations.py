"""The invariants of DESIGN.md that one generation holds."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from rich.console import Console

from mgkd.config import LossTerm
from mgkd.generations import build_schedule, train_generation
from mgkd.generations.checkpoint import load_checkpoint, parameter_hash, sha256_file
from mgkd.generations.teacher import build_student
from mgkd.losses import LossPlugin, TeacherNeeds, register
from mgkd.orchestration.display import lineage_table
from mgkd.tasks.translation import TRANSLATION, SplitData

from ..helpers import tiny_config

SEEN: list[bool] = []


@register
class ProbeTeacher(LossPlugin):
    """Test plugin: records whether the teacher's outputs carry gradients."""

    name = "test_probe_teacher"
    description = "records teacher.logits.requires_grad"
    teacher_needs = TeacherNeeds(logits=True)

    def __call__(self, student, teacher, batch):
        SEEN.append(teacher.logits.requires_grad)
        return student.logits.sum() * 0.0


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_data):
    tmp = tmp_path_factory.mktemp("gen")
    cfg = tiny_config(tmp, "generations.count=1")
    specs = build_schedule(cfg)
    return cfg, specs, train_generation(specs[0], tiny_data, tmp / "g0")


def test_teacher_is_frozen_while_its_student_trains(teacher_run, tiny_data, tmp_path):
    cfg, specs, g0 = teacher_run
    before_file = sha256_file(Path(g0.checkpoint))
    teacher, _ = load_checkpoint(Path(g0.checkpoint), g0.checkpoint_sha256)
    spec = replace(specs[1], losses=[*specs[1].losses, LossTerm(name="test_probe_teacher")])
    SEEN.clear()
    g1 = train_generation(spec, tiny_data, tmp_path / "g1", g0.checkpoint, g0.checkpoint_sha256)
    # hashed before and after training inside train_generation; equal to the checkpoint's weights
    assert g1.teacher_hash == parameter_hash(teacher)
    assert sha256_file(Path(g0.checkpoint)) == before_file == g0.checkpoint_sha256
    assert SEEN and not any(SEEN)  # teacher forward ran under no_grad at every step
    assert g1.checkpoint_sha256 != g0.checkpoint_sha256


def test_a_generation_records_its_size_on_disk_and_decode_speed_and_the_table_shows_them(teacher_run):
    _, specs, g0 = teacher_run
    size, speed = g0.metrics["model_size_bytes"], g0.metrics["decode_sentences_per_s"]
    assert size == Path(g0.checkpoint).stat().st_size > 0  # the checkpoint file's bytes, not the parameters'
    assert speed > 0
    console = Console(record=True, width=240)
    console.print(lineage_table(specs[:1], [g0], "t", task=TRANSLATION))
    text = console.export_text()
    assert "size on disk" in text and "test decode" in text
    assert f"{size / 1e6:.2f} MB" in text and f"{speed:.1f} sent/s" in text


def test_student_is_a_new_object_with_copied_tensors(teacher_run):
    cfg, specs, g0 = teacher_run
    teacher, _ = load_checkpoint(Path(g0.checkpoint))
    spec = replace(specs[1], init="teacher")
    student = build_student(spec, teacher.vocab_size, teacher)
    assert student is not teacher
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    for name, p in s_params.items():
        assert torch.equal(p, t_params[name])
        assert p.data_ptr() != t_params[name].data_ptr()
    before = parameter_hash(teacher)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    student(torch.tensor([[5, 6, 3]]), torch.tensor([[2, 7]])).logits.sum().backward()
    opt.step()
    assert parameter_hash(teacher) == before and parameter_hash(student) != before
    scratch = build_student(replace(specs[1], init="scratch"), teacher.vocab_size, teacher)
    assert not torch.equal(scratch.embed.weight, teacher.embed.weight)


def test_selection_never_reads_the_test_split_and_runs_are_deterministic(teacher_run, tiny_data, tmp_path):
    cfg, specs, g0 = teacher_run
    test = tiny_data.splits["test"]
    poisoned = SplitData(
        test.ids, ["x"] * len(test), ["y"] * len(test), [test.src[0]] * len(test), [test.tgt[0]] * len(test)
    )
    other = replace(tiny_data, splits={**tiny_data.splits, "test": poisoned})
    again = train_generation(specs[0], other, tmp_path / "again")
    # same seed, same data except the test split -> the same selected checkpoint, the same valid metrics
    assert again.checkpoint_sha256 == g0.checkpoint_sha256
    for key in ("best_valid_loss", "best_epoch", "steps"):
        assert again.metrics[key] == g0.metrics[key]
    assert again.metrics["test_bleu"] != g0.metrics["test_bleu"] or g0.metrics["test_bleu"] == 0.0


def test_checkpoint_refuses_pickled_code_and_corruption(tmp_path, teacher_run):
    import pickle

    from mgkd.errors import MgkdError

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "x", "payload": Evil()}))
    with pytest.raises(MgkdError, match="cannot be loaded safely"):
        load_checkpoint(evil)
    _, _, g0 = teacher_run
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(Path(g0.checkpoint).read_bytes()[:1000])
    with pytest.raises(MgkdError, match="cannot be loaded safely"):
        load_checkpoint(truncated)
    with pytest.raises(MgkdError, match="expected"):
        load_checkpoint(truncated, g0.checkpoint_sha256)
    with pytest.raises(MgkdError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
