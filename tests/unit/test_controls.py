"""Matched controls and fair comparisons without Ray or MLflow: the twin's spec, seed pinning, the recorded
hashes, the bad input, the table and the noise-gated verdicts."""

from __future__ import annotations

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mgkd.cli import app
from mgkd.errors import MgkdError
from mgkd.generations import GenerationResult, build_schedule, train_generation
from mgkd.generations.controls import CONTROL_MAY_DIFFER, control_spec, data_order_sha256, is_distilled
from mgkd.lineage.compare import check_only, params_diff, verdict
from mgkd.orchestration.display import lineage_table
from mgkd.tasks.translation import TRANSLATION

from ..helpers import tiny_config


def _diff(a, b):
    return params_diff(a.as_params(), b.as_params(), CONTROL_MAY_DIFFER)


def test_a_control_spec_equals_its_generation_but_for_the_losses(tmp_path):
    specs = build_schedule(tiny_config(tmp_path, "generations.count=2", "generations.control=true"))
    for spec in specs[1:]:
        twin = control_spec(spec, specs[0].losses)
        assert _diff(spec, twin) == []
        assert twin.seed == spec.seed and twin.init == spec.init and twin.model == spec.model
        assert twin.train == spec.train and twin.control_of == spec.index
        # The demo student: label smoothing 0.5 + soft_label 0.5 -> label smoothing alone, at weight 1.
        assert [(t.name, t.weight, t.params) for t in twin.losses] == [("label_smoothing", 1.0, {"smoothing": 0.1})]
        assert sorted(params_diff(spec.as_params(), twin.as_params())) == [
            "loss.label_smoothing.weight", "loss.soft_label.temperature", "loss.soft_label.weight",
        ]  # fmt: skip
        assert not is_distilled(twin)


def test_a_control_held_to_the_same_batches_runs_as_many_times_longer_as_the_views_a_step_reads(tmp_path):
    cfg = tiny_config(tmp_path, "generations.count=2", "generations.control=true",
                      "generations.student.train.max_steps=40", "generations.student.train.warmup_steps=5",
                      "generations.per_generation.2.losses=[{name: label_smoothing, weight: 0.5}, "
                      "{name: seq_kd, weight: 0.5}, {name: internal, weight: 0.5}]")  # fmt: skip
    soft, seq = build_schedule(cfg)[1:]
    for spec in (soft, seq):
        assert control_spec(spec, [], budget="steps").train == spec.train
    assert control_spec(soft, [], budget="batches").train == soft.train  # one view (gold) per step: unchanged
    twin = control_spec(seq, [], budget="batches")  # gold + seq-KD batches per step: twice as long
    assert (twin.train.max_steps, twin.train.max_epochs, twin.train.warmup_steps) == (
        80, 2 * seq.train.max_epochs, 10,
    )  # fmt: skip
    assert twin.train.lr == seq.train.lr and twin.train.max_tokens == seq.train.max_tokens


def test_a_control_of_a_teacher_only_loss_takes_the_teachers_loss(tmp_path):
    cfg = tiny_config(tmp_path, "generations.count=1", "generations.student.losses=[{name: soft_label}]")
    specs = build_schedule(cfg)
    twin = control_spec(specs[1], specs[0].losses)
    assert [(t.name, t.weight) for t in twin.losses] == [(t.name, t.weight) for t in specs[0].losses]


def test_the_control_of_a_swept_generation_takes_the_winners_settings_but_not_its_losses(tmp_path):
    cfg = tiny_config(tmp_path, "generations.count=1",
                      "generations.student.search={space: {train.lr: {loguniform: [0.0001, 0.01]}, "
                      "loss.soft_label.weight: {uniform: [0.1, 0.9]}}, num_samples: 2}")  # fmt: skip
    spec = build_schedule(cfg)[1]
    twin = control_spec(spec, [], {"train.lr": 0.0042, "loss.soft_label.weight": 0.8})
    assert twin.train.lr == 0.0042 and twin.search is None
    assert [(t.name, t.weight) for t in twin.losses] == [("label_smoothing", 1.0)]


def test_a_sweeps_recorded_winner_reads_back_with_its_types():
    # What resume reads when a swept generation finished but its control did not.
    from mgkd.orchestration.controls import param_value

    assert [param_value(str(v)) for v in (1e-05, 0.003, 4, True, "cosine")] == [1e-05, 0.003, 4, True, "cosine"]


def test_a_control_of_a_cached_teacher_signal_trains_online(tmp_path):
    cfg = tiny_config(tmp_path, "generations.count=1", "generations.student.teacher_signal=cached",
                      "generations.student.losses=[{name: label_smoothing, weight: 0.5}, "
                      "{name: soft_label, weight: 0.5, params: {top_k: 4}}]")  # fmt: skip
    spec = build_schedule(cfg)[1]
    twin = control_spec(spec, [])
    assert twin.teacher_signal == "online" and twin.teacher_cache_k is None
    assert _diff(spec, twin) == []


def test_student_seeds_are_pinned_by_the_student_and_per_generation(tmp_path):
    assert [s.seed for s in build_schedule(tiny_config(tmp_path, "generations.count=3"))] == [1, 2, 3, 4]
    pinned = tiny_config(tmp_path, "generations.count=3", "generations.student.seed=7",
                         "generations.per_generation.3.seed=9", "generations.teacher.seed=5")  # fmt: skip
    assert [s.seed for s in build_schedule(pinned)] == [5, 7, 7, 9]
    assert pinned.generations.student.seed == 7


def test_the_same_student_seed_gives_the_same_initial_weights_and_batches_whatever_the_loss(tmp_path, tiny_data):
    """Two students of one teacher that differ only in their losses: equal seeds -> equal init hash and data
    order as the trainer recorded them; a different seed -> different ones (so the hash says something)."""
    cfg = tiny_config(tmp_path, "generations.count=3", "generations.student.seed=11", "train.max_steps=2",
                      "generations.student.teacher_generations=[0]", "generations.student.init=scratch",
                      "generations.per_generation.2.losses=[{name: label_smoothing}]",
                      "generations.per_generation.3.seed=12")  # fmt: skip
    teacher_spec, kd, gold, other_seed = build_schedule(cfg)
    assert params_diff(kd.as_params(), gold.as_params(), ["loss."]) == []
    assert params_diff(kd.as_params(), other_seed.as_params(), ["loss."]) == ["seed"]
    teacher = train_generation(teacher_spec, tiny_data, tmp_path / "g0")
    runs = {s.index: train_generation(s, tiny_data, tmp_path / f"g{s.index}", teacher.checkpoint,
                                      teacher.checkpoint_sha256) for s in (kd, gold, other_seed)}  # fmt: skip
    assert all(len(r.init_sha256 or "") == 64 for r in runs.values())
    assert runs[1].init_sha256 == runs[2].init_sha256
    assert runs[3].init_sha256 != runs[1].init_sha256
    assert data_order_sha256(tiny_data, kd) == data_order_sha256(tiny_data, gold)
    assert data_order_sha256(tiny_data, kd) != data_order_sha256(tiny_data, other_seed)
    # The check a report makes before it says "only the loss differs":
    sentence = check_only("kd vs gold", kd.as_params(), gold.as_params(), ["loss."], runs[1].init_sha256,
                          runs[2].init_sha256)  # fmt: skip
    assert sentence.startswith("only the losses differ: params (seed included) checked equal otherwise")
    # equal params (the same recipe under another teacher): no "only ... differ" claim; the caller names the teacher
    same = check_only("gen 4 vs 5", kd.as_params(), kd.as_params(), (), runs[1].init_sha256, runs[2].init_sha256)
    init = runs[1].init_sha256[:12]
    assert same == f"params (seed included) all equal, and the same initial weights (sha256 {init}…)"
    with pytest.raises(MgkdError, match="differ in seed"):
        check_only("kd vs other seed", kd.as_params(), other_seed.as_params(), ["loss."], runs[1].init_sha256,
                   runs[3].init_sha256)  # fmt: skip
    with pytest.raises(MgkdError, match="different weights"):
        check_only("same params", kd.as_params(), kd.as_params(), ["loss."], runs[1].init_sha256, runs[3].init_sha256)


def test_a_students_initial_weights_do_not_depend_on_its_teachers_size(tmp_path, tiny_data):
    """The chain's last student and the same model taught directly by generation 0 (bench/chain.py) must start
    equal: the weights come from the seed and the architecture, not from the random draws of building a teacher
    (a larger teacher drew more and shifted the student's init: seen in the chain's first real run)."""
    cfg = tiny_config(tmp_path, "generations.count=3", "generations.student.seed=11", "train.max_steps=2",
                      "generations.student.init=scratch", "generations.per_generation.1.model.d_model=24",
                      "generations.per_generation.1.model.ff_dim=48",
                      "generations.per_generation.3.teacher_generations=[0]")  # fmt: skip
    teacher_spec, small_teacher_spec, via_small, via_big = build_schedule(cfg)
    assert small_teacher_spec.model != teacher_spec.model and via_small.model == via_big.model
    big = train_generation(teacher_spec, tiny_data, tmp_path / "g0")
    small = train_generation(small_teacher_spec, tiny_data, tmp_path / "g1", big.checkpoint, big.checkpoint_sha256)
    a = train_generation(via_small, tiny_data, tmp_path / "g2", small.checkpoint, small.checkpoint_sha256)
    b = train_generation(via_big, tiny_data, tmp_path / "g3", big.checkpoint, big.checkpoint_sha256)
    assert a.init_sha256 == b.init_sha256
    assert small.init_sha256 != a.init_sha256  # another architecture: another init (the hash is not constant)


def _cli_error(tmp_path, *args: str) -> str:
    result = CliRunner().invoke(app, ["run", "--output-dir", str(tmp_path / "out"), "--no-ray", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "mlflow.db").exists()  # refused before anything was written
    return " ".join(result.output.split())


def test_control_with_nothing_to_compare_is_refused_naming_the_generations(tmp_path):
    out = _cli_error(tmp_path, "--control", "-g", "2", "--set", "generations.student.losses=[{name: label_smoothing}]")
    assert "generations.control: generation(s) 1, 2 learn without the teacher (losses: label_smoothing)" in out
    assert "drop generations.control" in out


def test_submit_takes_control_too_and_checks_it_before_contacting_the_cluster(tmp_path):
    result = CliRunner().invoke(app, ["submit", "--address", "http://127.0.0.1:1", "--tracking-uri",
                                      "http://127.0.0.1:2", "--control", "--set",
                                      "generations.student.losses=[{name: label_smoothing}]"])  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "generations.control: generation(s) 1, 2, 3, 4 learn without the teacher" in " ".join(result.output.split())


def test_a_control_cannot_be_named_as_a_teacher(tmp_path):
    out = _cli_error(tmp_path, "--control", "-g", "2", "--set",
                     "generations.per_generation.2.teacher_generations=[1, gen-1-control]")  # fmt: skip
    assert "generations.per_generation.2.teacher_generations" in out
    assert "a matched control (generations.control) is never a teacher" in out


def test_the_table_shows_kd_minus_control(tmp_path):
    specs = build_schedule(tiny_config(tmp_path, "generations.count=1", "generations.control=true"))
    metrics = {"best_valid_loss": 3.0, "test_chrf": 20.0, "train_time_s": 5.0}
    results = [GenerationResult(k, "", "", 10, {**metrics, "test_bleu": b}) for k, b in ((0, 5.0), (1, 6.5))]
    control = GenerationResult(1, "", "", 10, {**metrics, "test_bleu": 7.25})
    console = Console(record=True, width=220)
    console.print(lineage_table(specs, results, "t", {1: control}, task=TRANSLATION))
    text = console.export_text()
    assert "KD − control BLEU" in text and "-0.75" in text and "7.25" in text
    console = Console(record=True, width=220)
    console.print(lineage_table(specs, results, "t", task=TRANSLATION))
    assert "control" not in console.export_text()


def test_verdicts_are_gated_on_the_spread_over_seeds():
    inside = verdict([10.0, 11.0, 12.0], [10.5, 11.2, 11.9], "KD", "control", "BLEU")
    assert not inside.measurable and inside.spread == pytest.approx(2.0)
    assert inside.text.endswith("is inside the seed spread 2.00: no measurable difference")
    assert inside.text.startswith("KD − control BLEU -0.20 (mean of 3 seeds)")
    ahead = verdict([14.0, 14.5, 15.0], [11.0, 11.5, 12.0], "KD", "control", "BLEU")
    assert ahead.measurable and ahead.text.endswith("larger than the seed spread 1.00: KD is ahead")
    behind = verdict([9.0, 9.2], [11.0, 11.5], "KD", "control", "chrF")
    assert behind.measurable and behind.text.endswith("control is ahead")
    one = verdict([14.0], [11.0], "KD", "control", "BLEU")
    assert not one.measurable and one.spread is None and "no verdict" in one.text


def _seq_kd_longest(tmp_path, *more):
    return tiny_config(tmp_path, "generations.count=1", "generations.student.init=scratch",
                       "generations.student.losses=[{name: seq_kd, params: {beam_size: 1}}]",
                       "generations.student.train={max_steps: 6, batch_targets: longest}", *more)  # fmt: skip


def test_under_batch_targets_longest_a_control_carries_its_generations_teacher_made_terms(tmp_path):
    teacher, student = build_schedule(_seq_kd_longest(tmp_path))
    twin = control_spec(student, teacher.losses)
    assert [t.name for t in twin.plan_losses] == ["seq_kd"] and [t.name for t in twin.losses] == ["label_smoothing"]
    assert _diff(student, twin) == []  # not a param: the comparison still differs in the losses alone
    assert twin.to_dict()["plan_losses"] == [t.model_dump() for t in student.losses]
    gold_cut = build_schedule(tiny_config(tmp_path, "generations.count=1", "generations.student.init=scratch",
                                          "generations.student.losses=[{name: seq_kd}]"))[1]  # fmt: skip
    assert control_spec(gold_cut, teacher.losses).plan_losses is None and "plan_losses" not in gold_cut.to_dict()


def test_a_seq_kd_student_cut_by_its_longest_targets_and_its_control_take_the_same_batches(tmp_path, tiny_data):
    """train.batch_targets longest: the student's batches are cut by the longer of reference and teacher output,
    its control (which never reads the outputs) is cut the same way, the recorded orders say so, and they are
    not the gold-cut order (the barely trained teacher's outputs run past the references)."""
    from mgkd.orchestration.controls import fairness_tags, same_data_order

    teacher_spec, student = build_schedule(_seq_kd_longest(tmp_path, "train.max_steps=2"))
    teacher = train_generation(teacher_spec, tiny_data, tmp_path / "g0")
    kd = train_generation(student, tiny_data, tmp_path / "g1", teacher.checkpoint, teacher.checkpoint_sha256)
    twin = control_spec(student, teacher_spec.losses)
    control = train_generation(twin, tiny_data, tmp_path / "c1", teacher.checkpoint, teacher.checkpoint_sha256)
    assert len(kd.data_order) == student.train.max_epochs and control.data_order == kd.data_order
    assert control.init_sha256 == kd.init_sha256 and same_data_order(control, kd, tiny_data, twin, student)
    assert kd.data_order[-1] != data_order_sha256(tiny_data, student)  # cut by the teacher's outputs, not gold
    assert fairness_tags(kd, tiny_data, student)["mgkd.data_order_sha256"] == kd.data_order[-1]
    # gold-cut (the default): what the driver computes from the gold split is what the trainer reports
    gold = train_generation(teacher_spec, tiny_data, tmp_path / "g0-again")
    assert gold.data_order[-1] == data_order_sha256(tiny_data, teacher_spec) == teacher.data_order[-1]
    # a control whose batches were another order is not matched
    other = GenerationResult(1, "", "", 0, {}, data_order=[*kd.data_order[:-1], "0" * 64])
    assert not same_data_order(other, kd, tiny_data, twin, student)
