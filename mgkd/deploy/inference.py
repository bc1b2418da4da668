"""Texts in, translations or labels out: the one code path `mgkd translate`/`predict` and the pyfunc share.

An engine holds a loaded model and its sentencepiece model. `run(texts)` tokenizes, truncates what is
longer than the model's limit (and counts it), batches by tokens (length-sorted, so little padding),
decodes, and returns the results in input order. The CTranslate2 engine (deploy/ctranslate2.py) replaces
only the decoding of one batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import sentencepiece as spm
import torch

from mgkd.errors import MgkdError
from mgkd.models.decoding import beam_decode
from mgkd.tasks.translation import length_batches, pad_sources


@dataclass
class DecodeOptions:
    """How translations are decoded; the defaults come from the generation's own eval settings."""

    beam_size: int = 1
    length_penalty: float = 1.0
    max_len_a: float = 1.5  # each output stops at ceil(max_len_a * (source tokens + 1) + max_len_b)
    max_len_b: int = 10
    max_tokens: int = 4096  # padded source tokens per batch

    @classmethod
    def of_checkpoint(cls, payload: dict[str, Any], **given: Any) -> DecodeOptions:
        """The checkpoint's recorded eval settings, overridden by what the user gave (None: not given)."""
        ev = (payload.get("meta", {}).get("spec") or {}).get("eval", {})
        base = {k: ev[k] for k in ("beam_size", "length_penalty", "max_len_a", "max_len_b") if k in ev}
        base.update({k: v for k, v in given.items() if v is not None})
        opts = cls(**base)
        if opts.beam_size < 1 or opts.max_tokens < 1 or opts.max_len_b < 1 or opts.max_len_a < 0:
            raise MgkdError("--beam-size, --max-tokens and --max-len-b must be >= 1, --max-len-a >= 0")
        return opts


@dataclass
class Outcome:
    """What one call of `run` produced: outputs in input order, and how many inputs were cut to the limit."""

    outputs: list[Any]
    truncated: int


class TorchTranslator:
    """mgkd's own decoder (greedy or beam) over a seq2seq checkpoint."""

    task = "translation"
    engine = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: spm.SentencePieceProcessor,
        options: DecodeOptions,
        max_source_tokens: int | None = None,
    ) -> None:
        self.model, self.sp, self.options = model, tokenizer, options
        self.max_positions = int(model.cfg.max_positions)  # type: ignore[union-attr]
        # The source gets EOS appended: the model's positions hold max_positions - 1 tokens of text.
        self.max_source_tokens = min(max_source_tokens or self.max_positions - 1, self.max_positions - 1)

    def max_lens(self, lengths: list[int]) -> list[int]:
        """Per sentence, the most output tokens (EOS counted), within what the model's positions allow."""
        a, b = self.options.max_len_a, self.options.max_len_b
        return [min(self.max_positions, max(1, math.ceil(a * (n + 1) + b))) for n in lengths]

    def decode_batch(self, sources: list[np.ndarray]) -> list[list[int]]:
        """Token ids (no BOS/EOS) for one batch of token-id sources."""
        src = pad_sources(sources)
        max_lens = torch.tensor(self.max_lens([len(s) for s in sources]))
        o = self.options
        with torch.inference_mode():
            return beam_decode(self.model, src, max_lens, o.beam_size, o.length_penalty)  # type: ignore[return-value]

    def run(self, texts: list[str]) -> Outcome:
        ids = self.sp.encode(texts)
        truncated = sum(len(t) > self.max_source_tokens for t in ids)
        sources = [np.asarray(t[: self.max_source_tokens], dtype=np.int64) for t in ids]
        out: list[str] = [""] * len(texts)
        todo = [i for i, t in enumerate(texts) if t.strip()]  # a blank line translates to a blank line
        widths = [len(sources[i]) + 1 for i in todo]
        for batch in length_batches(widths, widths, self.options.max_tokens, shuffle=False, seed=0):
            rows = [todo[j] for j in batch]
            for i, seq in zip(rows, self.decode_batch([sources[i] for i in rows])):
                out[i] = self.sp.decode(seq)
        return Outcome(out, truncated)


class TorchClassifier:
    """A classification checkpoint: each text (or `text<TAB>pair`) -> its most probable label."""

    task = "classification"
    engine = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: spm.SentencePieceProcessor,
        labels: list[str],
        max_length: int,
        max_tokens: int = 4096,
    ) -> None:
        self.model, self.sp, self.labels = model, tokenizer, labels
        self.max_length = min(max_length, int(model.cfg.max_positions))  # type: ignore[union-attr]
        self.max_tokens = max_tokens

    def run(self, texts: list[str]) -> Outcome:
        from mgkd.tasks.classification import encode_example
        from mgkd.tasks.translation import PAD

        split = [t.split("\t", 1) for t in texts]
        a_ids = self.sp.encode([s[0] for s in split])
        b_ids = self.sp.encode([s[1] if len(s) > 1 else "" for s in split])
        encoded, truncated = [], 0
        for s, a, b in zip(split, a_ids, b_ids):
            pair = b if len(s) > 1 else None
            ids, start = encode_example(a, pair, self.max_length)
            truncated += len(a) + (len(pair) + 1 if pair is not None else 0) + 2 > self.max_length
            encoded.append((ids, start))
        out: list[tuple[str, float]] = [("", 0.0)] * len(texts)
        widths = [len(e[0]) for e in encoded]
        for batch in length_batches(widths, widths, self.max_tokens, shuffle=False, seed=0):
            width = max(widths[i] for i in batch)
            src = torch.full((len(batch), width), PAD, dtype=torch.long)
            seg = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids, start = encoded[i]
                src[row, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
                seg[row, start : len(ids)] = 1
            with torch.inference_mode():
                probs = self.model(src, seg).logits.float().softmax(-1)
            p, k = probs.max(-1)
            for i, pi, ki in zip(batch, p.tolist(), k.tolist()):
                out[i] = (self.labels[ki], pi)
        return Outcome(out, truncated)


def build_engine(
    model: torch.nn.Module,
    payload: dict[str, Any],
    tokenizer: spm.SentencePieceProcessor,
    options: DecodeOptions,
    settings: dict[str, Any],
    max_source_tokens: int | None = None,
) -> TorchTranslator | TorchClassifier:
    """The torch engine for a loaded checkpoint: a translator for seq2seq models, a classifier otherwise."""
    if payload.get("num_classes"):
        labels = payload.get("meta", {}).get("labels") or [str(i) for i in range(int(payload["num_classes"]))]
        max_length = max_source_tokens or int(settings.get("max_length", 64))
        return TorchClassifier(model, tokenizer, list(labels), max_length, options.max_tokens)
    return TorchTranslator(model, tokenizer, options, max_source_tokens)
