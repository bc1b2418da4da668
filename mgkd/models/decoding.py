"""Batched greedy and beam decoding over any model with incremental decoder state.

A decodable model has `init_state(src)`, `decode_step(tokens, state, step)`
and `select_state(state, rows)`. Every sentence stops at its own EOS (or its
own maximum length); finished sentences leave the batch, so the work shrinks
as they finish, and the batch stops when all have. Decoding a sentence in a
batch gives the same tokens as decoding it alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from mgkd.vocabulary import BOS, EOS, pad_sources


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


# One finished hypothesis: (log-probability / length**length_penalty, token ids without BOS/EOS).
Hypothesis = tuple[float, list[int]]


@torch.no_grad()
def beam_search(
    model: torch.nn.Module,
    src: torch.Tensor,
    max_lens: torch.Tensor,
    beam_size: int,
    length_penalty: float = 1.0,
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """The `n_best` best finished hypotheses per sentence, best first, with their scores.

    A sentence is finished when it holds `beam_size` ended hypotheses (an EOS
    among the top candidates, as in fairseq), when its `n_best`-th best ended
    hypothesis scores at least as well as its best live one (no live one can
    still enter its n best), or at its maximum length. A sentence may end with
    fewer than `n_best` hypotheses. `beam_size` 1 is greedy search with scores.

    Raises:
        ValueError: if `n_best` is not in 1..beam_size.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be in 1..beam_size ({beam_size}), got {n_best}")
    n, k, dev = src.size(0), beam_size, src.device
    state = model.select_state(model.init_state(src), torch.arange(n, device=dev).repeat_interleave(k))
    sent = torch.arange(n, device=dev)  # original index of each live sentence
    limit = max_lens.to(dev)
    scores = torch.full((n, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive
    history = torch.zeros(n * k, 0, dtype=torch.long, device=dev)
    tokens = torch.full((n * k,), BOS, dtype=torch.long, device=dev)
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
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
        full = [len(f) >= k or (len(f) >= n_best and _nth_best(f, n_best) >= a) for f, a in zip(ends, best_alive)]
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
    # sorted() is stable: equal scores keep the order in which they ended.
    return [sorted(f, key=lambda x: -x[0])[:n_best] for f in finished]


def _nth_best(hyps: list[Hypothesis], n: int) -> float:
    return sorted((h[0] for h in hyps), reverse=True)[n - 1]


@torch.no_grad()
def beam_decode(
    model: torch.nn.Module,
    src: torch.Tensor,
    max_lens: torch.Tensor,
    beam_size: int,
    length_penalty: float = 1.0,
    n_best: int = 1,
) -> list[list[int]] | list[list[Hypothesis]]:
    """Best hypothesis per sentence by log-probability / length**length_penalty.

    With `n_best` 1 (the default) each sentence's best token ids (beam size 1
    is plain greedy search); with `n_best` > 1 each sentence's up to `n_best`
    best (score, token ids), best first (see `beam_search`).
    """
    if n_best > 1:
        return beam_search(model, src, max_lens, beam_size, length_penalty, n_best)
    if beam_size == 1:
        return greedy_decode(model, src, max_lens)
    return [hyps[0][1] if hyps else [] for hyps in beam_search(model, src, max_lens, beam_size, length_penalty)]


def _length_sorted_batches(
    sources: list, max_len_a: float, max_len_b: int, batch_size: int, device: torch.device | str
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(input positions, padded sources, max output lengths) of similar-length batches."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        src = pad_sources([sources[i] for i in idx]).to(device)
        max_lens = torch.tensor([max(1, math.ceil(max_len_a * (len(sources[i]) + 1) + max_len_b)) for i in idx])
        yield idx, src, max_lens


def _decode_in_batches(
    model: torch.nn.Module,
    sources: list,
    max_len_a: float,
    max_len_b: int,
    batch_size: int,
    device: torch.device | str,
    on_batch: Callable[[int], None] | None,
    decode: Callable[[torch.Tensor, torch.Tensor], list],
) -> list:
    """`decode(src, max_lens)` over length-sorted batches in eval mode; results back in input order."""
    was_training = model.training
    model.eval()
    out: list = [None] * len(sources)
    try:
        for idx, src, max_lens in _length_sorted_batches(sources, max_len_a, max_len_b, batch_size, device):
            for i, result in zip(idx, decode(src, max_lens)):
                out[i] = result
            if on_batch:
                on_batch(len(idx))
    finally:
        model.train(was_training)
    return out


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

    def decode(src: torch.Tensor, max_lens: torch.Tensor) -> list[str]:
        return [detokenize(seq) for seq in beam_decode(model, src, max_lens, beam_size, length_penalty)]  # type: ignore[arg-type]

    return _decode_in_batches(model, sources, max_len_a, max_len_b, batch_size, device, on_batch, decode)


def translate_n_best(
    model: torch.nn.Module,
    sources: list,  # token-id arrays, without EOS
    detokenize: Callable[[list[int]], str],
    max_len_a: float,
    max_len_b: int,
    batch_size: int,
    beam_size: int = 1,
    n_best: int = 1,
    length_penalty: float = 1.0,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> list[list[tuple[float, str]]]:
    """Like `translate`, but each sentence's up to `n_best` best (score, text), best first.

    Beam size 1 runs greedy search through `beam_search`, so its one output
    carries a score too (the same tokens as `greedy_decode`).
    """

    def decode(src: torch.Tensor, max_lens: torch.Tensor) -> list[list[tuple[float, str]]]:
        hyps = beam_search(model, src, max_lens, beam_size, length_penalty, n_best)
        return [[(score, detokenize(seq)) for score, seq in h] for h in hyps]

    return _decode_in_batches(model, sources, max_len_a, max_len_b, batch_size, device, on_batch, decode)
