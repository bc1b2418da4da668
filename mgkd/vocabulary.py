"""The special token ids every tokenizer of mgkd reserves, and the source-side padding they imply.

A bottom module: tasks write these ids into their sentencepiece models,
models embed and mask them, losses ignore padding, decoding starts at BOS and
stops at EOS. Kept here so none of those layers imports another for them.
"""

from __future__ import annotations

import numpy as np
import torch

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def pad_sources(src: list[np.ndarray]) -> torch.Tensor:
    """Token-id arrays (without EOS) -> one (B, S) tensor: each row its tokens, EOS, then PAD."""
    width = max(len(a) for a in src) + 1
    out = torch.full((len(src), width), PAD, dtype=torch.long)
    for i, a in enumerate(src):
        out[i, : len(a)] = torch.from_numpy(a.astype(np.int64))
        out[i, len(a)] = EOS
    return out
