"""A BERT-like Transformer encoder classifier: [CLS] a [SEP] (b [SEP]) -> pooled [CLS] -> class logits.

The encoder layers are translation's (`EncoderLayer`, pre-norm), so layer
cutting and the internal-representation loss treat both families alike: the
classifier's layers live under `encoder.N`, and `forward(return_hidden=True,
return_attention=True)` returns every layer's states and attention like the
seq2seq model's encoder does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mgkd.config import ModelConfig
from mgkd.models.registry import ENCODER_LAYERS, register
from mgkd.models.transformer import EncoderLayer, check_transformer_sizes, sinusoids
from mgkd.outputs import ClassifierOutput
from mgkd.vocabulary import PAD


@register(
    "transformer_classifier",
    task="classification",
    description="BERT-like Transformer encoder with a [CLS] pooler and a class head",
    exposes={"encoder_hidden", "encoder_attention"},
    layers=ENCODER_LAYERS,
    cuttable=True,
    check=check_transformer_sizes,
    data_args=("num_classes",),  # its class count comes from the data's labels
)
class TransformerClassifier(nn.Module):
    """Token + position + segment embeddings, pre-norm encoder layers, a tanh pooler on [CLS] (BERT's)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, num_classes: int | None = None) -> None:
        super().__init__()
        if num_classes is None or num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2 (from the data's labels), got {num_classes}")
        self.cfg, self.vocab_size, self.num_classes = cfg, vocab_size, num_classes
        d = cfg.d_model
        self.embed = nn.Embedding(vocab_size, d, padding_idx=PAD)
        self.segment = nn.Embedding(2, d)
        self.register_buffer("positions", sinusoids(cfg.max_positions, d), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.pooler = nn.Linear(d, d)
        self.head = nn.Linear(d, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and not name.startswith(("embed", "segment")):
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        nn.init.normal_(self.embed.weight, std=self.cfg.d_model**-0.5)
        nn.init.normal_(self.segment.weight, std=self.cfg.d_model**-0.5)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()

    def forward(self, src: torch.Tensor, segments: torch.Tensor | None = None, return_hidden: bool = False,
                return_attention: bool = False) -> ClassifierOutput:  # fmt: skip
        n = src.size(1)
        if n > self.cfg.max_positions:
            raise ValueError(f"sequence of {n} tokens exceeds model.max_positions={self.cfg.max_positions}")
        x = self.embed(src) * math.sqrt(self.cfg.d_model) + self.positions[:n]
        if segments is not None:
            x = x + self.segment(segments)
        x = self.drop(x)
        mask = src.ne(PAD)[:, None, None, :]
        out = ClassifierOutput(logits=x)
        for layer in self.encoder:
            x, w = layer(x, mask, return_attention)
            if return_hidden:
                out.encoder_hidden.append(x)
            if w is not None:
                out.encoder_attention.append(w)
        pooled = torch.tanh(self.pooler(self.encoder_norm(x)[:, 0]))
        out.logits = self.head(self.drop(pooled))
        return out
