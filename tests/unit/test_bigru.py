"""The BiGRU student: the model contract, batched decoding, checkpoints, and a mixed-architecture lineage."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mgkd.config import ModelConfig, build_config
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule
from mgkd.generations.checkpoint import load_checkpoint, save_checkpoint
from mgkd.generations.teacher import build_student
from mgkd.models import architecture, build_model, check_arch
from mgkd.models.bigru import BiGRUSeq2Seq
from mgkd.models.decoding import beam_decode, greedy_decode
from mgkd.tasks.translation import BOS, EOS, PAD, pad_sources

from ..helpers import teacher_then_student, tiny_config

V = 23
# d_model != embed_dim (the output projection) and different depths (the bridge); and the plain shape.
CONFIGS = {
    "e16-2+1": ModelConfig(arch="bigru", d_model=32, embed_dim=16, encoder_layers=2, decoder_layers=1, dropout=0.0),
    "d32-1+2": ModelConfig(arch="bigru", d_model=32, encoder_layers=1, decoder_layers=2, dropout=0.0),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sources(n: int, seed: int = 0, max_len: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(4, V, size=int(rng.integers(1, max_len))).astype(np.int32) for _ in range(n)]


def _random_model(name: str) -> BiGRUSeq2Seq:
    torch.manual_seed(0)
    return build_model(CONFIGS[name], V).eval()  # type: ignore[return-value]


@pytest.fixture(scope="module", params=list(CONFIGS))
def random_model(request) -> BiGRUSeq2Seq:
    return _random_model(request.param)


@pytest.fixture(scope="module")
def trained_model() -> BiGRUSeq2Seq:
    """Trained ~2 s to reverse its source, so it ends sentences with EOS of its own accord."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="bigru", d_model=32, embed_dim=16, encoder_layers=1, decoder_layers=1, dropout=0.1)
    model = build_model(cfg, V)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        sources = _sources(32, seed=1000 + step, max_len=9)
        tgt_in = pad_sources([np.concatenate([[BOS], s[::-1]]).astype(np.int32) for s in sources])[:, :-1]
        tgt_out = pad_sources([s[::-1].copy() for s in sources])
        logits = model(pad_sources(sources), tgt_in).logits
        loss = F.cross_entropy(logits.reshape(-1, V), tgt_out.reshape(-1), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()  # type: ignore[return-value]


# -- the model contract ---------------------------------------------------------


def test_incremental_decoding_equals_full_forward(random_model, trained_model):
    src = pad_sources(_sources(4, seed=3))
    tgt_in = torch.tensor([[BOS, 5, 6, 7, 8, 9], [BOS, 9, 9, 4, 4, 0], [BOS, 10, 11, 12, 13, 14], [BOS, 7, 0, 0, 0, 0]])
    for model in (random_model, trained_model):
        with torch.no_grad():
            full = model(src, tgt_in).logits
            state = model.init_state(src)
            steps = [model.decode_step(tgt_in[:, t], state, t) for t in range(tgt_in.size(1))]
        torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_a_sentences_encoder_states(random_model):
    sources = _sources(6, seed=4)
    batch = pad_sources(sources)
    with torch.no_grad():
        memory, src_pad, hidden = random_model.encode(batch)
        for i, s in enumerate(sources):
            alone, _, h_alone = random_model.encode(pad_sources([s]))
            n = len(s) + 1  # with EOS
            torch.testing.assert_close(memory[i, :n], alone[0], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(hidden[:, i], h_alone[:, 0], atol=1e-6, rtol=1e-6)
            assert not memory[i, n:].any() and src_pad[i, n:].all()


def test_forward_returns_the_exposed_features(random_model):
    src = pad_sources(_sources(3, seed=5))
    tgt_in = torch.tensor([[BOS, 5, 6], [BOS, 7, 0], [BOS, 8, 9]])
    with torch.no_grad():
        out = random_model(src, tgt_in, return_hidden=True, return_attention=True)
        plain = random_model(src, tgt_in)
    b, s, t, d = 3, src.size(1), 3, random_model.cfg.d_model
    assert out.logits.shape == (b, t, V) and torch.equal(out.logits, plain.logits)
    assert [x.shape for x in out.encoder_hidden] == [(b, s, d)]
    assert [x.shape for x in out.decoder_hidden] == [(b, t, d)]
    (attn,) = out.decoder_cross_attention
    assert attn.shape == (b, 1, t, s)
    torch.testing.assert_close(attn.sum(-1), torch.ones(b, 1, t))
    assert not attn.masked_select(src.eq(PAD)[:, None, None, :]).any()  # no weight on source padding
    assert not plain.encoder_hidden and not plain.decoder_cross_attention
    exposes = architecture("bigru").exposes  # its @register declaration
    filled = {k for k in exposes if getattr(out, k)}
    assert filled == exposes
    assert "decoder_self_attention" in architecture("transformer").exposes - exposes


# -- batched decoding -----------------------------------------------------------


def _decode(model, sources: list[np.ndarray], max_lens: torch.Tensor, beam: int) -> tuple[list, list]:
    batched = beam_decode(model, pad_sources(sources), max_lens, beam)
    single = [beam_decode(model, pad_sources([s]), max_lens[i : i + 1], beam)[0] for i, s in enumerate(sources)]
    return batched, single


@pytest.mark.parametrize("beam", [1, 3])
def test_random_model_batch_of_mixed_lengths_equals_one_by_one(random_model, beam):
    sources = _sources(9, seed=1)
    max_lens = torch.tensor([len(s) + 4 for s in sources])
    batched, single = _decode(random_model, sources, max_lens, beam)
    assert batched == single
    assert all(len(out) < int(m) for out, m in zip(batched, max_lens))  # EOS counts toward the limit


@pytest.mark.parametrize("beam", [1, 3])
def test_trained_model_batch_equals_one_by_one_with_eos_and_length_limits(trained_model, beam):
    sources = _sources(12, seed=2, max_len=9)
    # Every third sentence gets a limit shorter than its reversal: it ends at the limit, the others on EOS.
    max_lens = torch.tensor([3 if i % 3 == 0 and len(s) > 3 else len(s) + 5 for i, s in enumerate(sources)])
    batched, single = _decode(trained_model, sources, max_lens, beam)
    assert batched == single
    at_limit = [len(out) == int(m) - 1 for out, m in zip(batched, max_lens)]
    assert any(at_limit) and not all(at_limit)
    # not degenerate: most sentences come out as their reversal
    assert sum(out == s[::-1].tolist() for out, s, lim in zip(batched, sources, at_limit) if not lim) >= 4


class ForcedEos:
    """The trained model, with EOS forced for some sentences at a scripted step; counts rows per step."""

    def __init__(self, model: BiGRUSeq2Seq, stop_at: dict[int, int]) -> None:
        self.model, self.stop_at = model, stop_at
        self.rows_per_step: list[int] = []

    def init_state(self, src):
        return self.model.init_state(src), torch.arange(src.size(0))

    def decode_step(self, tokens, state, step):
        inner, sent = state
        self.rows_per_step.append(tokens.size(0))
        logits = self.model.decode_step(tokens, inner, step)
        for row, s in enumerate(sent.tolist()):
            if self.stop_at.get(s) == step:
                logits[row, EOS] = logits[row].max() + 100.0
        return logits

    def select_state(self, state, rows):
        inner, sent = state
        return self.model.select_state(inner, rows), sent[rows]


def test_each_sentence_stops_at_its_own_eos(trained_model):
    sources = [s for s in _sources(12, seed=6, max_len=9) if len(s) >= 4][:5]
    src, max_lens = pad_sources(sources), torch.tensor([30] * len(sources))
    free = greedy_decode(trained_model, src, max_lens)
    stop_at = {0: 0, 2: 2, 3: 1}
    forced = ForcedEos(trained_model, stop_at)
    out = greedy_decode(forced, src, max_lens)
    for i in range(len(sources)):
        assert out[i] == (free[i][: stop_at[i]] if i in stop_at else free[i])
    # finished sentences leave the batch; the batch stops at the last sentence's EOS, not at max length
    ends = [len(o) for o in out]
    assert forced.rows_per_step == [sum(e >= t for e in ends) for t in range(max(ends) + 1)]
    assert max(ends) < 29

    free_beam = beam_decode(trained_model, src, max_lens, 3)
    forced = ForcedEos(trained_model, stop_at)
    out = beam_decode(forced, src, max_lens, 3)
    for i in range(len(sources)):
        assert (len(out[i]) == stop_at[i]) if i in stop_at else (out[i] == free_beam[i])
    assert forced.rows_per_step[0] == 3 * len(sources) and len(forced.rows_per_step) < 29


# -- checkpoints, init, config --------------------------------------------------


def test_checkpoint_round_trip_with_weights_only(random_model, tmp_path):
    path = tmp_path / "ckpt.pt"
    sha = save_checkpoint(path, random_model, V, generation=1)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and values, no pickled code
    assert raw["model_config"]["arch"] == "bigru" and raw["model_config"] == random_model.cfg.model_dump()
    loaded, _ = load_checkpoint(path, sha)
    assert isinstance(loaded, BiGRUSeq2Seq) and loaded.cfg == random_model.cfg
    for (name, a), (_, b) in zip(random_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    src = pad_sources(_sources(3, seed=7))
    max_lens = torch.tensor([8, 8, 8])
    assert beam_decode(loaded.eval(), src, max_lens, 3) == beam_decode(random_model, src, max_lens, 3)


def test_init_teacher_copies_a_bigru_teachers_tensors(trained_model):
    cfg = build_config(overrides=["generations.count=1", "generations.per_generation={1: {init: teacher}}"])
    spec = replace(build_schedule(cfg)[1], model=trained_model.cfg)
    student = build_student(spec, V, trained_model)
    assert isinstance(student, BiGRUSeq2Seq) and student is not trained_model
    t_params = dict(trained_model.named_parameters())
    for name, p in student.named_parameters():
        assert torch.equal(p, t_params[name]) and p.data_ptr() != t_params[name].data_ptr()


def test_bigru_is_registered_and_its_config_is_checked():
    assert architecture("bigru").cls is BiGRUSeq2Seq
    check_arch("bigru")
    with pytest.raises(MgkdError, match="bigru, transformer"):
        check_arch("lstm")
    # n_heads does not constrain a GRU; an odd width cannot be split between two directions.
    # Each architecture checks its sizes when the schedule is built, before anything trains.
    build_schedule(build_config(overrides=["model.arch=bigru", "model.d_model=50", "model.n_heads=4"]))
    with pytest.raises(MgkdError, match="generations.teacher: arch 'bigru' .* d_model must be even"):
        build_schedule(build_config(overrides=["model.arch=bigru", "model.d_model=33"]))
    with pytest.raises(MgkdError, match="generations.teacher: embed_dim is a bigru size"):
        build_schedule(build_config(overrides=["model.embed_dim=64"]))
    assert build_schedule(build_config(overrides=["model.embed_dim=128"]))[0].model.embed_dim == 128


def test_init_teacher_across_architectures_names_both_and_the_fix():
    cfg = build_config(overrides=["generations.count=2", "generations.per_generation={1: {model: {arch: bigru}}}"])
    with pytest.raises(MgkdError) as e:
        build_schedule(cfg)
    msg = str(e.value)
    assert msg.startswith("generation 1: init 'teacher'")
    assert "'transformer'" in msg and "'bigru'" in msg and "init: scratch" in msg
    assert "generations.per_generation.1.init=scratch" in msg


def test_bigru_student_learns_from_teacher_outputs(tmp_path, tiny_data):
    """A BiGRU student trains on the seq-KD and pseudo-label terms of a Transformer teacher."""

    losses = (
        '[{"name": "seq_kd", "weight": 0.5, "params": {"beam_size": 1, "max_sentences": 60}},'
        ' {"name": "pseudo_label", "weight": 0.5, "params": {"max_sentences": 40, "ratio": 0.25}}]'
    )
    cfg = tiny_config(tmp_path, "generations.count=1", "train.max_steps=4", "generations.student.init=scratch",
                      "generations.student.model={arch: bigru, d_model: 32, encoder_layers: 1, decoder_layers: 1}",
                      f"generations.student.losses={losses}")  # fmt: skip
    _, student, steps = teacher_then_student(cfg, tiny_data, tmp_path)
    assert steps and all(np.isfinite(m["loss.seq_kd"]) and np.isfinite(m["loss.pseudo_label"]) for m in steps)
    assert student.metrics["seq_kd_sentences"] == 60 and student.metrics["pseudo_label_sentences"] > 0
    assert len(student.artifacts) == 2
