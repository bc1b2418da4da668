"""Pre-norm Transformer encoder-decoder with tied embeddings and incremental decoding.

One file, read top to bottom: attention, the two layer types, the model. The
model exposes what distillation needs without a separate forward per loss:
`forward(..., return_hidden=True, return_attention=True)` also returns every
layer's output and attention probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mgkd.config import ModelConfig
from mgkd.models.registry import SEQ2SEQ_LAYERS, register
from mgkd.outputs import Seq2SeqOutput
from mgkd.vocabulary import PAD


@dataclass
class DecoderState:
    """What incremental decoding carries from step to step, one row per hypothesis."""

    memory: torch.Tensor  # (N, S, D)
    src_pad: torch.Tensor  # (N, S) True at padding
    # The source sentence (row of `init_state`'s src) each row decodes: the memory-side tensors of a row
    # depend on it alone.
    source: torch.Tensor  # (N,)
    # Per decoder layer: self-attention keys/values so far (N, H, t, Dh) and the
    # cross-attention keys/values of the memory (N, H, S, Dh), computed once.
    self_k: list[torch.Tensor | None]
    self_v: list[torch.Tensor | None]
    cross_k: list[torch.Tensor]
    cross_v: list[torch.Tensor]


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.h, self.dh = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def heads(self, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        b, n, _ = x.shape
        return proj(x).view(b, n, self.h, self.dh).transpose(1, 2)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q (B,H,Lq,Dh), k/v (B,H,Lk,Dh); mask broadcastable to (B,H,Lq,Lk), True = may attend."""
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.dh)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(-1)
            out = F.dropout(weights, p, self.training) @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        b, _, n, _ = out.shape
        return self.o(out.transpose(1, 2).reshape(b, n, self.h * self.dh)), weights


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.ff_dim), nn.ReLU(), nn.Linear(cfg.ff_dim, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.norm1(x)
        a, w = self.attn.attend(
            self.attn.heads(h, self.attn.q),
            self.attn.heads(h, self.attn.k),
            self.attn.heads(h, self.attn.v),
            mask,
            need_weights,
        )
        x = x + self.drop(a)
        x = x + self.drop(self.ff(self.norm2(x)))
        return x, w


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.self_attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.cross_attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm3 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.ff_dim), nn.ReLU(), nn.Linear(cfg.ff_dim, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        self_k: torch.Tensor,
        self_v: torch.Tensor,
        self_mask: torch.Tensor | None,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        cross_mask: torch.Tensor,
        need_weights: bool,
        h1: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """h1 is norm1(x), already computed by the caller for the self-attention keys."""
        a, ws = self.self_attn.attend(
            self.self_attn.heads(h1, self.self_attn.q), self_k, self_v, self_mask, need_weights
        )
        x = x + self.drop(a)
        h = self.norm2(x)
        c, wc = self.cross_attn.attend(
            self.cross_attn.heads(h, self.cross_attn.q), cross_k, cross_v, cross_mask, need_weights
        )
        x = x + self.drop(c)
        x = x + self.drop(self.ff(self.norm3(x)))
        return x, ws, wc


def sinusoids(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    inv = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)
    return pe


def check_transformer_sizes(cfg: ModelConfig) -> None:
    """Heads split d_model evenly; tokens are embedded in d_model dimensions (embed_dim is the BiGRU's)."""
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"d_model ({cfg.d_model}) must be divisible by n_heads ({cfg.n_heads})")
    if cfg.embed_dim is not None and cfg.embed_dim != cfg.d_model:
        raise ValueError(
            f"embed_dim is a bigru size; arch {cfg.arch!r} embeds tokens in d_model ({cfg.d_model}) "
            "dimensions: drop embed_dim"
        )


@register(
    "transformer",
    task="translation",
    description="pre-norm Transformer encoder-decoder, tied embeddings, incremental decoding",
    # One entry per layer in each list; cross-attention too, though no layer map names it.
    exposes={
        "encoder_hidden",
        "decoder_hidden",
        "encoder_attention",
        "decoder_self_attention",
        "decoder_cross_attention",
    },  # fmt: skip
    layers=SEQ2SEQ_LAYERS,
    cuttable=True,
    check=check_transformer_sizes,
)
class TransformerSeq2Seq(nn.Module):
    """Encoder-decoder over one joint vocabulary; input and output embeddings are one matrix."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        d = cfg.d_model
        self.embed = nn.Embedding(vocab_size, d, padding_idx=PAD)
        self.register_buffer("positions", sinusoids(cfg.max_positions, d), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.decoder_norm = nn.LayerNorm(d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and not name.startswith("embed"):
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        nn.init.normal_(self.embed.weight, std=self.cfg.d_model**-0.5)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()

    # -- pieces -------------------------------------------------------------------

    def _embed(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        n = tokens.size(1)
        if offset + n > self.cfg.max_positions:
            raise ValueError(f"sequence of {offset + n} tokens exceeds model.max_positions={self.cfg.max_positions}")
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model) + self.positions[offset : offset + n]
        return self.drop(x)

    def encode(
        self, src: torch.Tensor, need_hidden: bool = False, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        src_pad = src.eq(PAD)
        mask = ~src_pad[:, None, None, :]
        x = self._embed(src)
        hidden, attn = [], []
        for layer in self.encoder:
            x, w = layer(x, mask, need_weights)
            if need_hidden:
                hidden.append(x)
            if w is not None:
                attn.append(w)
        return self.encoder_norm(x), src_pad, hidden, attn

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self.decoder_norm(h), self.embed.weight)

    # -- training / scoring -------------------------------------------------------

    def forward(
        self, src: torch.Tensor, tgt_in: torch.Tensor, return_hidden: bool = False, return_attention: bool = False
    ) -> Seq2SeqOutput:
        memory, src_pad, enc_hidden, enc_attn = self.encode(src, return_hidden, return_attention)
        t = tgt_in.size(1)
        causal = torch.ones(t, t, dtype=torch.bool, device=src.device).tril()[None, None]
        cross_mask = ~src_pad[:, None, None, :]
        x = self._embed(tgt_in)
        out = Seq2SeqOutput(logits=x, encoder_hidden=enc_hidden, encoder_attention=enc_attn)
        for layer in self.decoder:
            h1 = layer.norm1(x)
            sa, ca = layer.self_attn, layer.cross_attn
            x, ws, wc = layer(
                x, sa.heads(h1, sa.k), sa.heads(h1, sa.v), causal,
                ca.heads(memory, ca.k), ca.heads(memory, ca.v), cross_mask, return_attention, h1,
            )  # fmt: skip
            if return_hidden:
                out.decoder_hidden.append(x)
            if ws is not None:
                out.decoder_self_attention.append(ws)
                out.decoder_cross_attention.append(wc)  # type: ignore[arg-type]
        out.logits = self.logits(x)
        return out

    # -- incremental decoding -----------------------------------------------------

    def init_state(self, src: torch.Tensor) -> DecoderState:
        memory, src_pad, _, _ = self.encode(src)
        n_layers = len(self.decoder)
        return DecoderState(
            memory=memory,
            src_pad=src_pad,
            source=torch.arange(src.size(0), device=src.device),
            self_k=[None] * n_layers,
            self_v=[None] * n_layers,
            cross_k=[layer.cross_attn.heads(memory, layer.cross_attn.k) for layer in self.decoder],
            cross_v=[layer.cross_attn.heads(memory, layer.cross_attn.v) for layer in self.decoder],
        )

    def decode_step(self, tokens: torch.Tensor, state: DecoderState, step: int) -> torch.Tensor:
        """Logits (N, V) for the next token after `tokens` (N,), the step-th input token."""
        x = self._embed(tokens[:, None], offset=step)
        cross_mask = ~state.src_pad[:, None, None, :]
        for i, layer in enumerate(self.decoder):
            h1 = layer.norm1(x)
            k, v = layer.self_attn.heads(h1, layer.self_attn.k), layer.self_attn.heads(h1, layer.self_attn.v)
            if state.self_k[i] is not None:
                k = torch.cat([state.self_k[i], k], dim=2)  # type: ignore[list-item]
                v = torch.cat([state.self_v[i], v], dim=2)  # type: ignore[list-item]
            state.self_k[i], state.self_v[i] = k, v
            x, _, _ = layer(x, k, v, None, state.cross_k[i], state.cross_v[i], cross_mask, False, h1)
        return self.logits(x)[:, 0]

    @staticmethod
    def select_state(state: DecoderState, rows: torch.Tensor) -> DecoderState:
        """Keep (and reorder, repeat) the given rows: beam reordering and pruning finished sentences.

        A beam step that only reorders hypotheses among the beams of each sentence
        leaves every row with the source it had: the memory and the cross-attention
        keys/values are then kept as they are, not copied (copying them took about
        a quarter of a beam-4 search's time on the demo model).
        """

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, rows)

        source = state.source.index_select(0, rows)
        same_sources = torch.equal(source, state.source)
        keep_or_pick = (lambda t: t) if same_sources else (lambda t: t.index_select(0, rows))
        return DecoderState(
            memory=keep_or_pick(state.memory),
            src_pad=keep_or_pick(state.src_pad),
            source=source,
            self_k=[pick(t) for t in state.self_k],
            self_v=[pick(t) for t in state.self_v],
            cross_k=[keep_or_pick(t) for t in state.cross_k],
            cross_v=[keep_or_pick(t) for t in state.cross_v],
        )
