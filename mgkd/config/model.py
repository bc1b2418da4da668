"""A generation's architecture: a model mgkd trains, or an external one loaded as generation 0."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, field_validator

from mgkd.config.base import StrictModel
from mgkd.errors import MgkdError
from mgkd.hf_folder import INSTALL_HINT, check_hf_folder


class ModelConfig(StrictModel):
    """An architecture by registry name and its sizes.

    transformer: every key but embed_dim. bigru: d_model is the width of the
    encoder states (d_model // 2 per direction) and of the decoder,
    encoder_layers/decoder_layers are GRU layers, embed_dim the embedding size;
    n_heads, ff_dim and max_positions are unused. Each architecture checks its
    own sizes (`mgkd.models.registry`), when the schedule is built.
    """

    arch: str = "transformer"
    d_model: PositiveInt = 128
    n_heads: PositiveInt = 4
    encoder_layers: PositiveInt = 2
    decoder_layers: PositiveInt = 2
    ff_dim: PositiveInt = 512
    dropout: float = Field(0.1, ge=0, lt=1)
    max_positions: PositiveInt = 512
    # bigru only: embedding size (None: d_model). A smaller one saves most of a small model's parameters.
    embed_dim: PositiveInt | None = None


class ExternalTeacherConfig(StrictModel):
    """A trained seq2seq model from elsewhere as generation 0: a local Hugging Face folder, loaded offline.

    Its vocabulary is not ours, so its students learn from its translations only
    (seq_kd, pseudo_label, next to label_smoothing on the references).
    """

    kind: Literal["hf"] = "hf"
    # A folder written by save_pretrained: config.json, the weights and the tokenizer's files.
    path: Path
    # Beam size of generation 0's own test decode (None: eval.beam_size); its students' seq_kd and
    # pseudo_label terms decode with their own beam_size.
    num_beams: PositiveInt | None = None
    # A cap on each output's length in the model's tokens, on top of eval.max_len_a/max_len_b (None: none).
    max_new_tokens: PositiveInt | None = None
    # Put before every source sentence: T5 needs its task, e.g. "translate English to French: ".
    source_prefix: str = ""

    @field_validator("path")
    @classmethod
    def _folder_holds_a_seq2seq_model(cls, v: Path) -> Path:
        folder = Path(v).expanduser().resolve()  # absolute: Ray workers may start elsewhere
        try:
            check_hf_folder(folder)
        except MgkdError as e:
            raise ValueError(str(e)) from None
        if importlib.util.find_spec("transformers") is None:
            raise ValueError(f"an external teacher is loaded with transformers, which is not installed: {INSTALL_HINT}")
        return folder
