"""Batched greedy and beam decoding over any model with incremental decoder state.

A decodable model has `init_state(src)`, `decode_step(tokens, state, step)`
and `select_state(state, rows)`. Every sentence stops at its own EOS (or its
own maximum length); finished sentences leave the batch, so the work shrinks
as they finish, and the batch stops when all have. Decoding a sentence in a
batch gives the same tokens as decoding it alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mgkd.tasks.translation import BOS, EOS, pad_sources


@torch.no_grad()
def greedy_decode(model: torch.nn.Module, src: torch.Tensor, max_lens: torch.Tensor) -> list[list[int]]:
    """Token ids (without BOS/EOS) for each row of `src` (N, S); max_lens (N,) counts EOS."""
    n = src.size(0)
    state = model.init_state(src)
    rows = torch.arange(n, device=src.device)  # original sentence of each live row
    limit = max_lens.to(src.device)
    tokens = torch.full((n,), BOS, dtype=torch.long, device=src.device)
    outputs: list[list[int]] = [[] for _ in range(n)]
    for step in range(int(limit.max())):
        nxt = model.decode_step(tokens, state, step).argmax(-1)
        nxt = torch.where(step + 1 >= limit, torch.full_like(nxt, EOS), nxt)
        for r, tok in zip(rows.tolist(), nxt.tolist()):
            if tok != EOS:
                outputs[r].append(tok)
        live = nxt.ne(EOS)
        if not live.any():
            break
        if not live.all():
            keep = live.nonzero().squeeze(1)
            rows, limit, nxt = rows[keep], limit[keep], nxt[keep]
            state = model.select_state(state, keep)
        tokens = nxt
    return outputs


@torch.no_grad()
def beam_decode(
    model: torch.nn.Module, src: torch.Tensor, max_lens: torch.Tensor, beam_size: int, length_penalty: float = 1.0
) -> list[list[int]]:
    """Best hypothesis per sentence by log-probability / length**length_penalty.

    A sentence is finished when it holds `beam_size` ended hypotheses (an EOS
    among the top candidates, as in fairseq), when its best ended hypothesis
    scores at least as well as its best live one, or at its maximum length.
    """
    if beam_size == 1:
        return greedy_decode(model, src, max_lens)
    n, k, dev = src.size(0), beam_size, src.device
    state = model.select_state(model.init_state(src), torch.arange(n, device=dev).repeat_interleave(k))
    sent = torch.arange(n, device=dev)  # original index of each live sentence
    limit = max_lens.to(dev)
    scores = torch.full((n, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive
    history = torch.zeros(n * k, 0, dtype=torch.long, device=dev)
    tokens = torch.full((n * k,), BOS, dtype=torch.long, device=dev)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    for step in range(int(limit.max())):
        m = sent.numel()
        logp = F.log_softmax(model.decode_step(tokens, state, step).float(), -1)
        v = logp.size(-1)
        cand = scores.unsqueeze(-1) + logp.view(m, k, v)
        at_limit = step + 1 >= limit
        if at_limit.any():  # only EOS may follow at a sentence's length limit
            only_eos = torch.full((v,), float("-inf"), device=dev)
            only_eos[EOS] = 0.0
            cand[at_limit] = cand[at_limit] + only_eos
        top_s, top_i = cand.view(m, k * v).topk(2 * k, dim=1)
        beam, tok = top_i // v, top_i % v
        ended = tok.eq(EOS) & top_s.isfinite()
        for i, j in ended[:, :k].nonzero().tolist():
            s = int(sent[i])
            if len(finished[s]) < k:
                seq = history[i * k + int(beam[i, j])].tolist()
                finished[s].append((float(top_s[i, j]) / (len(seq) + 1) ** length_penalty, seq))
        # The best k candidates that did not end continue.
        sel_s, sel_j = top_s.masked_fill(ended, float("-inf")).topk(k, dim=1)
        best_alive = (sel_s[:, 0] / (step + 1) ** length_penalty).tolist()
        ends = [finished[int(s)] for s in sent]
        full = [bool(f) and (len(f) >= k or max(x[0] for x in f) >= a) for f, a in zip(ends, best_alive)]
        done = at_limit | torch.tensor(full, dtype=torch.bool, device=dev)
        if done.all():
            break
        # Finished sentences leave the batch.
        keep = (~done).nonzero().squeeze(1)
        sel_s, sel_j, beam, tok = sel_s[keep], sel_j[keep], beam[keep], tok[keep]
        rows = (keep * k).unsqueeze(1) + beam.gather(1, sel_j)
        rows = rows.reshape(-1)
        state = model.select_state(state, rows)
        history = torch.cat([history.index_select(0, rows), tok.gather(1, sel_j).reshape(-1, 1)], dim=1)
        tokens = history[:, -1]
        scores, sent, limit = sel_s, sent[keep], limit[keep]
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]


def translate(
    model: torch.nn.Module,
    sources: list,  # token-id arrays, without EOS
    detokenize: Callable[[list[int]], str],
    max_len_a: float,
    max_len_b: int,
    batch_size: int,
    beam_size: int = 1,
    length_penalty: float = 1.0,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Decode many sentences in length-sorted batches; outputs come back in input order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[str] = [""] * len(sources)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            src = pad_sources([sources[i] for i in idx]).to(device)
            max_lens = torch.tensor([max(1, math.ceil(max_len_a * (len(sources[i]) + 1) + max_len_b)) for i in idx])
            ids = beam_decode(model, src, max_lens, beam_size, length_penalty)
            for i, seq in zip(idx, ids):
                out[i] = detokenize(seq)
            if on_batch:
                on_batch(len(idx))
    finally:
        model.train(was_training)
    return out
