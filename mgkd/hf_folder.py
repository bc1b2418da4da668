"""A Hugging Face model folder read as files: what the config checks, without transformers.

A bottom module: the config refuses a folder that cannot be an external
teacher (`generations.teacher.external.path`) when it is validated, and the
schedule logs the folder's architecture, both by reading `config.json` and
listing files; `mgkd.models.external` loads the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mgkd.errors import MgkdError

# The weights, whole or sharded (an index file beside the shards).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # fmt: skip
# Any one of these makes a loadable tokenizer (tokenizers' JSON, its config, or the sentencepiece files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "source.spm", "sentencepiece.bpe.model")
INSTALL_HINT = "pip install 'mgkd[hf]' (or pip install 'transformers>=4.40')"


def _read_config(folder: Path) -> dict[str, Any]:
    config = folder / "config.json"
    if not config.is_file():
        raise MgkdError(
            f"external teacher {folder}: no config.json; point generations.teacher.external.path at a folder "
            "written by save_pretrained (config.json, weights and tokenizer files)"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MgkdError(f"external teacher {folder}: config.json is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise MgkdError(f"external teacher {folder}: config.json is not a JSON object")
    return data


def model_params(folder: Path) -> dict[str, Any]:
    """The folder's model as `model.*` params: arch 'hf:<model_type>', and its sizes where config.json has them."""
    config = _read_config(Path(folder))
    first = lambda *keys: next((config[k] for k in keys if k in config), None)  # noqa: E731  (Marian/BART, T5 names)
    sizes = {
        "model.d_model": first("d_model", "hidden_size"),
        "model.encoder_layers": first("encoder_layers", "num_layers"),
        "model.decoder_layers": first("decoder_layers", "num_decoder_layers", "num_layers"),
    }
    return {"model.arch": f"hf:{config.get('model_type', '?')}", **{k: v for k, v in sizes.items() if v is not None}}


def check_hf_folder(folder: Path) -> None:
    """Raise MgkdError unless `folder` holds a seq2seq (encoder-decoder) model, its weights and a tokenizer.

    Reads files only: nothing is loaded, nothing is downloaded.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MgkdError(
            f"external teacher {folder}: no such folder; give the folder a Hugging Face model was saved to "
            "(model.save_pretrained(folder); tokenizer.save_pretrained(folder))"
        )
    config = _read_config(folder)
    kind = config.get("model_type", "?")
    if config.get("is_encoder_decoder") is not True:
        archs = ", ".join(config.get("architectures") or []) or "none listed"
        raise MgkdError(
            f"external teacher {folder}: not a seq2seq model: model_type {kind!r} (architectures: {archs}); "
            "config.json needs is_encoder_decoder: true (a Marian, T5, BART... translation model)"
        )
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise MgkdError(f"external teacher {folder}: no weights ({' or '.join(WEIGHT_FILES[::2])}) in the folder")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise MgkdError(
            f"external teacher {folder}: no tokenizer ({', '.join(TOKENIZER_FILES)}); save it beside the model "
            "with tokenizer.save_pretrained(folder)"
        )
