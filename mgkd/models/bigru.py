"""BiGRU encoder-decoder with Luong attention, tied embeddings and incremental decoding.

A smaller, recurrent family for any generation (e.g. Transformer teacher ->
BiGRU student -> BiGRU student). It keeps the Transformer's contract, so
training, the loss plugins and `mgkd.models.decoding` use it unchanged:
`forward(src, tgt_in, return_hidden, return_attention) -> Seq2SeqOutput`, and
`init_state` / `decode_step` / `select_state` for batched greedy and beam search.

Sizes, read from `ModelConfig`:
- `d_model`: the width of the encoder states and of the decoder. Each encoder
  direction has d_model // 2 units and the two are concatenated (OpenNMT's
  "brnn"), so encoder states are as wide as a Transformer's of the same d_model.
- `embed_dim`: the embedding size (None: d_model). One matrix embeds source and
  target tokens and is the output layer; the decoder projects d_model ->
  embed_dim before it when the sizes differ.
- `encoder_layers`, `decoder_layers`: stacked GRU layers.
- `n_heads`, `ff_dim`, `max_positions` are Transformer sizes, unused here.

Why these choices:
- The encoder runs on packed sequences: the backward direction of a short
  sentence starts at its own last token, not at the batch's padding, so a
  sentence's encoder states do not depend on what it is batched with.
- Luong "general" attention without input feeding: the decoder GRU does not
  read the previous attention output, so under teacher forcing it runs over the
  whole target in one call, and attention is one batched matmul afterwards.
  Input feeding would need a Python loop over target positions in training,
  several times slower on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mgkd.config import ModelConfig
from mgkd.models.registry import SEQ2SEQ_LAYERS, register
from mgkd.outputs import Seq2SeqOutput
from mgkd.vocabulary import PAD


@dataclass
class GRUState:
    """What incremental decoding carries from step to step, one row per hypothesis."""

    hidden: torch.Tensor  # (L, N, D) decoder GRU state after the tokens fed so far
    memory: torch.Tensor  # (N, S, D) encoder states, zero at padding
    keys: torch.Tensor  # (N, S, D) memory through the attention's W_a, computed once per source
    src_pad: torch.Tensor  # (N, S) True at padding


def check_bigru_sizes(cfg: ModelConfig) -> None:
    """d_model is split between the encoder's two directions; n_heads does not constrain a GRU."""
    if cfg.d_model % 2:
        raise ValueError(
            f"arch 'bigru' splits d_model between its two encoder directions, so d_model must be even "
            f"(got {cfg.d_model})"
        )


@register(
    "bigru",
    task="translation",
    description="bidirectional GRU encoder, GRU decoder with Luong attention (a small, fast student)",
    # One entry each, whatever the GRU depth: encoder_hidden [encoder states (B, S, D)] (the top layer, both
    # directions); decoder_hidden [attentional decoder states (B, T, D)] (what the output layer reads);
    # decoder_cross_attention [attention probabilities (B, 1, T, S)] (one "head"; no layer map names it).
    exposes={"encoder_hidden", "decoder_hidden", "decoder_cross_attention"},
    layers=SEQ2SEQ_LAYERS,
    cuttable=False,  # GRU layers of different input widths: no layer-by-layer copy
    check=check_bigru_sizes,
    feature_layers=lambda cfg, side: 1,
)
class BiGRUSeq2Seq(nn.Module):
    """Bidirectional GRU encoder, GRU decoder with attention, one joint vocabulary and embedding matrix."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        d, e = cfg.d_model, cfg.embed_dim or cfg.d_model
        # nn.GRU applies its dropout between stacked layers only (and warns when there is one layer).
        enc_drop = cfg.dropout if cfg.encoder_layers > 1 else 0.0
        dec_drop = cfg.dropout if cfg.decoder_layers > 1 else 0.0
        self.embed = nn.Embedding(vocab_size, e, padding_idx=PAD)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.GRU(e, d // 2, cfg.encoder_layers, batch_first=True, bidirectional=True, dropout=enc_drop)
        # The top encoder layer's final states (both directions) -> every decoder layer's initial state,
        # so encoder and decoder may have different depths.
        self.bridge = nn.Linear(d, cfg.decoder_layers * d)
        self.decoder = nn.GRU(e, d, cfg.decoder_layers, batch_first=True, dropout=dec_drop)
        self.attn_in = nn.Linear(d, d, bias=False)  # W_a in score(h, m) = h . W_a m
        self.attn_out = nn.Linear(2 * d, d, bias=False)  # W_c in tanh(W_c [context; h])
        self.out_proj = nn.Linear(d, e, bias=False) if e != d else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The GRUs keep PyTorch's uniform(+-1/sqrt(hidden)) init; linear layers as in the Transformer.
        for module in (self.bridge, self.attn_in, self.attn_out, self.out_proj):
            if module is None:
                continue
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.embed.weight, std=self.embed.embedding_dim**-0.5)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()

    # -- pieces -------------------------------------------------------------------

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder states (B, S, D), the padding mask (B, S) and the decoder's initial state (L, B, D)."""
        src_pad = src.eq(PAD)
        lengths = (~src_pad).sum(1)
        x = self.drop(self.embed(src))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        # h_n (layers * 2, B, D/2), back in batch order; each direction's state at its sentence's own end.
        last = torch.cat([h_n[-2], h_n[-1]], dim=-1)
        b, layers, d = src.size(0), self.cfg.decoder_layers, self.cfg.d_model
        hidden = torch.tanh(self.bridge(last)).view(b, layers, d).transpose(0, 1).contiguous()
        return memory, src_pad, hidden

    def attend(
        self, h: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, src_pad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attentional states tanh(W_c [context; h]) (B, T, D) and attention probabilities (B, T, S)."""
        scores = (h @ keys.transpose(1, 2)).masked_fill(src_pad[:, None, :], float("-inf"))
        weights = scores.softmax(-1)
        context = weights @ memory
        return torch.tanh(self.attn_out(torch.cat([context, h], dim=-1))), weights

    def logits(self, att: torch.Tensor) -> torch.Tensor:
        x = self.drop(att)
        if self.out_proj is not None:
            x = self.out_proj(x)
        return F.linear(x, self.embed.weight)

    # -- training / scoring -------------------------------------------------------

    def forward(
        self, src: torch.Tensor, tgt_in: torch.Tensor, return_hidden: bool = False, return_attention: bool = False
    ) -> Seq2SeqOutput:
        memory, src_pad, hidden = self.encode(src)
        # Target padding comes after the real tokens, and the decoder is causal: no packing needed.
        dec, _ = self.decoder(self.drop(self.embed(tgt_in)), hidden)
        att, weights = self.attend(dec, self.attn_in(memory), memory, src_pad)
        out = Seq2SeqOutput(logits=self.logits(att))
        if return_hidden:
            out.encoder_hidden, out.decoder_hidden = [memory], [att]
        if return_attention:
            out.decoder_cross_attention = [weights.unsqueeze(1)]
        return out

    # -- incremental decoding -----------------------------------------------------

    def init_state(self, src: torch.Tensor) -> GRUState:
        memory, src_pad, hidden = self.encode(src)
        return GRUState(hidden=hidden, memory=memory, keys=self.attn_in(memory), src_pad=src_pad)

    def decode_step(self, tokens: torch.Tensor, state: GRUState, step: int) -> torch.Tensor:
        """Logits (N, V) for the next token after `tokens` (N,); the GRU state carries the position."""
        dec, state.hidden = self.decoder(self.drop(self.embed(tokens[:, None])), state.hidden)
        att, _ = self.attend(dec, state.keys, state.memory, state.src_pad)
        return self.logits(att)[:, 0]

    @staticmethod
    def select_state(state: GRUState, rows: torch.Tensor) -> GRUState:
        """Keep (and reorder, repeat) the given rows: beam reordering and pruning finished sentences."""
        return GRUState(
            hidden=state.hidden.index_select(1, rows),
            memory=state.memory.index_select(0, rows),
            keys=state.keys.index_select(0, rows),
            src_pad=state.src_pad.index_select(0, rows),
        )
