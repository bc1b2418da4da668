"""The lineage run's MLflow description (`mlflow.note.content`): the console table's rows as Markdown, each
generation linked to its run, KD − control only with controls, the plot once logged; written through a real
sqlite MLflow store, read back and parsed as a reader's Markdown renderer would split it."""

from __future__ import annotations

import re

from mgkd.generations import GenerationResult, build_schedule
from mgkd.lineage.note import MAX_NOTE_CHARS, TAG_NOTE, lineage_note, run_route, run_url
from mgkd.lineage.tracking import LineageRecorder
from mgkd.orchestration.display import lineage_rows
from mgkd.orchestration.recording import record_note
from mgkd.tasks import get_task

from ..helpers import tiny_config

METRICS = {"best_valid_loss": 3.0, "train_time_s": 5.0, "model_size_bytes": 150_000, "decode_sentences_per_s": 480.0}


def _table(note: str) -> tuple[list[str], list[list[str]]]:
    """The note's first Markdown table: its header and rows of cells (`\\|` inside a cell kept)."""
    lines = note.split("\n")
    assert lines[0].startswith("| gen |"), "the table must be the note's first line (the UI shows 100 px of it)"
    end = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))

    def cells(line: str) -> list[str]:
        return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]

    assert set(lines[1].replace("|", "")) == {"-"}
    return cells(lines[0]), [cells(line) for line in lines[2:end]]


def _text(cell: str) -> str:
    """A cell as the reader sees it: a link's text, `\\|` as `|`."""
    return re.sub(r"^\[(.*)\]\(.*\)$", r"\1", cell).replace("\\|", "|")


def _lineage(tmp_path, task: str = "translation"):
    specs = build_schedule(tiny_config(tmp_path, "generations.count=2", "generations.control=true"))
    scores = {"translation": {"test_bleu": 0.0, "test_chrf": 20.0},
              "classification": {"test_accuracy": 0.0, "test_macro_f1": 0.5}}[task]  # fmt: skip
    results = [
        GenerationResult(k, "", "", 30_000 + k, {**METRICS, **scores, next(iter(scores)): b})
        for k, b in ((0, 5.0), (1, 6.5), (2, 7.0))
    ]
    recorder = LineageRecorder(f"sqlite:///{tmp_path / 'mlflow.db'}", "note")
    lineage_id = recorder.start_lineage("note", {}, {})
    run_ids = [recorder.start_generation(lineage_id, r.index, {}, None, None) for r in results]
    return specs, results, recorder, lineage_id, run_ids


def test_the_note_is_the_console_table_with_each_generation_linked_to_its_run(tmp_path):
    specs, results, recorder, lineage_id, run_ids = _lineage(tmp_path)
    task = get_task("translation")
    control = GenerationResult(1, "", "", 30_001, {**METRICS, "test_bleu": 7.25, "test_chrf": 19.0})
    control_run = recorder.start_control(lineage_id, run_ids[1], 1, {}, None, None)
    record_note(recorder, lineage_id, specs, results, run_ids, {1: control}, {1: control_run}, task=task)
    note = recorder.client.get_run(lineage_id).data.tags[TAG_NOTE]
    header, rows = _table(note)
    columns, console_rows = lineage_rows(specs, results, {1: control}, task=task)
    assert header == columns  # every column of the console's table, in its order
    assert header == ["gen", "architecture", "params", "valid loss", "test BLEU", "test chrF", "control BLEU",
                      "KD − control BLEU", "size on disk", "test decode", "train time", "teacher"]  # fmt: skip
    assert len(rows) == 3
    exp = recorder.experiment_id
    for k, (row, console_row) in enumerate(zip(rows, console_rows)):
        assert row[0] == f"[{k}]({run_route(exp, run_ids[k])})"  # gen opens the generation's run
        assert [_text(c) for c in row] == console_row  # the console's cells, nothing dropped or moved
        assert row[4] == f"{results[k].metrics['test_bleu']:.2f}" and row[8] == "0.15 MB" and row[9] == "480.0 sent/s"
    assert rows[1][6] == f"[7.25]({run_route(exp, control_run)})" and rows[1][7] == "-0.75"
    assert rows[0][6:8] == ["-", "-"] and rows[2][11] == "gen 1 (teacher init)"
    assert run_route(exp, run_ids[0]) == f"#/experiments/{exp}/runs/{run_ids[0]}?workflowType=machine_learning"
    assert "1 of 3" not in note and "3 of 3 generations finished" in note and "lineage.png" not in note

    # No control: no control columns; the plot once logged, as the UI's server serves the artifact.
    record_note(recorder, lineage_id, specs, results, run_ids, {}, {}, task=task, plot="lineage.png")
    note = recorder.client.get_run(lineage_id).data.tags[TAG_NOTE]
    header, rows = _table(note)
    assert not any("control" in c for c in header) and len(header) == 10 and len(rows) == 3
    assert f"](get-artifact?path=lineage.png&run_uuid={lineage_id})" in note


def test_a_classification_note_shows_the_tasks_own_metrics(tmp_path):
    specs, results, recorder, lineage_id, run_ids = _lineage(tmp_path, "classification")
    task = get_task("classification")
    record_note(recorder, lineage_id, specs, results[:2], run_ids[:2], {}, {}, task=task)
    header, rows = _table(recorder.client.get_run(lineage_id).data.tags[TAG_NOTE])
    assert header[4:6] == ["test accuracy", "test macro-F1"] and not any("BLEU" in c for c in header)
    assert [r[4] for r in rows] == ["5.00", "6.50"]
    assert "2 of 3 generations finished" in recorder.client.get_run(lineage_id).data.tags[TAG_NOTE]


def test_a_long_lineage_keeps_its_newest_rows_under_mlflows_limit_and_cells_are_escaped():
    columns = ["gen", "architecture", "test BLEU"]
    rows = [[str(k), f"external hf: a|b {k}", f"{k}.00"] for k in range(200)]
    links = [{"gen": run_route("1", f"{k:032d}")} for k in range(200)]
    note = lineage_note(columns, rows, links, "status")
    assert len(note) <= MAX_NOTE_CHARS
    header, kept = _table(note)
    assert header == columns and kept[-1][2] == "199.00" and kept[-1][1] == "external hf: a\\|b 199"
    first = int(kept[0][0].split("]")[0].lstrip("["))
    assert first > 0 and f"Generations 0 to {first - 1} are left out here" in note
    assert [int(r[0].split("]")[0].lstrip("[")) for r in kept] == list(range(first, 200))


def test_the_printed_url_opens_the_model_training_view():
    assert run_url("http://127.0.0.1:5000/", "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
