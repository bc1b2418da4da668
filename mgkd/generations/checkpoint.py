"""Self-describing checkpoints: written atomically, verified by sha256, loaded without pickled code."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mgkd.config import ModelConfig
from mgkd.errors import MgkdError
from mgkd.files import sha256_file, write_atomic
from mgkd.models import build_model

FORMAT = "mgkd-checkpoint-v1"


def save_checkpoint(path: Path, model: nn.Module, vocab_size: int, **meta: Any) -> str:
    """Save model weights with their architecture and `meta` (plain values); returns the sha256."""
    payload = {
        "format": FORMAT,
        "model_config": model.cfg.model_dump(),  # type: ignore[union-attr]
        "vocab_size": int(vocab_size),
        # Classifiers: the number of classes (their head's size), so the checkpoint rebuilds them alone.
        **({"num_classes": int(model.num_classes)} if getattr(model, "num_classes", None) else {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path: Path, expected_sha256: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes. Refuses pickled code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise MgkdError(f"checkpoint {path} does not exist")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise MgkdError(
                f"checkpoint {path} has sha256 {actual[:12]}…, expected {expected_sha256[:12]}… "
                "(changed or corrupt since it was written); restore it or re-run that generation"
            )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise MgkdError(
            f"checkpoint {path} cannot be loaded safely (truncated, corrupt or not an mgkd checkpoint): {e}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MgkdError(f"{path} is not an mgkd checkpoint (format {FORMAT} expected)")
    cfg = ModelConfig.model_validate(payload["model_config"])
    model = build_model(cfg, payload["vocab_size"], payload.get("num_classes"))
    try:
        missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    except RuntimeError as e:  # shapes differ
        raise MgkdError(f"checkpoint {path} does not match its stated architecture {cfg.arch!r}: {e}") from None
    if missing or unexpected:
        raise MgkdError(
            f"checkpoint {path} does not match architecture {cfg.arch!r}: "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return model, payload


def parameter_hash(model: nn.Module) -> str:
    """sha256 over every parameter and buffer: equal before and after means unchanged."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
