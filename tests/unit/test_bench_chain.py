"""bench/chain.py, the demo's report over seeds, on hand-made records (no training): the direct student is generation
4's model and seed taught by generation 0; the report refuses comparisons that differ in more than they say; the
targets and verdicts follow the numbers; its block in RESULTS.md and the README is replaced, the rest kept, and
bench/results.py keeps it when it rewrites the report."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from mgkd.errors import MgkdError

from ..helpers.bench import load_bench


@pytest.fixture(scope="module")
def chain():
    return load_bench("chain")


def test_generation_5_is_generation_4s_model_and_seed_taught_by_generation_0(chain, tmp_path):
    for lin, seed in zip(chain.lineages("demo", [1, 7], tmp_path, ray=True), [1, 7]):
        gens = lin.raw["generations"]
        assert gens["count"] == 5 and lin.raw["seed"] == seed
        assert gens["per_generation"][5]["model"] == gens["per_generation"][4]["model"]
        assert gens["per_generation"][5]["teacher_generations"] == [0]
        assert gens["per_generation"][5]["seed"] == seed + 4  # generation 4's default seed: the run's + its index
        assert gens["control"] is True
    # --threads: seeds side by side, one in-process lineage each with its own torch threads
    for lin in chain.lineages("demo", [1], tmp_path, ray=False, threads=1):
        assert lin.raw["train"]["threads"] == 1 and lin.raw["ray"]["enabled"] is False
    assert chain.lineages("demo", [1], tmp_path, ray=True)[0].raw["train"].get("threads") is None


def test_a_variant_runs_in_folders_of_its_own_and_says_so(chain, tmp_path, monkeypatch):
    sets = ["generations.student.train.batch_targets=longest"]
    (plain,) = chain.lineages("demo", [1], tmp_path, ray=False, threads=1)
    # the demo's seq-inter: the references pick among the teacher's outputs, so the report does not say "no gold
    # labels"; with select top they pick nothing
    assert chain.recipe_words(plain.raw) == ("sequence-level KD on the one of its 4 best beam-4 translations closest "
                                             "to the reference by sentence BLEU (seq-inter), no gold labels as "
                                             "targets")  # fmt: skip
    top = "generations.student.losses=[{name: seq_kd, params: {beam_size: 4, select: top}}]"
    words = chain.recipe_words(chain.lineages("demo", [1], tmp_path, ray=False, sets=[top])[0].raw)
    assert words == "sequence-level KD on its beam-4 translations, no gold labels"
    (var,) = chain.lineages("demo", [1], tmp_path, ray=False, threads=1, sets=sets)
    assert var.raw["generations"]["student"]["train"]["batch_targets"] == "longest"
    assert "batch_targets" not in plain.raw["generations"]["student"]["train"]
    # never the preset's lineage reused or resumed for the variant, and one folder per distinct variant
    assert var.raw["output_dir"] != plain.raw["output_dir"]
    (other,) = chain.lineages("demo", [1], tmp_path, ray=False, sets=["generations.student.train.lr=0.005"])
    assert other.raw["output_dir"] != var.raw["output_dir"]
    monkeypatch.setattr(chain.R, "_budget_of", lambda rec, k: "budget")
    monkeypatch.setattr(chain.R, "_data_line", lambda rec: "data")
    monkeypatch.setattr(chain.R, "_run_line", lambda rec: "run")
    monkeypatch.setattr(chain.R, "_model_name", lambda g: f"d{g['params']['model.d_model']}")
    bleu = {0: 10, 1: 9, 2: 8, 3: 7, 4: 6, 5: 5}
    recs = [_record(chain, 1, bleu, {1: 3, 2: 3, 3: 2, 4: 1, 5: 1})]
    recs[0].parent = SimpleNamespace(data=SimpleNamespace(tags={"bench.hardware": "hw"}))
    block, _ = chain.report(recs, _args(set=sets), missing=[])
    assert "`python bench/chain.py --budget demo --set generations.student.train.batch_targets=longest --seeds" in block
    assert ("`configs/demo.yaml` with `generations.student.train.batch_targets=longest` (a variant: not what "
            "`mgkd run --generations 4` runs)") in block  # fmt: skip


SIZES = {0: 1.44e6, 1: 0.91e6, 2: 0.68e6, 3: 0.49e6, 4: 0.37e6, 5: 0.37e6}
MODELS = {0: 128, 1: 96, 2: 80, 3: 64, 4: 64, 5: 64}


def _record(chain, seed: int, bleu: dict[int, float], ctl: dict[int, float], init_5: str = "i4"):
    def run(k, b, loss):
        params = {"seed": str(seed + min(k, 4)), "generation": str(k), "model.arch": "transformer",
                  "model.d_model": str(MODELS[k]), "model.encoder_layers": "2", "model.decoder_layers": "2",
                  "teacher_generations": "[0]" if k == 5 else f"[{k - 1}]", "loss.seq_kd.weight": loss}  # fmt: skip
        metrics = {"test_bleu": b, "test_chrf": 3 * b, "parameters": SIZES[k]}
        init = init_5 if k == 5 else f"i{k}"
        return {"generation": k, "status": "FINISHED", "params": params, "metrics": metrics,
                "init_sha256": init, "data_order_sha256": f"d{min(k, 4)}", "matched": True}  # fmt: skip

    gens = [run(k, bleu[k], "0.5") for k in range(6)]
    controls = [run(k, ctl[k], "None") for k in range(1, 6)]
    raw = chain.lineages("demo", [seed], Path("unused"), ray=False)[0].raw  # the config the chain would run
    lin = SimpleNamespace(raw=raw, key=f"chain-seed{seed}", what="x")
    rec = chain.R.Record(lin, {"lineage_id": "L", "generations": gens, "controls": controls}, None, None, True, "")
    return rec


def _args(**kw):
    return argparse.Namespace(budget="demo", seeds="1,2,3", report_only=False, **kw)


def test_report_reads_targets_and_gated_verdicts_off_the_numbers(chain, monkeypatch):
    monkeypatch.setattr(chain.R, "_budget_of", lambda rec, k: "budget")
    monkeypatch.setattr(chain.R, "_data_line", lambda rec: "data")
    monkeypatch.setattr(chain.R, "_run_line", lambda rec: "run")
    monkeypatch.setattr(chain.R, "_model_name", lambda g: f"d{g['params']['model.d_model']}")
    recs = []
    for seed, jitter in ((1, 0.0), (2, 0.1), (3, -0.1)):
        bleu = {0: 10 + jitter, 1: 9 + jitter, 2: 8 + jitter, 3: 7 + jitter, 4: 9.6 + jitter, 5: 5 + jitter}
        ctl = {1: 3 + jitter, 2: 7.95 + jitter, 3: 2, 4: 1 + jitter, 5: 1 + jitter}
        recs.append(_record(chain, seed, bleu, ctl))
    recs[0].parent = SimpleNamespace(data=SimpleNamespace(tags={"bench.hardware": "hw"}))
    block, headline = chain.report(recs, _args(), missing=[])
    assert "3.89x fewer parameters than the teacher (target ≥ 4x: not met)" in block
    assert "keeps 96% of the teacher's test BLEU, mean of 3 seed(s) (target ≥ 95%: met)" in block
    # generation 2's gap (+0.05) is inside the spread (0.2): not a win; 1, 3 and 4 are
    assert "beat their control by more than the seed spread: 1, 3, 4 of 4 (target: all: not met)" in block
    assert "| 2 | d80 |" in block and "no measurable difference" in block
    assert "chain − direct BLEU +4.60 (mean of 3 seeds) is larger than the seed spread 0.20: chain is ahead" in block
    assert headline.startswith("The demo (`configs/demo.yaml`) over 3 seed(s)") and "| 4 | d64 |" in headline
    # the README's headline also says what the direct student gives, with the verdict the table's section draws
    assert ("taught directly by generation 0 (generation 5): 5.00 (4.90–5.10) BLEU, against 9.60 (9.50–9.70) "
            "through the chain: chain is ahead.") in headline  # fmt: skip
    # what the chain trained, said from its config: the demo's students read one batch a step, as their controls
    assert "taught by generation k − 1 (sequence-level KD on the one of its 4 best beam-4 translations closest" in block
    assert "the same optimizer steps and batches: a student's step, like its control's, reads one batch" in block
    assert "checkpoint selected on validation BLEU (greedy, 300 valid verses)" in block
    # generations 4 and 5 share every param: the sentence names the teacher, not "only nothing differs"
    assert "(generation 5; only its teacher differs: params (seed included) all equal, and the same initial" in block
    # one seed: no gap can be held against a spread, so no generation is said to beat (or lose to) its control
    one, _ = chain.report(recs[:1], _args(), missing=[])
    assert "more than the seed spread: no verdict for any of the 4: one seed gives no spread" in one
    assert "none of 4" not in one


def test_the_time_target_is_judged_only_on_runs_made_as_mgkd_run_makes_them(chain, monkeypatch):
    monkeypatch.setattr(chain.R, "_budget_of", lambda rec, k: "budget")
    monkeypatch.setattr(chain.R, "_data_line", lambda rec: "data")
    monkeypatch.setattr(chain.R, "_run_line", lambda rec: "run")
    monkeypatch.setattr(chain.R, "_model_name", lambda g: f"d{g['params']['model.d_model']}")
    monkeypatch.setattr(chain, "demo_minutes", lambda rec: 10.0 + rec.lin.raw["seed"])
    bleu = {0: 10, 1: 9, 2: 8, 3: 7, 4: 6, 5: 5}
    ctl = {1: 3, 2: 3, 3: 2, 4: 1, 5: 1}

    def recs(params):
        out = [_record(chain, seed, bleu, ctl) for seed in (1, 2)]
        for r in out:
            r.parent = SimpleNamespace(data=SimpleNamespace(tags={"bench.hardware": "hw"}, params=params))
        return out

    # as `mgkd run` runs it (Ray, its own threads): 11-12 min against the 12-minute target is judged
    block, headline = chain.report(recs({"ray.enabled": "True", "train.threads": "None"}), _args(), missing=[])
    judged = "took 11.50 (11.00–12.00) min, summed MLflow run times (target for the `mgkd run` part ≤ 12 min: met;"
    assert judged in block
    assert "took 11.50 (11.00–12.00) min by their MLflow run times. Measured" in headline
    # seeds side by side on one thread each (`--no-ray --threads 1`): reported, but not held against the target
    block, headline = chain.report(recs({"ray.enabled": "False", "train.threads": "1"}), _args(), missing=[])
    assert "≤ 12 min: not judged; seed(s) 1, 2 ran in-process side by side" in block and "met;" not in block
    assert "on one torch thread each, so longer than a quiet `mgkd run`." in headline


def test_the_report_says_the_recipe_and_what_the_control_budget_matched_from_the_config(chain):
    raw = chain.lineages("demo", [1], Path("unused"), ray=False)[0].raw
    assert chain.student_views(raw) == 1
    raw["generations"]["student"]["losses"] = [
        {"name": "label_smoothing", "weight": 0.5, "params": {"smoothing": 0.1}},
        {"name": "seq_kd", "weight": 0.5, "params": {"beam_size": 4}},
        {"name": "internal", "weight": 0.5, "params": {"uniform_features": ["hidden", "attention"]}},
    ]
    assert chain.recipe_words(raw) == (
        "the gold labels + sequence-level KD on its beam-4 translations + its hidden states and attention"
    )
    assert chain.student_views(raw) == 2  # the gold batch and one of the teacher's translations
    assert "about 2 times the tokens" in chain.budget_words("steps", 2)
    assert chain.budget_words("batches", 2).startswith("as many training batches as its student reads (2 times")
    raw["eval"] = {"select_by": "valid_loss"}
    assert chain.selection_words(raw) == "validation loss"


def test_report_refuses_a_direct_student_from_other_weights(chain, monkeypatch):
    recs = [_record(chain, 1, dict.fromkeys(range(6), 5.0), dict.fromkeys(range(1, 6), 1.0), init_5="other")]
    with pytest.raises(MgkdError, match="generation 4 vs 5: the runs started from different weights"):
        chain.report(recs, _args(), missing=[])


def test_a_control_the_trainer_did_not_find_matched_is_refused_and_the_batch_budget_may_differ_in_length(chain):
    recs = [_record(chain, 1, dict.fromkeys(range(6), 5.0), dict.fromkeys(range(1, 6), 1.0))]
    recs[0].info["controls"][2]["matched"] = False  # e.g. its first epochs were not generation 3's batches
    with pytest.raises(MgkdError, match="seed 1 generation 3: its control saw other batches"):
        chain.report(recs, _args(), missing=[])
    recs = [_record(chain, 1, dict.fromkeys(range(6), 5.0), dict.fromkeys(range(1, 6), 1.0))]
    for c in recs[0].info["controls"]:  # generations.control_budget batches: twice the steps, its own longer order
        c["params"]["train.max_steps"], c["data_order_sha256"] = "800", "longer"
    with pytest.raises(MgkdError, match="differ in train.max_steps"):
        chain.report(recs, _args(), missing=[])
    recs[0].lin.raw["generations"]["control_budget"] = "batches"
    assert chain._check(recs)[0].startswith("only the losses and train.max_steps differ")


def test_report_refuses_controls_that_should_be_one_run_but_differ(chain):
    ctl = {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.5}
    recs = [_record(chain, 1, dict.fromkeys(range(6), 5.0), ctl)]
    with pytest.raises(MgkdError, match="controls of generations 4 and 5 should be identical"):
        chain.report(recs, _args(), missing=[])


def test_the_block_is_replaced_and_the_rest_kept_also_by_results_py(chain, tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# mgkd quality report\n\nold intro\n\n## A. old section\n", encoding="utf-8")
    chain.replace_block(out, chain.BEGIN, chain.END, "chain v1", after="# ")
    chain.replace_block(out, chain.BEGIN, chain.END, "chain v2", after="# ")
    text = out.read_text()
    assert text.count(chain.BEGIN) == 1 and "chain v2" in text and "chain v1" not in text
    assert text.index("# mgkd quality report") < text.index("chain v2") < text.index("## A. old section")
    # results.py rewrites the report from scratch: chain.py's block survives, right after the title
    rewritten = chain.R.with_chain_block("# mgkd quality report\n\nnew intro\n\n## A. new section\n", out)
    assert "old intro" not in rewritten and "chain v2" in rewritten
    assert rewritten.index("# mgkd quality report") < rewritten.index("chain v2") < rewritten.index("new intro")
    assert chain.R.with_chain_block("# t\n", tmp_path / "absent.md") == "# t\n"


def test_three_seeds_with_every_gap_inside_the_spread_say_none_not_one_seed(chain, monkeypatch):
    for name in ("_budget_of", "_run_line"):
        monkeypatch.setattr(chain.R, name, lambda *a: "x")
    monkeypatch.setattr(chain.R, "_data_line", lambda rec: "data")
    monkeypatch.setattr(chain.R, "_model_name", lambda g: f"d{g['params']['model.d_model']}")
    recs = []
    for seed, jitter in ((1, 0.0), (2, 2.0), (3, -2.0)):  # a spread of 4 BLEU against gaps of 0.5
        recs.append(_record(chain, seed, dict.fromkeys(range(6), 5.5 + jitter), dict.fromkeys(range(1, 6), 5 + jitter)))
    recs[0].parent = SimpleNamespace(data=SimpleNamespace(tags={"bench.hardware": "hw"}))
    block, _ = chain.report(recs, _args(), missing=[])
    assert "beat their control by more than the seed spread: none of 4 (target: all: not met)" in block
    assert "one seed" not in block


# --- the classification chain (--task classification) -------------------------------------------------------

CLS_SIZES = {0: 1.32e6, 1: 1.12e6, 2: 0.93e6, 3: 0.73e6, 4: 0.73e6}


def _cls_record(chain, seed: int, acc: dict[int, float], ctl: dict[int, float]):
    def run(k, a, loss):
        params = {"seed": str(seed + k), "generation": str(k), "model.arch": "transformer_classifier",
                  "model.d_model": "128", "model.encoder_layers": str(max(4 - k, 1)), "model.decoder_layers": "2",
                  "teacher_generations": f"[{k - 1}]", "loss.soft_label.weight": loss}  # fmt: skip
        metrics = {"test_accuracy": a, "test_macro_f1": a - 10, "parameters": CLS_SIZES[k]}
        return {"generation": k, "status": "FINISHED", "params": params, "metrics": metrics,
                "init_sha256": f"i{k}", "data_order_sha256": f"d{k}", "matched": True}  # fmt: skip

    gens = [run(k, acc[k], "0.5") for k in range(5)]
    controls = [run(k, ctl[k], "None") for k in range(1, 5)]
    raw = chain.lineages("demo", [seed], Path("unused"), ray=False, task="classification")[0].raw
    lin = SimpleNamespace(raw=raw, key=f"cls-chain-seed{seed}", what="x")
    return chain.R.Record(lin, {"lineage_id": "L", "generations": gens, "controls": controls}, None, None, True, "")


def test_the_classification_chain_is_the_preset_with_controls_and_no_direct_student(chain, tmp_path):
    (lin,) = chain.lineages("demo", [3], tmp_path, ray=True, task="classification")
    gens = lin.raw["generations"]
    assert lin.raw["task"] == "classification" and lin.raw["seed"] == 3
    assert gens["count"] == 4 and gens["control"] is True and 5 not in (gens.get("per_generation") or {})
    assert lin.raw["output_dir"] == str(tmp_path / "demo" / "cls-chain-seed3")  # not the demo chain's folder


def test_the_classification_report_judges_accuracy_and_goes_after_the_demo_chain(chain, monkeypatch, tmp_path):
    monkeypatch.setattr(chain.R, "_budget_of", lambda rec, k: "budget")
    monkeypatch.setattr(chain.R, "_data_line", lambda rec: "data")
    monkeypatch.setattr(chain.R, "_run_line", lambda rec: "run")
    recs = []
    for seed, j in ((1, 0.0), (2, 0.5), (3, -0.5)):
        acc = {0: 60 + j, 1: 59 + j, 2: 57 + j, 3: 55 + j, 4: 54 + j}
        ctl = {1: 55 + j, 2: 56.9 + j, 3: 58 + j, 4: 50 + j}  # 1 and 4 ahead, 2 inside the spread, 3 behind
        recs.append(_cls_record(chain, seed, acc, ctl))
    args = _args(task="classification")
    block, headline = chain.report(recs, args, missing=[])
    assert headline == ""  # the README's headline is the demo's
    assert block.startswith("## Classification: the tweet classifiers' chain")
    assert "--task classification --budget demo --seeds 1,2,3" in block
    assert "| 1 | Transformer encoder d128 3L | 1.12M (1.2x fewer) | gen 0 | 59.00 (58.50–59.50) |" in block
    assert "beat their control by more than the seed spread: 1, 4 of 4; behind it by more than the spread: 3" in block
    assert "checkpoint selected on validation accuracy" in block
    assert "(the gold labels + its soft labels (T=2.0) + its hidden states and attention (layer by layer, in the " \
           "first 30% of the steps))" in block  # fmt: skip
    assert "keeps 90% of its test accuracy" in block and "generation 5" not in block
    # a classification control that saw other batches is refused, as the demo's are
    recs[1].info["controls"][0]["data_order_sha256"] = "other"
    with pytest.raises(MgkdError, match="seed 2 generation 1: its control saw other batches"):
        chain.report(recs, args, missing=[])
    # its block goes right after the demo chain's, and bench/results.py keeps both when it rewrites the report
    out = tmp_path / "RESULTS.md"
    out.write_text("# mgkd quality report\n\n## A. old\n", encoding="utf-8")
    chain.replace_block(out, chain.BEGIN, chain.END, "demo chain", after="# ")
    t = chain.TASKS["classification"]
    chain.replace_block(out, t.begin, t.end, "tweet chain", after=t.after)
    text = out.read_text()
    assert text.index("demo chain") < text.index(chain.END) < text.index("tweet chain") < text.index("## A. old")
    rewritten = chain.R.with_chain_block("# mgkd quality report\n\n## A. new\n", out)
    assert rewritten.index("demo chain") < rewritten.index("tweet chain") < rewritten.index("## A. new")
    assert "## A. old" not in rewritten
