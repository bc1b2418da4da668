"""Each generation as an MLflow `python_function` model: load it anywhere, serve it with `mlflow models serve`.

The model's artifacts are the generation's checkpoint and sentencepiece model; its code is this package
(copied into the model with `code_paths`, so a serving environment needs mgkd's dependencies, not a
checkout); `predict` runs the same engine as `mgkd translate` / `mgkd predict` (deploy/inference.py),
so the outputs are the same. Requirements are pinned from the running environment: logging never spends
seconds inferring them by loading the model in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc

# What the model imports when it is loaded (mgkd's runtime dependencies on the inference path).
RUNTIME_PACKAGES = ("mlflow", "torch", "sentencepiece", "numpy", "pandas", "pydantic", "pyyaml", "sacrebleu")
EXAMPLE_TEXTS = {"translation": ["In the beginning God created the heavens and the earth."],
                 "classification": ["What a wonderful day!"]}  # fmt: skip


def pinned_requirements() -> list[str]:
    """`package==version` for each runtime package as installed here (CPU torch keeps its local tag)."""
    out = []
    for name in RUNTIME_PACKAGES:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


class DistilledModel(mlflow.pyfunc.PythonModel):
    """A translation or classification generation: a DataFrame with a `text` column in, outputs per row."""

    def load_context(self, context: Any) -> None:
        import sentencepiece as spm

        from mgkd.deploy.inference import DecodeOptions, build_engine
        from mgkd.generations.checkpoint import load_checkpoint

        cfg = json.loads(Path(context.artifacts["settings"]).read_text(encoding="utf-8"))
        model, payload = load_checkpoint(Path(context.artifacts["checkpoint"]), cfg.get("checkpoint_sha256"))
        model.eval()
        sp = spm.SentencePieceProcessor(model_file=context.artifacts["tokenizer"])
        self.engine = build_engine(model, payload, sp, DecodeOptions.of_checkpoint(payload), cfg)

    # No type hints on predict's arguments: MLflow reads them as an input schema (and warns that `Any` is
    # none); the logged signature is the schema.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """Translations (a list of str) or a DataFrame of label and probability, one row per input row."""
        import pandas as pd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({"text": list(model_input)})
        texts = [str(t) for t in frame["text"]]
        if "text_pair" in frame.columns:  # classification of pairs: the engine reads text<TAB>pair
            texts = [t if p is None or p != p else f"{t}\t{p}" for t, p in zip(texts, frame["text_pair"])]
        outputs = self.engine.run(texts).outputs
        if self.engine.task == "translation":
            return outputs
        return pd.DataFrame({"label": [o[0] for o in outputs], "probability": [o[1] for o in outputs]})


def signature(task: str) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    if task == "translation":
        return ModelSignature(Schema([ColSpec("string", "text")]), Schema([ColSpec("string")]))
    inputs = Schema([ColSpec("string", "text"), ColSpec("string", "text_pair", required=False)])
    return ModelSignature(inputs, Schema([ColSpec("string", "label"), ColSpec("double", "probability")]))


@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent API (which log_model needs) pointed at `uri` for the block, then restored."""
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    # set_tracking_uri also exports MLFLOW_TRACKING_URI: the variables are restored exactly as they were.
    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    before_t, before_r = tracking_state._tracking_uri, registry_state._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before_t)
        mlflow.set_registry_uri(before_r)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _logging_into(run_id: str) -> Iterator[None]:
    """The run as the fluent API's active run for the block (log_model logs into the active run), left in the
    status it had. `with mlflow.start_run(run_id=...)` would end it FINISHED, and FINISHED is the controller's
    mark of a generation recorded in full (resume reuses it as it is): a kill between log_model and the registry
    left a finished generation without its registry version."""
    status = mlflow.MlflowClient().get_run(run_id).info.status
    mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
    try:
        yield
    finally:
        mlflow.end_run(status=status)


def log_generation_model(tracking_uri: str, run_id: str, checkpoint: Path, tokenizer: Path, sha256: str,
                         task: str, settings: dict[str, Any] | None = None) -> tuple[str, str]:  # fmt: skip
    """Log the generation as the run's `model` (a logged model of the run).

    Returns:
        The logged model's id and its artifact location (what a registry version's source names).
    """
    import pandas as pd

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # The settings travel as an artifact, not as model_config: MLflow would log model_config as run params.
    tmp = Path(tempfile.mkdtemp(prefix="mgkd-pyfunc-"))
    (tmp / "settings.json").write_text(json.dumps({"checkpoint_sha256": sha256, **(settings or {})}), encoding="utf-8")
    code = str(Path(__file__).resolve().parents[1])  # the mgkd package
    with _tracking(tracking_uri), _logging_into(run_id), warnings.catch_warnings():
        # MLflow warns that a PythonModel object is cloudpickled and that `predict`'s type hints give no
        # signature: the class is imported from the model's own code copy, and the signature is explicit.
        warnings.simplefilter("ignore")
        logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=DistilledModel(),
            artifacts={
                "checkpoint": str(checkpoint),
                "tokenizer": str(tokenizer),
                "settings": str(tmp / "settings.json"),
            },
            code_paths=[code],
            signature=signature(task),
            input_example=pd.DataFrame({"text": EXAMPLE_TEXTS[task]}),
            pip_requirements=pinned_requirements(),
        )
        location = mlflow.MlflowClient(tracking_uri).get_logged_model(info.model_id).artifact_location
    shutil.rmtree(tmp, ignore_errors=True)
    return info.model_id, location
