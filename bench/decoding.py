"""Benchmark: mgkd's batched greedy and beam search vs Hugging Face `generate` and vs non-incremental decoding.

    python bench/decoding.py                 # the demo's model, batch sizes 1, 32, 128
    python bench/decoding.py --threads 1     # the same on one thread (2.5 min on the busy shared 2 cores)
    python bench/decoding.py --quick         # 12 sentences at batch size 1, 128 at the others
    python bench/decoding.py --device cuda   # the same on a GPU

mgkd's Transformer of the demo (`configs/demo.yaml`: d128, 4 heads, 2+2
layers, ff 512, vocabulary 4000 of the built-in corpus) decodes the test split's
sources (300 real sentences, in the length-sorted batches `translate` makes)
through `mgkd.models.decoding`: `greedy_decode` and `beam_search` (beam 4,
length penalty 1), with the incremental (cached) decoder state. Against it:

- Hugging Face `MarianMTModel.generate` (greedy, and beam 4 with length
  penalty 1) on a Marian model of the same shapes: a `MarianConfig` with the
  same d_model, heads, layers, ffn size (ReLU), vocabulary, scaled and tied
  embeddings, and mgkd's token ids for PAD/BOS(decoder start)/EOS. The weights
  that have the same shapes are copied from mgkd's model (embedding, every
  attention and FFN projection, the layer norms); the two still compute
  different functions (Marian is post-norm, mgkd pre-norm with final norms,
  the sinusoids are laid out differently), so their tokens differ.
- Non-incremental greedy decoding with mgkd's model: the source is encoded and
  the cross-attention keys/values of the memory are computed once; at each
  step the whole decoder runs again over the whole prefix (no self-attention
  cache). It must give the same tokens as the incremental decoder (checked).

Both models have random weights, so EOS would come at random places (or never):
to make every variant do the same work, each batch decodes exactly L tokens per
sentence, L = the batch's longest reference target + 1 (EOS), i.e. what a model
that translates like the references would need for the batch. EOS is masked out
of the logits before the last step and forced at it: in mgkd by a wrapper around
`decode_step` (and the decoder's own length limit), in `generate` by
`min_new_tokens = L - 1`, `max_new_tokens = L` and `forced_eos_token_id`.
With every sentence the same length, mgkd's pruning of finished sentences
cannot help it; one extra greedy row lets each sentence stop at its own
reference length (finished sentences leave the batch), which is what mgkd's
decoder does with a trained model.

Every batch is decoded by every variant back to back, in an order that rotates
from batch to batch; sentences/s is total sentences / total time per variant,
and the ratios are medians of the per-batch ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mgkd.config import build_config  # noqa: E402
from mgkd.models import build_model, count_parameters  # noqa: E402
from mgkd.models.decoding import _length_sorted_batches, beam_search, greedy_decode  # noqa: E402
from mgkd.models.transformer import TransformerSeq2Seq  # noqa: E402
from mgkd.tasks.translation import BOS, EOS, PAD, pad_sources, prepare  # noqa: E402

BEAM = 4


class EosOnlyAtEnd(nn.Module):
    """mgkd's model with EOS masked out of the logits before step `length - 1`.

    The decoder forces EOS at each sentence's own limit, so greedy search with
    per-sentence limits works through this wrapper too (with `length` their maximum).
    """

    def __init__(self, model: TransformerSeq2Seq, length: int) -> None:
        super().__init__()
        self.model, self.length = model, length

    def init_state(self, src: torch.Tensor):  # noqa: ANN201
        return self.model.init_state(src)

    def select_state(self, state, rows: torch.Tensor):  # noqa: ANN001, ANN201
        return self.model.select_state(state, rows)

    def decode_step(self, tokens: torch.Tensor, state, step: int) -> torch.Tensor:  # noqa: ANN001
        logits = self.model.decode_step(tokens, state, step)
        if step + 1 < self.length:
            logits[:, EOS] = float("-inf")
        return logits


@torch.no_grad()
def greedy_full_prefix(model: TransformerSeq2Seq, src: torch.Tensor, length: int) -> list[list[int]]:
    """Greedy decoding without a self-attention cache: every step reruns the decoder over the whole prefix."""
    memory, src_pad, _, _ = model.encode(src)
    cross_mask = ~src_pad[:, None, None, :]
    cross = [(layer.cross_attn.heads(memory, layer.cross_attn.k), layer.cross_attn.heads(memory, layer.cross_attn.v))
             for layer in model.decoder]  # fmt: skip
    prefix = torch.full((src.size(0), 1), BOS, dtype=torch.long, device=src.device)
    for step in range(length):
        t = prefix.size(1)
        causal = torch.ones(t, t, dtype=torch.bool, device=src.device).tril()[None, None]
        x = model._embed(prefix)
        for layer, (ck, cv) in zip(model.decoder, cross):
            h1 = layer.norm1(x)
            sa = layer.self_attn
            x, _, _ = layer(x, sa.heads(h1, sa.k), sa.heads(h1, sa.v), causal, ck, cv, cross_mask, False, h1)
        logits = model.logits(x[:, -1])
        if step + 1 < length:
            logits[:, EOS] = float("-inf")
            nxt = logits.argmax(-1)
        else:
            nxt = torch.full_like(prefix[:, 0], EOS)
        prefix = torch.cat([prefix, nxt[:, None]], dim=1)
    return prefix[:, 1:-1].tolist()


def marian_like(model: TransformerSeq2Seq) -> nn.Module:
    """A MarianMTModel of the same shapes, with the weights of the same shapes copied from `model`."""
    from transformers import MarianConfig, MarianMTModel

    m = model.cfg
    config = MarianConfig(
        vocab_size=model.vocab_size, d_model=m.d_model, encoder_layers=m.encoder_layers,
        decoder_layers=m.decoder_layers, encoder_attention_heads=m.n_heads, decoder_attention_heads=m.n_heads,
        encoder_ffn_dim=m.ff_dim, decoder_ffn_dim=m.ff_dim, activation_function="relu",
        max_position_embeddings=m.max_positions, scale_embedding=True, dropout=m.dropout,
        pad_token_id=PAD, decoder_start_token_id=BOS, eos_token_id=EOS, forced_eos_token_id=EOS,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
    )  # fmt: skip
    hf = MarianMTModel(config)
    pairs = {"model.shared.weight": "embed.weight"}
    attn = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
    for i in range(m.encoder_layers):
        e, h = f"encoder.{i}", f"model.encoder.layers.{i}"
        pairs.update({f"{h}.self_attn.{b}": f"{e}.attn.{a}" for a, b in attn.items()})
        pairs.update({f"{h}.self_attn_layer_norm": f"{e}.norm1", f"{h}.final_layer_norm": f"{e}.norm2",
                      f"{h}.fc1": f"{e}.ff.0", f"{h}.fc2": f"{e}.ff.2"})  # fmt: skip
    for i in range(m.decoder_layers):
        e, h = f"decoder.{i}", f"model.decoder.layers.{i}"
        pairs.update({f"{h}.self_attn.{b}": f"{e}.self_attn.{a}" for a, b in attn.items()})
        pairs.update({f"{h}.encoder_attn.{b}": f"{e}.cross_attn.{a}" for a, b in attn.items()})
        pairs.update({f"{h}.self_attn_layer_norm": f"{e}.norm1", f"{h}.encoder_attn_layer_norm": f"{e}.norm2",
                      f"{h}.final_layer_norm": f"{e}.norm3", f"{h}.fc1": f"{e}.ff.0",
                      f"{h}.fc2": f"{e}.ff.2"})  # fmt: skip
    ours = model.state_dict()
    theirs = hf.state_dict()
    copied = 0
    with torch.no_grad():
        for h_name, tensor in theirs.items():
            stem, _, leaf = h_name.rpartition(".")
            src = pairs.get(h_name) or (f"{pairs[stem]}.{leaf}" if stem in pairs else None)
            if src is not None and ours[src].shape == tensor.shape:
                tensor.copy_(ours[src])
                copied += tensor.numel()
    hf.tie_weights()
    hf.copied_fraction = copied / sum(p.numel() for p in hf.parameters())  # type: ignore[assignment]
    return hf.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="12 sentences at batch size 1, 128 at the others")
    ap.add_argument(
        "--sentences",
        type=int,
        default=None,
        help="sentences per batch size (default 24 at batch "
        "size 1 and the 300 test sentences at the others; quick 12 and 128)",
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--out", type=Path, default=ROOT / "mgkd-runs" / "bench-decoding")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers
    from transformers import GenerationConfig

    transformers.logging.set_verbosity_error()
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()

    cfg = build_config(ROOT / "configs" / "demo.yaml", overrides=[f"output_dir={args.out}", "generations.count=1"])
    data = prepare(cfg, lambda msg: print(f"  {msg}", flush=True))
    test = data.splits["test"]
    torch.manual_seed(0)
    model = build_model(cfg.model, data.vocab_size).to(device).eval()
    hf = marian_like(model.cpu()).to(device)
    model.to(device)
    n_single = args.sentences or (12 if args.quick else 24)
    n_batched = min(len(test), args.sentences or (128 if args.quick else len(test)))
    # Batch size 1: sentences spread over the test split's lengths; larger batches: the first n sentences.
    plans = {1: list(range(0, len(test), len(test) // n_single))[:n_single], 32: list(range(n_batched)),
             128: list(range(n_batched))}  # fmt: skip

    def generate(src: torch.Tensor, length: int, beams: int) -> torch.Tensor:
        gc = GenerationConfig(max_new_tokens=length, min_new_tokens=length - 1, num_beams=beams, do_sample=False,
                              early_stopping=True, length_penalty=1.0, decoder_start_token_id=BOS,
                              eos_token_id=EOS, pad_token_id=PAD, forced_eos_token_id=EOS, use_cache=True)  # fmt: skip
        with torch.no_grad():
            return hf.generate(input_ids=src, attention_mask=src.ne(PAD), generation_config=gc)

    def variants(src: torch.Tensor, length: int, own: torch.Tensor) -> dict[str, Callable[[], object]]:
        full = torch.full((src.size(0),), length)
        wrapped = EosOnlyAtEnd(model, length)
        return {
            "mgkd greedy": lambda: greedy_decode(wrapped, src, full),
            "HF greedy": lambda: generate(src, length, 1),
            f"mgkd beam {BEAM}": lambda: beam_search(wrapped, src, full, BEAM),
            f"HF beam {BEAM}": lambda: generate(src, length, BEAM),
            "mgkd greedy, no cache": lambda: greedy_full_prefix(model, src, length),
            "mgkd greedy, own lengths": lambda: greedy_decode(EosOnlyAtEnd(model, int(own.max())), src, own),
        }

    names = list(variants(pad_sources([test.src[0]]), 2, torch.tensor([2])))
    results: dict[int, dict[str, dict[str, list[float]]]] = {}
    checks = {"same length": True, "no cache = cached": True}
    for bs, chosen in plans.items():
        srcs = [test.src[i] for i in chosen]
        refs = [test.tgt[i] for i in chosen]
        batches = list(_length_sorted_batches(srcs, 1.0, 0, bs, device))
        res = {n: {"time": [], "cpu": [], "sents": []} for n in names}
        # Warm-up (allocator, thread pool, lazy imports in generate) on the first batch, untimed.
        warm = batches[0][1][:2]
        for fn in variants(warm, 3, torch.full((warm.size(0),), 3)).values():
            fn()
        for b, (idx, src, _) in enumerate(batches):
            own = torch.tensor([len(refs[i]) + 1 for i in idx])
            length = int(own.max())
            fns = variants(src, length, own)
            outs = {}
            for name in names[b % len(names) :] + names[: b % len(names)]:
                sync(device)
                t, c = time.perf_counter(), time.process_time()
                outs[name] = fns[name]()
                sync(device)
                res[name]["time"].append(time.perf_counter() - t)
                res[name]["cpu"].append(time.process_time() - c)
                res[name]["sents"].append(len(idx))
            greedy, beam = outs["mgkd greedy"], outs[f"mgkd beam {BEAM}"]
            hf_widths = {outs["HF greedy"].shape[1], outs[f"HF beam {BEAM}"].shape[1]}  # type: ignore[attr-defined]
            checks["same length"] &= hf_widths == {length + 1}  # the decoder start + L tokens
            checks["same length"] &= all(len(s) == length - 1 for s in greedy)  # type: ignore[attr-defined]
            checks["same length"] &= all(len(h[0][1]) == length - 1 for h in beam)  # type: ignore[attr-defined]
            checks["no cache = cached"] &= outs["mgkd greedy, no cache"] == greedy
        results[bs] = res
        print(f"  batch size {bs}: {len(chosen)} sentences in {len(batches)} batches, "
              f"{sum(sum(r['time']) for r in res.values()):.1f}s", flush=True)  # fmt: skip

    threads = torch.get_num_threads()
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    m = cfg.model
    lines = [
        f"decoding: mgkd (mgkd.models.decoding) vs Hugging Face generate (MarianMTModel) ({time.strftime('%Y-%m-%d')})",
        f"model: transformer d{m.d_model} h{m.n_heads} {m.encoder_layers}+{m.decoder_layers} ff{m.ff_dim}, "
        f"vocabulary {data.vocab_size}, random weights (seed 0): mgkd {count_parameters(model) / 1e6:.2f}M params, "
        f"Marian {count_parameters(hf) / 1e6:.2f}M ({hf.copied_fraction:.0%} of them copied from mgkd's), "
        f"attention {hf.config._attn_implementation}",
        "inputs: test sources of the built-in corpus, length-sorted batches; every sentence of a batch decodes "
        "L = longest reference in the batch + 1 tokens (EOS masked before, forced at the end); beam "
        f"{BEAM}, length penalty 1.0; transformers {transformers.__version__}",
        f"checks: every variant made L - 1 tokens + EOS: {'yes' if checks['same length'] else 'NO'}; "
        f"non-incremental tokens = incremental tokens: {'yes' if checks['no cache = cached'] else 'NO'}",
        f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} torch threads, device {device}{gpu}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after",
        "",
        "| variant | "
        + " | ".join(f"batch {bs}: sent/s" for bs in results)
        + " | "
        + " | ".join(f"batch {bs}: ratio" for bs in results)
        + " |",
        "|---|" + "---:|" * (2 * len(results)),
    ]
    # Each variant's ratio is against its counterpart: mgkd vs HF with the same search, the rest vs mgkd greedy.
    baseline = {"mgkd greedy": "HF greedy", f"mgkd beam {BEAM}": f"HF beam {BEAM}", "mgkd greedy, no cache":
                "mgkd greedy", "mgkd greedy, own lengths": "mgkd greedy"}  # fmt: skip
    labels = {"mgkd greedy": "mgkd greedy / HF greedy", f"mgkd beam {BEAM}": "mgkd beam / HF beam",
              "mgkd greedy, no cache": "mgkd greedy / no cache", "mgkd greedy, own lengths":
              "own lengths / mgkd greedy"}  # fmt: skip

    def ratio(res: dict[str, dict[str, list[float]]], name: str, clock: str = "time") -> float:
        """The median per-batch sentences/s ratio of the label (the faster side's advantage when > 1)."""
        slow, fast = (name, baseline[name]) if name == "mgkd greedy, no cache" else (baseline[name], name)
        return statistics.median(s / f for s, f in zip(res[slow][clock], res[fast][clock]))

    for name in names:
        rates = [f"{sum(r[name]['sents']) / sum(r[name]['time']):,.1f}" for r in results.values()]
        ratios = [f"**{ratio(r, name):.2f}**" if name in baseline else "" for r in results.values()]
        label = f"{name} ({labels[name]})" if name in labels else name
        lines.append(f"| {label} | " + " | ".join(rates) + " | " + " | ".join(ratios) + " |")
    r32 = ratio(results[32], "mgkd greedy") if 32 in results else float("nan")
    b32 = ratio(results[32], f"mgkd beam {BEAM}") if 32 in results else float("nan")
    lines += [
        "",
        "ratio: median over batches of the per-batch ratio of sentences/s (HF time / mgkd time, ...); own lengths: "
        "each sentence stops at its reference length + 1 and leaves the batch",
        "the same ratios by the process's CPU time (time other jobs on a shared machine take does not count): "
        + "; ".join(
            f"{labels[n]} " + ", ".join(f"{ratio(r, n, 'cpu'):.2f}" for r in results.values())
            for n in names
            if n in baseline
        ),
        f"target mgkd / HF >= 1.5 at batch 32 (sentences/s): greedy {r32:.2f} ({'met' if r32 >= 1.5 else 'not met'}), "
        f"beam {BEAM} {b32:.2f} ({'met' if b32 >= 1.5 else 'not met'})",
        f"bench wall time: {time.perf_counter() - t0:.0f}s",
    ]
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
