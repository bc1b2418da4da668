"""Where a deployed model comes from: a lineage generation, a registry version, or a checkpoint file.

Every source ends in the same `Bundle`: the checkpoint and the sentencepiece model on local disk, the
checksum the checkpoint was verified against, and the task settings the model was trained with (decoding
limits for translation, label names and input length for classification). Nothing is loaded before its
checksum matches what the lineage recorded.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mgkd.errors import MgkdError
from mgkd.generations.checkpoint import load_checkpoint, sha256_file
from mgkd.lineage.tracking import TAG_CHECKPOINT_SHA, lineage_config, mlflow_client, read_last_lineage, read_lineage

REGISTRY_PREFIX = "models:/"
DEFAULT_CLASSIFICATION_MAX_LENGTH = 64  # classification.max_length's default, for a bare checkpoint


@dataclass
class Bundle:
    """A model ready to load: files on disk and what it was trained with."""

    checkpoint: Path
    tokenizer: Path
    sha256: str | None  # what the checkpoint was verified against (None: nothing recorded to verify with)
    description: str  # where it came from, for messages
    settings: dict[str, Any] = field(default_factory=dict)  # classification max_length, from the lineage

    def load(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The model (eval mode) and its checkpoint payload; the sha256 is checked again on load."""
        model, payload = load_checkpoint(self.checkpoint, self.sha256)
        model.eval()
        return model, payload


def resolve(
    model: str | None,
    run: str | None,
    generation: int | None,
    tracking_uri: str | None,
    output_dir: Path,
    tokenizer: Path | None,
    sha256: str | None,
    workdir: Path,
) -> Bundle:
    """The bundle a command's options name (files downloaded under `workdir`).

    Args:
        model: `models:/NAME/VERSION` or a checkpoint path; None: a lineage generation.
        run: the lineage run id; None: the output folder's last lineage.
        generation: the generation; None: the lineage's last finished one.
        tracking_uri: the MLflow store; None: MLFLOW_TRACKING_URI or the output folder's.
        output_dir: a run's output folder (its last lineage and store).
        tokenizer: the sentencepiece model of a checkpoint path (default: found beside it).
        sha256: the expected checksum of a checkpoint path (default: what its lineage recorded).

    Raises:
        MgkdError: unknown run, generation or registered model, a checksum mismatch, a missing file.
    """
    if model is not None and (run is not None or generation is not None):
        raise MgkdError("give either a model (models:/NAME/VERSION or a checkpoint path) or --run/--generation")
    if model is not None and model.startswith(REGISTRY_PREFIX):
        return _from_registry(model, _store(tracking_uri, output_dir), workdir)
    if model is not None:
        return _from_path(Path(model), tokenizer, sha256)
    uri = _store(tracking_uri, output_dir)
    if run is None:
        last = read_last_lineage(output_dir)
        if last is None:
            raise MgkdError(
                f"{output_dir} holds no mgkd run; give --run LINEAGE_RUN_ID, models:/NAME/VERSION "
                "or a checkpoint path (or --output-dir of a run)"
            )
        run = last["lineage_id"]
    return _from_lineage(uri, run, generation, workdir)


def _store(tracking_uri: str | None, output_dir: Path) -> str:
    import os

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    last = read_last_lineage(output_dir)
    if last is None:
        raise MgkdError(
            f"{output_dir} holds no mgkd run; give --tracking-uri (or MLFLOW_TRACKING_URI) or the --output-dir of a run"
        )
    return last["tracking_uri"]


def _from_lineage(uri: str, lineage_id: str, generation: int | None, workdir: Path) -> Bundle:
    info = read_lineage(uri, lineage_id)
    done = {g["generation"]: g for g in info["generations"] if g["status"] == "FINISHED"}
    if not done:
        raise MgkdError(f"lineage {lineage_id} has no finished generation yet")
    k = max(done) if generation is None else generation
    if k not in done:
        raise MgkdError(f"lineage {lineage_id} has no finished generation {k}; it has {sorted(done)}")
    return _from_run(
        uri,
        done[k]["run_id"],
        done[k]["checkpoint_sha256"],
        f"lineage {lineage_id} generation {k}",
        workdir,
        lineage_id,
    )


def _from_registry(name_version: str, uri: str, workdir: Path) -> Bundle:
    from mlflow.exceptions import MlflowException

    parts = name_version[len(REGISTRY_PREFIX) :].split("/")
    if len(parts) != 2 or not all(parts):
        raise MgkdError(f"{name_version!r}: give a registry version as models:/NAME/VERSION")
    name, version = parts
    client = mlflow_client(uri)
    try:
        if version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise MlflowException(f"no versions of {name}")
            version = str(max(int(v.version) for v in versions))
        mv = client.get_model_version(name, version)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise MgkdError(
            f"no registered model version {name_version} in {uri}; registered models: "
            f"{', '.join(known) or 'none'} (`mgkd lineage` shows a lineage's model name)"
        ) from None
    sha = mv.tags.get(TAG_CHECKPOINT_SHA)
    lineage_id = mv.tags.get("mgkd.lineage_id")
    return _from_run(uri, mv.run_id, sha, f"{name} version {version}", workdir, lineage_id)


def _from_run(
    uri: str, run_id: str, sha256: str | None, description: str, workdir: Path, lineage_id: str | None
) -> Bundle:
    """Download a generation run's checkpoint and tokenizer and verify the checkpoint's sha256."""
    from mlflow.exceptions import MlflowException

    if not sha256:
        raise MgkdError(f"{description}: its run {run_id} recorded no checkpoint checksum; it cannot be verified")
    client = mlflow_client(uri)
    dest = Path(tempfile.mkdtemp(prefix="model-", dir=workdir))
    try:
        ckpt = Path(client.download_artifacts(run_id, "checkpoint/checkpoint.pt", str(dest)))
        spm = Path(client.download_artifacts(run_id, "tokenizer/spm.model", str(dest)))
    except (MlflowException, OSError) as e:
        raise MgkdError(
            f"{description}: its checkpoint or tokenizer cannot be read from run {run_id} "
            f"({str(e).splitlines()[0][:200]}); an external generation 0 has neither"
        ) from None
    _verify(ckpt, sha256, description)
    settings = _lineage_settings(uri, lineage_id) if lineage_id else {}
    return Bundle(ckpt, spm, sha256, description, settings)


def _from_path(path: Path, tokenizer: Path | None, sha256: str | None) -> Bundle:
    if not path.is_file():
        raise MgkdError(
            f"checkpoint {path} does not exist; give models:/NAME/VERSION, a checkpoint file, or --run/--generation"
        )
    recorded, settings = _recorded_sha(path)
    expected = sha256 or recorded
    if expected is not None:
        _verify(path, expected, f"checkpoint {path}")
    spm = tokenizer or _tokenizer_beside(path)
    return Bundle(path, spm, expected, f"checkpoint {path}", settings)


def _verify(path: Path, expected: str, description: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise MgkdError(
            f"{description}: checkpoint sha256 {actual[:12]}… does not match the recorded "
            f"{expected[:12]}… (changed or corrupt); restore it or re-run that generation"
        )


def _recorded_sha(path: Path) -> tuple[str | None, dict[str, Any]]:
    """The sha256 a lineage recorded for a checkpoint in a run's folder (OUT/lineages/ID/gen-K/checkpoint.pt)."""
    try:
        gen_dir, lineage_dir = path.resolve().parent, path.resolve().parents[1]
        last = read_last_lineage(lineage_dir.parents[1])
        k = int(gen_dir.name.removeprefix("gen-"))
    except (IndexError, ValueError, MgkdError):
        return None, {}
    if last is None:
        return None, {}
    try:
        info = read_lineage(last["tracking_uri"], lineage_dir.name)
    except Exception:  # noqa: BLE001 - no readable record: the path is used as given
        return None, {}
    for g in info["generations"]:
        if g["generation"] == k and g["checkpoint_sha256"]:
            return g["checkpoint_sha256"], _lineage_settings(last["tracking_uri"], lineage_dir.name)
    return None, {}


def _tokenizer_beside(path: Path) -> Path:
    """spm.model beside the checkpoint, in a sibling tokenizer/ (MLflow's layout), or in the run's data cache."""
    candidates = [path.parent / "spm.model", path.parent.parent / "tokenizer" / "spm.model"]
    try:
        payload_hash = torch.load(path, map_location="cpu", weights_only=True).get("meta", {}).get("data_hash")
    except Exception:  # noqa: BLE001 - a bad checkpoint is reported when it is loaded
        payload_hash = None
    if payload_hash:
        out_dir = path.resolve().parents[3] if len(path.resolve().parents) > 3 else path.parent
        candidates.append(out_dir / "cache" / f"data-{payload_hash[:16]}" / "spm.model")
    for c in candidates:
        if c.is_file():
            return c
    raise MgkdError(
        f"no sentencepiece model found for {path} (looked in {', '.join(map(str, candidates[:2]))}); "
        "give it with --tokenizer"
    )


def _lineage_settings(uri: str, lineage_id: str) -> dict[str, Any]:
    """What the lineage's config says about inputs that the checkpoint does not carry."""
    try:
        cfg = lineage_config(uri, lineage_id)
    except Exception:  # noqa: BLE001 - an older lineage without config.yaml: defaults apply
        return {}
    return {"max_length": int((cfg.get("classification") or {}).get("max_length", DEFAULT_CLASSIFICATION_MAX_LENGTH))}
