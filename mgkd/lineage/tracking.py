"""MLflow: one parent run per lineage, one child run per generation, and reading it back.

Only the driver talks to MLflow (workers send events), so a Ray worker never
needs network access to the tracking server. Everything goes through an
explicit `MlflowClient`: no fluent global "active run".

Tags that make the lineage (on each generation's run):
  mgkd.lineage_id                  the parent run's id
  mgkd.generation                  0 for the teacher, k for the k-th student
  mgkd.teacher_run_id              generation k-1's run id (absent on generation 0)
  mgkd.teacher_checkpoint_sha256   sha256 of the checkpoint this generation learned from
  mgkd.checkpoint_sha256           sha256 of this generation's selected checkpoint
  mgkd.init_sha256                 sha256 of the student's weights before its first step
  mgkd.data_order_sha256           sha256 of its training batches in order (every epoch of the budget)
  mgkd.control_run_id              its matched control's run (generations.control)

A matched control is a child run of the lineage with `mgkd.kind=control`,
`mgkd.control_of=<generation run id>` and the generation's index: it is never
one of the lineage's generations (never a teacher, not in the model registry).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mgkd.errors import MgkdError

TAG_LINEAGE = "mgkd.lineage_id"
TAG_GENERATION = "mgkd.generation"
TAG_TEACHER_RUN = "mgkd.teacher_run_id"
TAG_TEACHER_SHA = "mgkd.teacher_checkpoint_sha256"
TAG_CHECKPOINT_SHA = "mgkd.checkpoint_sha256"
TAG_KIND = "mgkd.kind"  # "lineage" | "generation"
TAG_MODEL = "mgkd.registered_model"
TAG_CONTROL_OF = "mgkd.control_of"  # on a control: the run id of the generation it is the twin of
TAG_CONTROL_RUN = "mgkd.control_run_id"  # on a generation: its control's run id
TAG_INIT_SHA = "mgkd.init_sha256"
TAG_DATA_ORDER_SHA = "mgkd.data_order_sha256"


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{(Path(output_dir) / 'mlflow.db').resolve()}"


def check_tracking_uri(uri: str) -> None:
    """Fail early, with one clear message, when the store cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as r:
                if r.status != 200:
                    raise MgkdError(f"MLflow server {uri} answered /health with HTTP {r.status}; check the server")
        except (urllib.error.URLError, OSError) as e:
            raise MgkdError(
                f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}); start it "
                "(mlflow server --host 127.0.0.1 --port 5000) or fix --tracking-uri / tracking.uri"
            ) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MgkdError(f"cannot create the folder of the MLflow store {db}: {e}") from None
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise MgkdError(f"the MLflow store {db} is not writable; choose another output_dir or tracking.uri")
    elif "://" not in uri or uri.startswith("file:"):
        raise MgkdError(
            f"tracking URI {uri!r}: MLflow's file store is deprecated; use sqlite:///path/to/mlflow.db "
            "or an http(s):// tracking server"
        )


LAST_LINEAGE = "last_lineage.json"  # in an output folder: its newest lineage, for ui/lineage/resume


def write_last_lineage(output_dir: Path, record: dict[str, Any]) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / LAST_LINEAGE).write_text(json.dumps(record), encoding="utf-8")


def read_last_lineage(output_dir: Path) -> dict[str, Any] | None:
    """What the output folder's newest run recorded (lineage_id, tracking_uri, experiment, ...); None if no run."""
    marker = Path(output_dir) / LAST_LINEAGE
    if not marker.is_file():
        return None
    try:
        last = json.loads(marker.read_text(encoding="utf-8"))
        for key in ("lineage_id", "tracking_uri", "experiment"):
            last[key]  # noqa: B018 - required keys
    except (ValueError, KeyError, TypeError):
        raise MgkdError(f"{marker} is unreadable; remove it or choose another --output-dir") from None
    return last


def lineage_config(tracking_uri: str, lineage_id: str) -> dict[str, Any]:
    """The lineage's resolved config as its parent run recorded it (`config.yaml`), as raw data."""
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory(prefix="mgkd-config-") as tmp:
        path = Path(mlflow_client(tracking_uri).download_artifacts(lineage_id, "config.yaml", tmp))
        return yaml.safe_load(path.read_text(encoding="utf-8"))


def mlflow_client(uri: str) -> Any:
    """An MlflowClient on `uri` for both tracking and the model registry (mlflow imported on first use)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return out


class LineageRecorder:
    """Writes one lineage into an MLflow tracking store."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> None:
        check_tracking_uri(tracking_uri)
        self.uri = tracking_uri
        self.client = mlflow_client(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = Path(artifact_root).resolve().as_uri() if artifact_root else None
            # The MLflow 3 UI opens an experiment in its "Model training" view (runs table) with this kind,
            # not in the GenAI traces view.
            kind = {"mlflow.experimentKind": "custom_model_development"}
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location, tags=kind)
        else:
            self.experiment_id = exp.experiment_id

    # -- runs ------------------------------------------------------------------------

    def start_lineage(self, name: str, config: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"{name}-lineage", tags={TAG_KIND: "lineage", **tags})
        run_id = run.info.run_id
        self.client.set_tag(run_id, TAG_LINEAGE, run_id)
        self._log_params(run_id, flatten(config))
        return run_id

    def start_generation(self, lineage_id: str, index: int, params: dict[str, Any], teacher_run_id: str | None,
                         teacher_sha256: str | None) -> str:  # fmt: skip
        tags = {
            "mlflow.parentRunId": lineage_id,
            TAG_KIND: "generation",
            TAG_LINEAGE: lineage_id,
            TAG_GENERATION: str(index),
        }
        if teacher_run_id:
            tags[TAG_TEACHER_RUN] = teacher_run_id
            tags[TAG_TEACHER_SHA] = teacher_sha256 or ""
        run_name = "gen-0-teacher" if index == 0 else f"gen-{index}"
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self._log_params(run.info.run_id, {k: str(v) for k, v in params.items()})
        return run.info.run_id

    def start_control(self, lineage_id: str, generation_run_id: str, index: int, params: dict[str, Any],
                      teacher_run_id: str | None, teacher_sha256: str | None) -> str:  # fmt: skip
        """Generation `index`'s matched control: a child run of the lineage, tagged with the generation's run."""
        tags = {"mlflow.parentRunId": lineage_id, TAG_KIND: "control", TAG_LINEAGE: lineage_id,
                TAG_GENERATION: str(index), TAG_CONTROL_OF: generation_run_id}  # fmt: skip
        if teacher_run_id:  # where init teacher/cut copied from; no loss of a control reads the teacher
            tags[TAG_TEACHER_RUN] = teacher_run_id
            tags[TAG_TEACHER_SHA] = teacher_sha256 or ""
        run = self.client.create_run(self.experiment_id, run_name=f"gen-{index}-control", tags=tags)
        self._log_params(run.info.run_id, {k: str(v) for k, v in params.items()})
        return run.info.run_id

    def start_trial(self, lineage_id: str, generation_run_id: str, index: int, trial_id: str,
                    params: dict[str, Any], tags: dict[str, str]) -> str:  # fmt: skip
        """A Tune trial of generation `index`: a run nested under the generation's run."""
        tags = {"mlflow.parentRunId": generation_run_id, TAG_KIND: "trial", TAG_LINEAGE: lineage_id,
                TAG_GENERATION: str(index), "mgkd.trial_id": trial_id, **tags}  # fmt: skip
        run = self.client.create_run(self.experiment_id, run_name=f"gen-{index}-trial-{trial_id}", tags=tags)
        self._log_params(run.info.run_id, {k: str(v) for k, v in params.items()})
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        self._log_params(run_id, params)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])

    def log_artifact(self, run_id: str, path: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_inputs(self, run_id: str, datasets: list[Any]) -> None:
        self.client.log_inputs(run_id, datasets=datasets)

    def log_dict(self, run_id: str, data: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def log_table(self, run_id: str, columns: dict[str, list[str]], artifact_file: str) -> None:
        self.client.log_table(run_id, data=columns, artifact_file=artifact_file)

    def register(self, model_name: str, run_id: str, artifact_path: str, tags: dict[str, str],
                 logged_model: tuple[str, str] | None = None) -> int:  # fmt: skip
        """Register the run's logged model (id, artifact location) or else its artifact folder as the next
        version of `model_name`; returns the version."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(model_name)
        except MlflowException:
            self.client.create_registered_model(model_name, description="an mgkd lineage: version k is generation k")
        model_id, source = logged_model or (None, f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}")
        mv = self.client.create_model_version(model_name, source, run_id=run_id, tags=tags, model_id=model_id)
        return int(mv.version)

    def lineage_tags(self, run_id: str) -> dict[str, str]:
        """The run's `mgkd.*` tags (lineage, generation, teacher edges, checkpoint checksum)."""
        return {k: v for k, v in self.client.get_run(run_id).data.tags.items() if k.startswith("mgkd.")}

    def reopen(self, run_id: str) -> None:
        """Mark a killed/failed run as running again (resume continues it instead of starting a new one)."""
        self.client.update_run(run_id, status="RUNNING")

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


# -- reading a lineage back -----------------------------------------------------------


def read_lineage(tracking_uri: str, lineage_id: str | None = None, experiment: str | None = None) -> dict[str, Any]:
    """The lineage as plain data: its parent run and generations in order, with tags and metrics.

    `lineage_id` is the parent run's id; without it, the newest lineage of `experiment`.
    """
    client = mlflow_client(tracking_uri)
    if lineage_id is None:
        if experiment is None:
            raise MgkdError("give a lineage id (the parent run id) or --experiment NAME")
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise MgkdError(f"no experiment {experiment!r} in {tracking_uri}")
        parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'lineage'",
                                     order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
        if not parents:
            raise MgkdError(f"experiment {experiment!r} in {tracking_uri} holds no mgkd lineage")
        parent = parents[0]
    else:
        try:
            parent = client.get_run(lineage_id)
        except Exception:
            raise MgkdError(f"no lineage run {lineage_id!r} in {tracking_uri}") from None
    lid = parent.info.run_id
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{TAG_LINEAGE}` = '{lid}' and tags.`{TAG_KIND}` = 'generation'",
    )
    gens = sorted(children, key=lambda r: int(r.data.tags[TAG_GENERATION]))
    controls = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{TAG_LINEAGE}` = '{lid}' and tags.`{TAG_KIND}` = 'control'",
    )
    return {
        "lineage_id": lid,
        "experiment_id": parent.info.experiment_id,
        "status": parent.info.status,
        "tags": dict(parent.data.tags),
        "params": dict(parent.data.params),  # the config's top level, e.g. its task
        "generations": [
            {
                "generation": int(r.data.tags[TAG_GENERATION]),
                "run_id": r.info.run_id,
                "run_name": r.info.run_name,
                "status": r.info.status,
                "teacher_run_id": r.data.tags.get(TAG_TEACHER_RUN),
                "teacher_checkpoint_sha256": r.data.tags.get(TAG_TEACHER_SHA),
                "checkpoint_sha256": r.data.tags.get(TAG_CHECKPOINT_SHA),
                "init_sha256": r.data.tags.get(TAG_INIT_SHA),
                "data_order_sha256": r.data.tags.get(TAG_DATA_ORDER_SHA),
                "control_run_id": r.data.tags.get(TAG_CONTROL_RUN),
                "arch": r.data.params.get("model.arch"),
                "metrics": dict(r.data.metrics),
                "params": dict(r.data.params),
            }
            for r in gens
        ],
        # Matched controls (generations.control): not generations, listed apart, by the index they twin.
        "controls": [
            {
                "generation": int(r.data.tags[TAG_GENERATION]),
                "run_id": r.info.run_id,
                "run_name": r.info.run_name,
                "status": r.info.status,
                "control_of": r.data.tags.get(TAG_CONTROL_OF),
                "checkpoint_sha256": r.data.tags.get(TAG_CHECKPOINT_SHA),
                "init_sha256": r.data.tags.get(TAG_INIT_SHA),
                "data_order_sha256": r.data.tags.get(TAG_DATA_ORDER_SHA),
                "matched": r.data.tags.get("mgkd.control_matched") == "true",
                "metrics": dict(r.data.metrics),
                "params": dict(r.data.params),
            }
            for r in sorted(controls, key=lambda r: (int(r.data.tags[TAG_GENERATION]), r.info.start_time))
        ],
    }


# -- the rest of the record: datasets (the plot: lineage/plot.py) ---------------------


def dataset_inputs(name: str, splits: dict[str, dict[str, Any]]) -> list[Any]:
    """MLflow dataset inputs for the splits: name, content digest, where they live, their size."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    out = []
    for split, info in splits.items():
        ds = Dataset(
            name=f"{name}-{split}",
            digest=info["digest"][:36],
            source_type="local",
            source=json.dumps({"uri": info["uri"]}),
            schema=json.dumps({"columns": ["id", "source", "target"]}),
            profile=json.dumps(
                {
                    "num_rows": info["rows"],
                    **{k: v for k, v in info.items() if k.endswith("tokens")},
                    "sha256": info["digest"],
                }
            ),
        )
        out.append(DatasetInput(ds, tags=[InputTag("mlflow.data.context", split)]))
    return out
