"""An external teacher: a trained Hugging Face seq2seq model (Marian, T5, ...) from a local folder.

Its vocabulary is not ours, so it can teach only through text: students learn
from its translations (`seq_kd`, `pseudo_label`), never from its logits or
layers. It is loaded offline (`local_files_only`, no remote code), kept in eval
mode without gradients, and known by a checksum of the folder's files, which
plays the part of an mgkd checkpoint's sha256 (lineage tags, the pseudo-target
store's key).

`transformers` is imported when a model is loaded, not with this module: the
config-time checks read `config.json` as plain JSON.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mgkd.errors import MgkdError
from mgkd.hf_folder import INSTALL_HINT, check_hf_folder

MANIFEST_FORMAT = "mgkd-external-manifest-v1"


def _files(folder: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of the folder's files, sorted; hidden files and folders (.git, .cache) left out."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                path = Path(root) / name
                out.append((path.relative_to(folder).as_posix(), path))
    return sorted(out)


def folder_manifest(folder: Path) -> dict[str, Any]:
    """The folder's files (relative path, size, sha256) and its checksum, read in one pass.

    The checksum is the sha256 over the sorted relative paths, each followed by
    its file's contents: a changed, added, removed or renamed file changes it.
    Hidden files and folders are left out, so a download tool's cache metadata
    does not.
    """
    folder = Path(folder)
    total = hashlib.sha256()
    files = []
    for rel, path in _files(folder):
        one = hashlib.sha256()
        size = 0
        total.update(f"{rel}\0".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                one.update(chunk)
                total.update(chunk)
                size += len(chunk)
        total.update(f"\0{size}\0".encode())
        files.append({"path": rel, "size": size, "sha256": one.hexdigest()})
    return {"format": MANIFEST_FORMAT, "folder": str(folder.resolve()), "sha256": total.hexdigest(), "files": files}


def folder_sha256(folder: Path) -> str:
    return folder_manifest(folder)["sha256"]


class HFTeacher(nn.Module):
    """A frozen Hugging Face seq2seq model that translates text; it has no logits in our vocabulary.

    Args:
        model: an `AutoModelForSeq2SeqLM` model.
        tokenizer: its tokenizer.
        folder: where both were loaded from.
        sha256: the folder's checksum.
        source_prefix: text put before every source (T5's "translate English to French: ").
        max_new_tokens: a cap on each output's length in the model's tokens, EOS included (None: no cap).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, folder: Path, sha256: str, source_prefix: str = "",
                 max_new_tokens: int | None = None) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.folder = Path(folder)
        self.sha256 = sha256
        self.source_prefix = source_prefix
        self.max_new_tokens = max_new_tokens
        self.eval()
        self.requires_grad_(False)

    @classmethod
    def load(cls, folder: Path | str, expected_sha256: str | None = None, source_prefix: str = "",
             max_new_tokens: int | None = None) -> HFTeacher:  # fmt: skip
        """Load the folder's model and tokenizer offline; refuse a folder whose checksum is not `expected_sha256`."""
        folder = Path(folder)
        check_hf_folder(folder)
        sha = folder_sha256(folder)
        if expected_sha256 is not None and sha != expected_sha256:
            raise MgkdError(
                f"external teacher {folder} has checksum {sha[:12]}…, expected {expected_sha256[:12]}…: its files "
                "changed since generation 0 was evaluated; restore them or start a new lineage"
            )
        try:
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise MgkdError(f"an external teacher needs transformers: {INSTALL_HINT}") from None
        # Quiet while loading: a tqdm bar per load would cut through the generation's progress display,
        # and Marian's tokenizer asks for sacremoses, which translating does not use.
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
                # local_files_only: never reach the Hub; no trust_remote_code: never run the folder's code.
                tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
                model = AutoModelForSeq2SeqLM.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise MgkdError(f"external teacher {folder} cannot be loaded with transformers: {e}") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        return cls(model, tokenizer, folder, sha, source_prefix, max_new_tokens)

    def train(self, mode: bool = True) -> HFTeacher:
        """A teacher is frozen: it stays in eval mode whatever it is asked."""
        return super().train(False)

    @property
    def options(self) -> dict[str, Any]:
        """The settings beside the weights that change its outputs (part of the pseudo-target store's key)."""
        return {"source_prefix": self.source_prefix, "max_new_tokens": self.max_new_tokens}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise MgkdError(
            f"the external teacher {self.folder} has another vocabulary: it teaches through its translations "
            "(seq_kd, pseudo_label), not through logits, hidden states or attention"
        )

    def _limit(self, source_tokens: int, max_len_a: float, max_len_b: int) -> int:
        """`max_new_tokens` of a sentence: ceil(a * source tokens (EOS included) + b), as mgkd's decoding counts."""
        limit = max(1, math.ceil(max_len_a * source_tokens + max_len_b))
        if self.max_new_tokens is not None:
            limit = min(limit, self.max_new_tokens)
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions:  # learned/sinusoidal positions end there (Marian, BART); T5 has none
            limit = min(limit, positions - 1)
        return limit

    @torch.no_grad()
    def translate_texts(
        self,
        texts: list[str],
        beam_size: int = 1,
        n_best: int = 1,
        max_len_a: float = 1.5,
        max_len_b: int = 10,
        length_penalty: float = 1.0,
        batch_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[list[tuple[float, str]]]:
        """Each text's up to `n_best` distinct translations as (score, text), best first, in input order.

        Sentences are decoded in batches of equal output limit (so a sentence's
        output does not depend on the others in its batch). Scores are the
        model's log-probabilities per output token (beam search: transformers'
        `sequences_scores`, with `length_penalty`; greedy: the mean of the
        tokens' log-probabilities, EOS included).
        """
        if not 1 <= n_best <= beam_size:
            raise ValueError(f"n_best must be in 1..beam_size ({beam_size}), got {n_best}")
        tok = self.tokenizer
        ids = tok([self.source_prefix + t for t in texts], truncation=True)["input_ids"]
        limits = [self._limit(len(x), max_len_a, max_len_b) for x in ids]
        order = sorted(range(len(texts)), key=lambda i: (limits[i], len(ids[i])))
        batches: list[list[int]] = []
        for i in order:
            if batches and len(batches[-1]) < batch_size and limits[batches[-1][0]] == limits[i]:
                batches[-1].append(i)
            else:
                batches.append([i])
        device = next(self.model.parameters()).device
        out: list[list[tuple[float, str]]] = [[] for _ in texts]
        for idx in batches:
            enc = tok([self.source_prefix + texts[i] for i in idx], truncation=True, padding=True,
                      return_tensors="pt").to(device)  # fmt: skip
            kwargs: dict[str, Any] = {"num_beams": beam_size, "num_return_sequences": n_best, "do_sample": False,
                                      "max_new_tokens": limits[idx[0]], "output_scores": True,
                                      "return_dict_in_generate": True}  # fmt: skip
            if beam_size > 1:
                kwargs["length_penalty"] = length_penalty
            gen = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs)
            scores = gen.sequences_scores if beam_size > 1 else self._greedy_scores(gen)
            hyps = tok.batch_decode(gen.sequences, skip_special_tokens=True)
            for row, i in enumerate(idx):
                seen: set[str] = set()
                for k in range(row * n_best, (row + 1) * n_best):
                    text = hyps[k].strip()
                    if text not in seen:
                        seen.add(text)
                        out[i].append((float(scores[k]), text))
            if on_batch:
                on_batch(len(idx))
        return out

    def _greedy_scores(self, gen: Any) -> torch.Tensor:
        """Mean log-probability of each greedy output's tokens, up to and including its first EOS."""
        steps = self.model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
        generated = gen.sequences[:, -steps.size(1) :]
        eos = self.model.generation_config.eos_token_id
        eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
        is_eos = torch.isin(generated, torch.tensor(eos, dtype=generated.dtype, device=generated.device))
        # A token counts if no EOS came before it.
        counted = (is_eos.long().cumsum(1) - is_eos.long()) == 0
        return (steps * counted).sum(1) / counted.sum(1).clamp(min=1)
