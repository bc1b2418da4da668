"""bench/results.py's matrix and its B, C and F sections over seeds, on hand-made records (no training): every seed has
its A+B lineage and its plain-teacher lineage; B's "from scratch" row is the students' matched control; C's two
students are the same run but for their teacher; verdicts are gated on the seed spread; a comparison that differs in
more than it says is refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mgkd.config import load_raw, validate
from mgkd.errors import MgkdError
from mgkd.generations.spec import build_schedule
from mgkd.lineage.compare import PLACE

from ..helpers.bench import load_bench


@pytest.fixture(scope="module")
def R():
    return load_bench("results")


def test_every_seed_has_its_ab_and_plain_teacher_lineages_with_matched_students(R, tmp_path):
    lins = R.matrix(R.BUDGETS["demo"], [1, 2, 3], tmp_path, ray=False, threads=1)
    assert sorted(lins) == [f"{p}-seed{s}" for p in ("ab", "c-plain-teacher", "f") for s in (1, 2, 3)]
    for seed in (1, 2, 3):
        ab, c = lins[f"ab-seed{seed}"].raw, lins[f"c-plain-teacher-seed{seed}"].raw
        assert ab["generations"]["control"] is True and ab["seed"] == c["seed"] == seed
        specs = {s.index: s for s in build_schedule(validate(ab))}
        plain = {s.index: s for s in build_schedule(validate(c))}
        # B's students: one model, seed and budget (the demo students'), all taught by generation 0
        small = [specs[k] for k in R.RECIPES]
        assert {(s.seed, s.model.d_model, s.model.encoder_layers, s.train.max_steps) for s in small} == {
            (seed + R.SMALL_SEED_OFFSET, 64, 1, 400)
        }
        assert all(s.teacher_generations == [0] for s in small) and specs[4].model.d_model == 128
        # C's student is B's word-KD student, generation index aside; only the teacher's smoothing differs
        ps, bs = plain[1].as_params(), specs[min(R.RECIPES)].as_params()
        assert {k: v for k, v in ps.items() if k not in PLACE} == {k: v for k, v in bs.items() if k not in PLACE}
        assert plain[0].losses[0].params["smoothing"] == 0.0 and specs[0].losses[0].params["smoothing"] == 0.1
        assert all(s.train.threads == 1 for s in list(specs.values()) + list(plain.values()))
        assert specs[0].eval.select_by == "valid_bleu"


def _gen(k: int, bleu: float, seed: int, loss: str, init: str, order: str = "d") -> dict:
    small = "teacher" not in loss
    params = {"seed": str(seed + 5), "generation": str(k), "model.arch": "transformer",
              "model.d_model": "64" if small else "128", "model.encoder_layers": "1" if small else "2",
              "model.decoder_layers": "1" if small else "2", "teacher_generations": "[0]",
              "loss.which": loss}  # fmt: skip
    metrics = {"test_bleu": bleu, "test_chrf": 2 * bleu, "parameters": 0.37e6 if small else 1.44e6}
    return {"generation": k, "status": "FINISHED", "params": params, "metrics": metrics, "init_sha256": init,
            "data_order_sha256": order}  # fmt: skip


def _ab(R, seed: int, students: dict[int, float], scratch: float, ctl_order: str = "d", twin: float = 0.0):
    gens = [_gen(0, 9.0 + seed / 10, seed, "teacher", "t")]
    gens += [_gen(k, b, seed, R.RECIPES[k][0], "small") for k, b in students.items()]
    # the three controls are the same run: generation 5's recipe without the teacher
    controls = [_gen(k, scratch + (twin if k == 7 else 0), seed, "scratch", "small", ctl_order) for k in students]
    lin = SimpleNamespace(raw={"seed": seed}, key=f"ab-seed{seed}", parts="AB")
    return R.Record(lin, {"lineage_id": "L", "generations": gens, "controls": controls}, None, None, True, "")


def _plain(R, seed: int, student: float, init: str = "small"):
    gens = [_gen(0, 8.0, seed, "plain teacher", "t"), _gen(1, student, seed, "word_kd", init)]
    lin = SimpleNamespace(raw={"seed": seed, "eval": {}}, key=f"c-plain-teacher-seed{seed}", parts="C")
    return R.Record(lin, {"lineage_id": "C", "generations": gens, "controls": []}, None, None, True, "")


@pytest.fixture
def quiet(R, monkeypatch):
    monkeypatch.setattr(R, "_budget_of", lambda rec, k: "budget")
    monkeypatch.setattr(R, "_data_line", lambda rec: "data")
    monkeypatch.setattr(R, "_run_line", lambda rec: "run")
    monkeypatch.setattr(R, "CONTROL_MAY_DIFFER", ("loss.",))


def _b(R, tmp_path, recs):
    for r in recs:
        r.lin.raw["eval"] = {"select_by": "valid_bleu", "valid_bleu_sentences": 300}
    return "\n".join(R.section_b(recs, tmp_path, lambda p: p.name))


def test_b_reads_scratch_from_the_control_and_gates_every_verdict(R, tmp_path, quiet):
    recs = [_ab(R, s, {5: 0.35 + j, 6: 3.0 + j, 7: 3.1 + j}, 0.2 + j) for s, j in ((1, 0.0), (2, 0.1), (3, -0.1))]
    md = _b(R, tmp_path, recs)
    assert "| control | from scratch" in md and "| 0.20 (0.10–0.30) | 0.20 / 0.30 / 0.10 |" in md
    # word-KD +0.15 over scratch is inside the 0.20 spread; seq-KD +2.80 is not
    assert "word_kd − scratch BLEU +0.15 (mean of 3 seeds) is inside the seed spread 0.20" in md
    assert "seq_kd − scratch BLEU +2.80 (mean of 3 seeds) is larger than the seed spread 0.20: seq_kd is ahead" in md
    assert "seq_kd_internal − seq_kd BLEU +0.10 (mean of 3 seeds) is inside the seed spread" in md
    assert "identical, as they must be" in md and "**3.89x** fewer" in md
    assert (tmp_path / "b_small_students.png").stat().st_size > 0
    # controls that disagree are said to, and make the reader discount gaps of that size
    recs[1] = _ab(R, 2, {5: 0.7, 6: 3.2, 7: 3.3}, 0.4, twin=0.05)
    assert "**not identical**" in _b(R, tmp_path, recs)


def test_b_refuses_a_control_that_saw_other_batches(R, tmp_path, quiet):
    recs = [_ab(R, 1, {5: 0.5, 6: 3.0, 7: 3.1}, 0.2, ctl_order="other")]
    with pytest.raises(MgkdError, match="saw other batches"):
        _b(R, tmp_path, recs)


def test_c_pairs_each_seeds_students_and_refuses_other_weights(R, tmp_path, quiet):
    pairs = [(_ab(R, s, {5: 0.5 + j, 6: 3.0, 7: 3.1}, 0.2), _plain(R, s, 1.5 + j)) for s, j in ((1, 0), (2, 0.1))]
    md = "\n".join(R.section_c(pairs, tmp_path, lambda p: p.name))
    assert "| plain (0) | 8.00 (8.00–8.00) |" in md and "| 1.55 (1.50–1.60) | 1.50 / 1.60 |" in md
    assert "+1.30 / +1.40" in md  # the plain teacher's student against the same seed's scratch control
    assert "plain − label-smoothed student BLEU +1.00 (mean of 2 seeds) is larger than the seed spread 0.10" in md
    assert "under 1 BLEU" not in md  # said only where both students learned next to nothing
    pairs[1] = (pairs[1][0], _plain(R, 2, 1.6, init="other"))
    with pytest.raises(MgkdError, match="different weights"):
        R.section_c(pairs, tmp_path, lambda p: p.name)


def test_f_is_the_born_again_recipe_from_scratch_on_as_teacher(R, tmp_path):
    lins = R.matrix(R.BUDGETS["demo"], [2], tmp_path, ray=False, threads=1)
    f, ab = lins["f-seed2"].raw, lins["ab-seed2"].raw
    assert f["generations"]["control"] is True and f["generations"]["count"] == R.F_GENERATIONS == 2
    specs = {s.index: s for s in build_schedule(validate(f))}
    recipe = load_raw(R.ROOT / "configs/born_again.yaml")["generations"]["student"]
    for k in (1, 2):  # configs/born_again.yaml's student: from scratch, the teacher's architecture and whole budget
        assert specs[k].init == "scratch" and specs[k].teacher_generations == [k - 1]
        assert specs[k].train == specs[0].train and specs[k].model == specs[0].model and specs[k].seed == 2 + k
        assert [(x.name, x.weight, x.params) for x in specs[k].losses] == [
            (x["name"], x["weight"], x["params"]) for x in recipe["losses"]
        ]
    # F's teacher is A's: the same run, so the report can check that retraining it gives the same BLEU
    a0 = build_schedule(validate(ab))[0].as_params()
    assert {k: v for k, v in specs[0].as_params().items() if k not in PLACE} == {
        k: v for k, v in a0.items() if k not in PLACE
    }


def _f(R, seed: int, gens: dict[int, float], ctls: dict[int, float], size: float = 1.44e6, order: str = "d"):
    gens_ = [_gen(0, 9.0 + seed / 10, seed, "teacher", "t")]
    gens_ += [_gen(k, b, seed, "ba", f"i{k}") for k, b in gens.items()]
    controls = [_gen(k, b, seed, "scratch", f"i{k}", order) for k, b in ctls.items()]
    for g in gens_ + controls:
        g["metrics"]["parameters"] = size if g["generation"] == 2 else 1.44e6
    lin = SimpleNamespace(raw={"seed": seed, "eval": {}}, key=f"f-seed{seed}", parts="F")
    return R.Record(lin, {"lineage_id": "F", "generations": gens_, "controls": controls}, None, None, True, "")


def test_f_gates_each_generation_on_its_control_and_checks_the_retrained_teacher(R, tmp_path, quiet):
    rel = lambda p: p.name  # noqa: E731
    fs = [_f(R, s, {1: 9.6 + j, 2: 9.7 + j}, {1: 9.0 + j, 2: 9.6 + j}) for s, j in ((1, 0.0), (2, 0.2), (3, -0.1))]
    a_of = {1: _ab(R, 1, {5: 0.5, 6: 3.0, 7: 3.1}, 0.2)}  # seed 1's A lineage: the same teacher run
    md, finding = R.section_f(fs, a_of, tmp_path, rel)
    md = "\n".join(md)
    # generation 1: +0.60 over a 0.30 spread is a verdict; generation 2: +0.10 is not
    assert "generation 1 − its control BLEU +0.60 (mean of 3 seeds) is larger than the seed spread 0.30" in md
    assert "generation 2 − its control BLEU +0.10 (mean of 3 seeds) is inside the seed spread 0.30" in md
    assert "+0.60 / +0.60 / +0.60" in md and "ahead at generation(s) 1, behind at none" in finding
    assert "seed 1 9.10 vs 9.10 — identical" in md  # F's teacher retrained: the same BLEU as A's
    assert (tmp_path / "f_born_again_scratch.png").stat().st_size > 0
    with pytest.raises(MgkdError, match="saw other batches"):
        R.section_f([_f(R, 1, {1: 9.6, 2: 9.7}, {1: 9.0, 2: 9.6}, order="x")], {}, tmp_path, rel)
    with pytest.raises(MgkdError, match="differ in size"):
        R.section_f([_f(R, 1, {1: 9.6, 2: 9.7}, {1: 9.0, 2: 9.6}, size=0.37e6)], {}, tmp_path, rel)


def test_a_finished_lineage_is_found_by_its_recipe_not_by_the_folder_it_was_written_in(R, monkeypatch, tmp_path):
    # a lineage trained in one folder and read through a link under another name is reused; another recipe is not
    raw = load_raw(R.ROOT / "configs" / "demo.yaml")
    recorded = {**raw, "output_dir": str(tmp_path / "chain-seed1-set0123abcd")}
    monkeypatch.setattr(R, "read_last_lineage", lambda folder: {"tracking_uri": "sqlite:///x.db", "lineage_id": "L"})
    monkeypatch.setattr(R, "lineage_config", lambda uri, lid: recorded)
    run = SimpleNamespace(info=SimpleNamespace(status="FINISHED"))
    monkeypatch.setattr(R, "mlflow_client", lambda uri: SimpleNamespace(get_run=lambda lid: run))
    lin = R.Lineage("chain-seed1", {**raw, "output_dir": str(tmp_path / "chain-seed1")}, "x", "chain")
    state, last = R._state(lin)
    assert state == "finished" and last["lineage_id"] == "L"
    recorded = {**recorded, "train": {**raw["train"], "lr": 0.003}}
    with pytest.raises(MgkdError, match="of another config than this matrix's 'chain-seed1'"):
        R._state(lin)
