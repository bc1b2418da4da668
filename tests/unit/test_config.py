from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgkd.cli import app
from mgkd.config import apply_overrides, build_config, preset_names
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule
from mgkd.generations.controls import views_per_step
from mgkd.models import build_model, count_parameters


def test_demo_preset_is_default_and_a_compression_chain_controls_off(monkeypatch):
    monkeypatch.delenv("MGKD_PRESET")  # the suite's pinned base (tests/conftest.py): a user's default is the demo
    cfg = build_config()
    assert "demo" in preset_names()
    assert cfg.name == "demo" and cfg.generations.count == 4
    assert not cfg.generations.control  # README command 1's time; `mgkd run --control` adds them
    specs = build_schedule(cfg)
    assert [s.index for s in specs] == [0, 1, 2, 3, 4]
    assert [t.name for t in specs[0].losses] == ["label_smoothing"]
    sizes = [count_parameters(build_model(s.model, cfg.tokenizer.vocab_size)) for s in specs]
    assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes  # each student smaller than its teacher
    assert sizes[0] / sizes[-1] >= 4, sizes  # issue 18's target: the last generation >= 4x fewer parameters
    for s in specs[1:]:  # taught by its teacher's translations alone (one batch a step), from scratch, one budget
        assert [t.name for t in s.losses] == ["seq_kd"] and s.init == "scratch"
        assert views_per_step(s) == 1  # so a control matched in steps is matched in batches too
        assert s.train == specs[1].train and s.train.max_steps == 400
    assert cfg.eval.select_by == "valid_bleu" and cfg.eval.valid_bleu_sentences > 0
    # `mgkd run -g 2` runs the preset's first two generations, as configured for them
    short = build_schedule(build_config(overrides=["generations.count=2"]))
    assert [s.model for s in short] == [s.model for s in specs[:3]]
    monkeypatch.setenv("MGKD_PRESET", "born_again_warm")
    assert build_config().name == "born_again_warm"
    monkeypatch.setenv("MGKD_PRESET", "nope")
    with pytest.raises(MgkdError, match=r"unknown preset 'nope' \(from \$MGKD_PRESET; unset it for the demo\)"):
        build_config()


def test_born_again_warm_is_the_same_size_soft_label_chain():
    specs = build_schedule(build_config(preset="born_again_warm"))
    assert {t.name for t in specs[1].losses} == {"label_smoothing", "soft_label"}
    # born-again: every student has the teacher's architecture and starts from a copy of its teacher
    assert all(s.model == specs[0].model for s in specs) and all(s.init == "teacher" for s in specs[1:])


def test_overrides_are_typed():
    raw = apply_overrides({}, ["train.max_epochs=3", "ray.enabled=false", "train.lr=1e-4", "name=x"])
    assert raw == {"train": {"max_epochs": 3, "lr": 1e-4}, "ray": {"enabled": False}, "name": "x"}


def test_per_generation_override_changes_one_generation():
    cfg = build_config(
        overrides=["generations.count=2", "generations.per_generation={2: {model: {d_model: 64}, init: scratch}}"]
    )
    specs = build_schedule(cfg)
    assert [s.model.d_model for s in specs] == [128, 128, 64]
    assert [s.init for s in specs[1:]] == ["teacher", "scratch"]


def test_teacher_init_needs_the_teachers_shape():
    cfg = build_config(overrides=["generations.count=2", "generations.per_generation={2: {model: {d_model: 64}}}"])
    with pytest.raises(MgkdError, match="generation 2: init 'teacher' copies the teacher's tensors"):
        build_schedule(cfg)
    # dropout is not a shape: allowed
    build_schedule(build_config(overrides=["generations.per_generation={2: {model: {dropout: 0.3}}}"]))


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.max_epochs=0", "train.max_epochs"),
        ("train.max_epochs=abc", "train.max_epochs"),
        ("model.bogus=1", "model.bogus: unknown key"),
        ("generations.count=-1", "generations.count"),
        ("generations.student.train={lr: -1}", "generations.student.train"),
        (
            "generations.per_generation={0: {}}",
            "keys [0] below 1 (generation 0 is configured under generations.teacher",
        ),
        ("corpus.kind=tsv", "corpus.kind 'tsv' needs corpus.path"),
    ],
)
def test_bad_values_name_the_field(override, expected):
    with pytest.raises(MgkdError, match="invalid config") as e:
        build_config(overrides=[override])
    assert expected in str(e.value)


def test_an_architectures_own_size_check_stops_the_schedule():
    # Checked by the architecture's declaration (mgkd.models.registry) for every generation.
    with pytest.raises(MgkdError, match=r"generations.teacher: d_model \(128\) must be divisible by n_heads \(3\)"):
        build_schedule(build_config(overrides=["model.n_heads=3"]))
    bad_student = "generations.per_generation={2: {model: {n_heads: 3}}}"
    with pytest.raises(MgkdError, match=r"generation 2: d_model \(128\) must be divisible by n_heads \(3\)"):
        build_schedule(build_config(overrides=[bad_student]))


def test_unknown_loss_names_the_choices():
    cfg = build_config(overrides=["generations.student.losses=[{name: softlabel}]"])
    with pytest.raises(MgkdError, match=r"generation 1: unknown loss 'softlabel'.*label_smoothing, .*soft_label"):
        build_schedule(cfg)


def test_unknown_loss_parameter():
    cfg = build_config(overrides=["generations.student.losses=[{name: soft_label, params: {temprature: 2}}]"])
    with pytest.raises(MgkdError, match="no parameter.*temprature.*temperature"):
        build_schedule(cfg)


def test_teacher_loss_on_generation_zero_is_refused():
    cfg = build_config(overrides=["generations.teacher.losses=[{name: soft_label}]"])
    with pytest.raises(MgkdError, match="need a teacher"):
        build_schedule(cfg)


def test_config_file_paths_are_relative_to_the_file(tmp_path: Path):
    (tmp_path / "pairs.tsv").write_text("a\tb\n", encoding="utf-8")
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("name: mine\ncorpus: {kind: tsv, path: pairs.tsv}\n", encoding="utf-8")
    cfg = build_config(cfg_file, overrides=["generations.count=2"])
    assert cfg.corpus.path == (tmp_path / "pairs.tsv").resolve()
    assert cfg.generations.count == 2 and cfg.name == "mine"


runner = CliRunner()


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--generations", "0"], "generations.count"),
        (["run", "--set", "train.max_epochs=-2"], "train.max_epochs"),
        (
            ["run", "--preset", "nope"],
            "unknown preset 'nope'; choose one of: born_again, born_again_warm, classification, demo",
        ),
        (["run", "--config", "missing.yaml"], "config file missing.yaml does not exist"),
        (["run", "--set", "generations.student.losses=[{name: nope}]"], "unknown loss 'nope'"),
        (["run", "--set", "novalue"], "must look like key.path=value"),
    ],
)
def test_cli_bad_input_exits_2_without_traceback(args, message, tmp_path):
    result = runner.invoke(app, [*args, "--output-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ") or message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_builds_its_schedule(preset):
    specs = build_schedule(build_config(preset=preset))
    assert specs[0].index == 0 and len(specs) >= 2
