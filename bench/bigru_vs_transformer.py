"""Parameters and training tokens/s: the demo's d128 2+2 Transformer vs d128 BiGRUs.

Parameters at the demo's vocabulary (4000); speed from a few AdamW steps on the
tests' tiny data (800 verse pairs) at the demo's token budget, one CPU thread.
Run: python bench/bigru_vs_transformer.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from mgkd.config import ModelConfig, build_config
from mgkd.models import build_model, count_parameters
from mgkd.tasks.translation import PAD, batch_indices, collate, prepare

TINY = ["corpus.max_pairs=800", "tokenizer.vocab_size=400", "split.max_valid=40", "split.max_test=40"]
MODELS = {
    "transformer d128 2+2 (demo)": ModelConfig(),
    "bigru d128 2+2": ModelConfig(arch="bigru", encoder_layers=2, decoder_layers=2),
    "bigru d128 1+1": ModelConfig(arch="bigru", encoder_layers=1, decoder_layers=1),
    "bigru d128 e64 1+1": ModelConfig(arch="bigru", embed_dim=64, encoder_layers=1, decoder_layers=1),
}


def tokens_per_s(cfg: ModelConfig, data, steps: int, warmup: int = 3) -> float:
    torch.manual_seed(0)
    model = build_model(cfg, data.vocab_size).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train = data.splits["train"]
    batches = batch_indices(train, 4096, shuffle=True, seed=0)
    tokens, t0 = 0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            tokens, t0 = 0, time.perf_counter()
        b = collate(train, batches[i % len(batches)])
        logits = model(b.src, b.tgt_in).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), b.tgt_out.reshape(-1), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
        tokens += b.target_tokens
    return tokens / (time.perf_counter() - t0)


def main(steps: int = 20) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(build_config(preset="demo", overrides=[*TINY, f"output_dir={Path(tmp)}"]))
        table = Table(title=f"{steps} training steps, max_tokens 4096, 1 thread")
        for col in ("model", "params (V=4000)", "params (V=400)", "train tokens/s"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for name, cfg in MODELS.items():
            table.add_row(
                name,
                f"{count_parameters(build_model(cfg, 4000)) / 1e6:.3f}M",
                f"{count_parameters(build_model(cfg, data.vocab_size)) / 1e6:.3f}M",
                f"{tokens_per_s(cfg, data, steps):.0f}",
            )
        Console().print(table)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
