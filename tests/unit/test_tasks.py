"""Tasks as components: what each task declares holds together, selection follows the declared direction,
and both tasks train through the one generation recipe."""

from __future__ import annotations

import csv
import random
from dataclasses import replace
from pathlib import Path

import pytest

from mgkd.config import build_config, preset_names
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule, train_generation
from mgkd.orchestration.sweep import selection_metric
from mgkd.tasks import STEPS, TASKS, get_task, lower_is_better, metric, prepare, scores_line, selection_score, steps_of
from mgkd.tasks.classification import CLASSIFICATION
from mgkd.tasks.translation import TRANSLATION

from ..helpers import tiny_config

TINY_CLASSIFIER = [
    "classification.max_length=24", "tokenizer.vocab_size=120", "split.valid_fraction=0.1",
    "split.test_fraction=0.1", "model.d_model=32", "model.n_heads=2", "model.ff_dim=64", "model.encoder_layers=1",
    "model.max_positions=32", "train.max_tokens=320", "train.threads=1", "train.max_steps=3",
    "train.warmup_steps=1", "generations.count=1", "ray.enabled=false",
]  # fmt: skip


def _reviews(path: Path, n: int = 240) -> Path:
    """Short distinct reviews whose label is carried by one word."""
    rng = random.Random(0)
    filler = "the a this movie film plot actor scene was is it and but really very quite so story end".split()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            words = [*rng.choices(filler, k=rng.randint(4, 9)), "great" if i % 2 else "awful"]
            w.writerow([" ".join(words), ("negative", "positive")[i % 2]])
    return path


def test_every_task_declares_what_it_names_and_has_recipe_hooks():
    assert set(TASKS) == {"translation", "classification"} == set(STEPS)
    for task in TASKS.values():
        names = [m.name for m in task.metrics]
        assert len(names) == len(set(names)) and "loss" in names, task.name
        # Every metric the rest of mgkd reads by name is one the task declares (metric() raises otherwise).
        for name in (*task.select_by, *task.table, *task.plot):
            metric(task, name)
        assert all(by.startswith("valid_") for by in task.select_by)
        assert task.preset in preset_names()
        assert "gold" in task.views
        assert STEPS[task.name].task is task


def test_a_task_is_found_by_its_folder(tmp_path, monkeypatch):
    """A task folder (TASK in its __init__, STEPS in its steps.py) next to the built-in ones is registered
    without editing any other module: the registry walks mgkd.tasks' sub-packages."""
    import mgkd.tasks

    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "__init__.py").write_text("from types import SimpleNamespace\nTASK = SimpleNamespace(name='toy')\n")
    (folder / "steps.py").write_text(
        "from mgkd.tasks.toy import TASK\nclass ToySteps:\n    task = TASK\nSTEPS = ToySteps()\n"
    )
    monkeypatch.setattr(mgkd.tasks, "__path__", [*mgkd.tasks.__path__, str(tmp_path)])
    tasks, steps = mgkd.tasks._discover()
    assert list(tasks) == ["translation", "classification", "toy"]
    assert steps["toy"].task is tasks["toy"] and steps["translation"] is STEPS["translation"]


def test_selection_minimises_losses_and_maximises_scores():
    assert lower_is_better(TRANSLATION, "valid_loss") and not lower_is_better(TRANSLATION, "valid_bleu")
    assert not lower_is_better(CLASSIFICATION, "best_valid_macro_f1")
    # The lower selection score wins: the smaller loss, the larger BLEU / accuracy.
    assert selection_score(TRANSLATION, "valid_loss", {"valid_loss": 2.0}) < selection_score(
        TRANSLATION, "valid_loss", {"valid_loss": 3.0})  # fmt: skip
    assert selection_score(TRANSLATION, "valid_bleu", {"valid_bleu": 30.0}) < selection_score(
        TRANSLATION, "valid_bleu", {"valid_bleu": 20.0})  # fmt: skip
    assert selection_score(CLASSIFICATION, "valid_accuracy", {"valid_accuracy": 90.0}) < selection_score(
        CLASSIFICATION, "valid_accuracy", {"valid_accuracy": 80.0})  # fmt: skip
    with pytest.raises(KeyError, match="no metric 'valid_bleu'"):
        metric(CLASSIFICATION, "valid_bleu")


def test_a_sweep_compares_trials_in_the_tasks_direction(tmp_path):
    spec = build_schedule(tiny_config(tmp_path, "generations.count=1"))[0]
    assert selection_metric(spec, TRANSLATION) == ("valid_loss", "min")
    by_bleu = replace(spec, eval=spec.eval.model_copy(update={"select_by": "valid_bleu"}))
    assert selection_metric(by_bleu, TRANSLATION) == ("valid_bleu", "max")
    by_f1 = replace(spec, eval=spec.eval.model_copy(update={"select_by": "valid_macro_f1"}))
    assert selection_metric(by_f1, CLASSIFICATION) == ("valid_macro_f1", "max")


def test_the_schedule_refuses_unknown_tasks_and_other_tasks_metrics(tmp_path):
    with pytest.raises(MgkdError, match=r"unknown task 'ranking'; known tasks: translation, classification"):
        build_schedule(tiny_config(tmp_path, "task=ranking"))
    with pytest.raises(MgkdError, match=r"select_by 'valid_accuracy' is classification's; task translation "
                                        r"selects by valid_loss or valid_bleu"):  # fmt: skip
        build_schedule(tiny_config(tmp_path, "eval.select_by=valid_accuracy"))
    with pytest.raises(MgkdError, match=r"select_by 'valid_blue' is no task's metric"):
        build_schedule(tiny_config(tmp_path, "eval.select_by=valid_blue"))


def test_scores_line_shows_the_tasks_table_metrics():
    assert scores_line(TRANSLATION, {"test_bleu": 31.2, "test_chrf": 55.1, "test_loss": 1.0}) == (
        "test BLEU 31.20  chrF 55.10")  # fmt: skip
    # MCC only where the run computed it (classification.extra_metrics)
    assert scores_line(CLASSIFICATION, {"test_accuracy": 90.0, "test_macro_f1": 88.5}) == (
        "test accuracy 90.00  macro-F1 88.50")  # fmt: skip


@pytest.mark.parametrize("task", ["translation", "classification"])
def test_both_tasks_train_through_the_one_recipe_and_validate_every_select_by(task, tmp_path, tiny_data,
                                                                              one_torch_thread):  # fmt: skip
    """One generation of each task through `train_generation`: every metric the task offers for selection is
    one its validation computes, and selection picked the best epoch by it."""
    if task == "translation":
        cfg = tiny_config(tmp_path, "generations.count=1", "train.max_steps=3", "eval.valid_bleu_sentences=8",
                          "eval.select_by=valid_bleu")  # fmt: skip
        data = tiny_data
    else:
        cfg = build_config(
            preset="classification",
            overrides=[
                *TINY_CLASSIFIER,
                f"output_dir={tmp_path}",
                f"classification.source={_reviews(tmp_path / 'r.csv')}",
            ],
        )
        data = prepare(cfg)
    assert steps_of(data).task is get_task(task)
    spec = build_schedule(cfg)[0]
    result = train_generation(spec, data, tmp_path / "g0")
    m = result.metrics
    for by in get_task(task).select_by:
        assert f"best_{by}" in m, by
    assert m["steps"] == 3.0
    assert all(name in m for name in get_task(task).plot)
    assert Path(result.translations).is_file() and result.samples


def test_batches_cut_by_the_longest_targets_keep_the_budget_for_every_target_a_step_reads():
    """train.batch_targets longest: with_longest_targets gives batch_indices each example's longest target, so a
    batch holds no more padded target positions than max_tokens for the gold targets and the teacher's alike."""
    import numpy as np

    from mgkd.tasks.translation import SplitData, batch_indices, with_longest_targets

    rng = np.random.default_rng(0)
    n = 300
    src = [np.ones(int(k), np.int32) for k in rng.integers(3, 20, n)]
    gold = [np.ones(int(k), np.int32) for k in rng.integers(3, 20, n)]
    made = [np.ones(int(k), np.int32) for k in rng.integers(1, 40, n)]  # the teacher's: unlike the references
    ids = [str(i) for i in range(n)]
    train = SplitData(ids, ids, ids, src, gold)
    view = SplitData(ids, ids, ids, src, made)
    plan = with_longest_targets(train, [view])
    assert [len(t) for t in plan.tgt] == [max(len(g), len(m)) for g, m in zip(gold, made)]
    assert plan.src is train.src and train.tgt is gold  # the gold split is left as it was

    def widest(batches, targets):
        return max((max(len(targets[i]) for i in b) + 1) * len(b) for b in batches)

    cut_by_gold = batch_indices(train, 256, shuffle=True, seed=1)
    assert widest(cut_by_gold, gold) <= 256 < widest(cut_by_gold, made)  # the teacher's targets overflow
    cut_by_longest = batch_indices(plan, 256, shuffle=True, seed=1)
    assert widest(cut_by_longest, gold) <= 256 and widest(cut_by_longest, made) <= 256
    assert sorted(i for b in cut_by_longest for i in b) == list(range(n))  # every example, once
    with pytest.raises(ValueError, match="row for row"):
        with_longest_targets(train, [SplitData(ids[:5], ids[:5], ids[:5], src[:5], made[:5])])
