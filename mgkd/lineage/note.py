"""The lineage as the MLflow UI first shows it: the lineage run's description (`mlflow.note.content`, Markdown)
and the URL that opens it in MLflow's "Model training" view.

MLflow 3.17's UI decides between its GenAI and its "Model training" views by the URL's `workflowType` query
parameter, else by the browser's last choice (a fresh profile: GenAI); the experiment's `mlflow.experimentKind`
tag is not read for that. So every URL mgkd prints or writes carries the parameter.

The run page shows the description first (on a window wide enough for its two columns) but only its first
100 pixels until "Show more" is clicked: the table comes first, with nothing above it, so a short lineage's rows
are on the first screen.
"""

from __future__ import annotations

from urllib.parse import quote

TAG_NOTE = "mlflow.note.content"  # the run's description in MLflow's UI (Markdown)
MAX_NOTE_CHARS = 8000  # MLflow's limit on a tag's value
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def run_route(experiment_id: str, run_id: str) -> str:
    """The UI's route to a run in the "Model training" view, relative to the UI's root (`#/experiments/...`)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def run_url(ui_root: str, experiment_id: str, run_id: str) -> str:
    """The full URL of a run's page in the "Model training" view, e.g. `http://127.0.0.1:5000/#/experiments/1/...`."""
    return ui_root.rstrip("/") + "/" + run_route(experiment_id, run_id)


def artifact_image_url(run_id: str, path: str) -> str:
    """A run's artifact as the UI's own server serves it (relative to the UI's root, so any host and port work)."""
    return f"get-artifact?path={quote(path)}&run_uuid={run_id}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: list[str], rows: list[list[str]], links: list[dict[str, str]]) -> str:
    """A Markdown table of `rows` under `columns`; `links[i]` maps a column to the URL its cell in row i opens."""
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row, row_links in zip(rows, links, strict=True):
        if len(row) != len(columns):
            raise ValueError(f"a row has {len(row)} cells for {len(columns)} columns: {row}")
        cells = [f"[{_cell(v)}]({row_links[c]})" if c in row_links else _cell(v) for c, v in zip(columns, row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lineage_note(columns: list[str], rows: list[list[str]], links: list[dict[str, str]], status: str,
                 plot_url: str | None = None) -> str:  # fmt: skip
    """The lineage run's description: the generation table first (nothing above it), then what the table's
    links open, the lineage's status, and its plot where logged. Kept under MLflow's limit on a tag's value by
    leaving out the earliest generations (`mgkd lineage` lists them all)."""
    below = [
        "",
        "Each `gen` opens that generation's run: its metrics, checkpoint, logged model and registered version.",
        "",
        status,
    ]
    if plot_url is not None:
        below += ["", f"![lineage.png: test scores and parameters by generation]({plot_url})"]
    first = 0
    while True:
        table = markdown_table(columns, rows[first:], links[first:])
        left_out = f"\nGenerations 0 to {first - 1} are left out here: `mgkd lineage` lists them all.\n"
        note = "\n".join([table, *([left_out] if first else []), *below])
        if len(note) <= MAX_NOTE_CHARS or first >= len(rows) - 1:
            return note[:MAX_NOTE_CHARS]
        first += 1
