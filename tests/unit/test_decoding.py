"""Decoding: incremental state matches a full forward; batches match one-by-one; each sentence ends on its own."""

import numpy as np
import pytest
import torch

from mgkd.config import ModelConfig
from mgkd.models import build_model
from mgkd.models.decoding import beam_decode, greedy_decode, translate
from mgkd.tasks.translation import BOS, EOS, pad_sources

V = 23


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(ModelConfig(d_model=32, n_heads=4, encoder_layers=2, decoder_layers=2, ff_dim=64, dropout=0.0), V)
    return m.eval()


def _sources(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(4, V, size=int(rng.integers(1, 12))).astype(np.int32) for _ in range(n)]


def test_incremental_decoding_equals_full_forward(model):
    src = pad_sources(_sources(3))
    tgt_in = torch.tensor([[BOS, 5, 6, 7, 8], [BOS, 9, 9, 4, 4], [BOS, 10, 11, 12, 13]])
    with torch.no_grad():
        full = model(src, tgt_in).logits
        state = model.init_state(src)
        steps = [model.decode_step(tgt_in[:, t], state, t) for t in range(tgt_in.size(1))]
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beam", [1, 4])
def test_batch_of_mixed_lengths_equals_one_by_one(model, beam):
    sources = _sources(9, seed=1)
    src = pad_sources(sources)
    max_lens = torch.tensor([len(s) + 6 for s in sources])
    batched = beam_decode(model, src, max_lens, beam)
    single = [beam_decode(model, pad_sources([s]), max_lens[i : i + 1], beam)[0] for i, s in enumerate(sources)]
    assert batched == single
    assert all(len(out) < int(m) for out, m in zip(batched, max_lens))  # EOS counts toward the limit


def test_beam_reordering_keeps_the_memory_side_tensors(model):
    """Reordering rows among the beams of the same sentence keeps the cross-attention keys/values (no copy);
    a change of sources (a sentence leaves) selects them, and every row keeps its own source's tensors."""
    src = pad_sources(_sources(3, seed=2))
    with torch.no_grad():
        state = model.select_state(model.init_state(src), torch.arange(3).repeat_interleave(2))
        model.decode_step(torch.full((6,), BOS), state, 0)
        within = model.select_state(state, torch.tensor([1, 1, 2, 3, 5, 4]))  # beams swap, sources stay
        assert within.cross_k[0] is state.cross_k[0] and within.memory is state.memory
        torch.testing.assert_close(within.self_k[0], state.self_k[0][[1, 1, 2, 3, 5, 4]])
        fewer = model.select_state(within, torch.tensor([4, 5]))  # sentences 0 and 1 finished
        assert fewer.source.tolist() == [2, 2]
        alone = model.init_state(src[2:3])
        torch.testing.assert_close(fewer.cross_k[1], alone.cross_k[1].expand(2, -1, -1, -1))


class ScriptedModel(torch.nn.Module):
    """Emits token 5 until its sentence's scripted step, then EOS; counts rows per step."""

    def __init__(self, stop_at: list[int]) -> None:
        super().__init__()
        self.stop_at = torch.tensor(stop_at)
        self.rows_per_step: list[int] = []

    def init_state(self, src):
        return {"sent": torch.arange(src.size(0))}

    def decode_step(self, tokens, state, step):
        self.rows_per_step.append(tokens.size(0))
        # A clear ranking (5 > 6 > 7 > 4 > the rest), and EOS far ahead at the scripted step.
        logits = torch.full((tokens.size(0), 8), -10.0)
        logits[:, 5], logits[:, 6], logits[:, 7], logits[:, 4] = 10.0, 5.0, 4.0, 3.0
        ends = self.stop_at[state["sent"]] == step
        logits[ends, EOS] = 20.0
        return logits

    def select_state(self, state, rows):
        return {"sent": state["sent"][rows]}


def test_each_sentence_stops_at_its_own_eos_and_the_batch_when_all_have():
    model = ScriptedModel([0, 3, 1, 6])
    out = greedy_decode(model, torch.zeros(4, 2, dtype=torch.long), torch.tensor([50, 50, 50, 50]))
    assert out == [[], [5, 5, 5], [5], [5] * 6]
    # finished sentences leave the batch; decoding stops at the last EOS, not at max length
    assert model.rows_per_step == [4, 3, 2, 2, 1, 1, 1]


def test_beam_each_sentence_stops_on_its_own():
    model = ScriptedModel([2, 0, 4])
    out = beam_decode(model, torch.zeros(3, 2, dtype=torch.long), torch.tensor([30, 30, 30]), beam_size=3)
    assert out == [[5, 5], [], [5, 5, 5, 5]]
    assert len(model.rows_per_step) < 30


def test_max_length_is_per_sentence():
    model = ScriptedModel([100, 100])
    out = greedy_decode(model, torch.zeros(2, 2, dtype=torch.long), torch.tensor([3, 6]))
    assert [len(o) for o in out] == [2, 5]


def test_translate_keeps_input_order(model):
    sources = _sources(10, seed=2)
    outs = translate(model, sources, lambda ids: " ".join(map(str, ids)), 1.0, 3, batch_size=4)
    alone = [translate(model, [s], lambda ids: " ".join(map(str, ids)), 1.0, 3, batch_size=1)[0] for s in sources]
    assert outs == alone
