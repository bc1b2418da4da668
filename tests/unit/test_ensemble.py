"""Generation ensembles (BAN-E): decoding, as the teacher of a next generation, and `mgkd evaluate`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mgkd.config import ModelConfig
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule
from mgkd.models import build_model
from mgkd.models.decoding import beam_decode, greedy_decode
from mgkd.models.ensemble import EnsembleSeq2Seq
from mgkd.tasks.translation import pad_sources

from ..helpers import tiny_config


def _members(n: int = 2) -> list[torch.nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        cfg = ModelConfig(d_model=32, n_heads=2, ff_dim=64, encoder_layers=1, decoder_layers=1 + seed % 2)
        out.append(build_model(cfg, 40).eval())
    return out


def test_ensemble_averages_log_probabilities():
    a, b = _members()
    ens = EnsembleSeq2Seq([a, b]).eval()
    src, tgt = torch.randint(4, 40, (2, 5)), torch.randint(4, 40, (2, 4))
    expected = (F.log_softmax(a(src, tgt).logits, -1) + F.log_softmax(b(src, tgt).logits, -1)) / 2
    assert torch.allclose(ens(src, tgt).logits, expected, atol=1e-6)
    # incremental scoring agrees with teacher forcing
    state = ens.init_state(src)
    for step in range(tgt.size(1)):
        step_logits = ens.decode_step(tgt[:, step], state, step)
        assert torch.allclose(F.log_softmax(step_logits, -1), F.log_softmax(expected[:, step], -1), atol=1e-5)
    with pytest.raises(MgkdError, match="share one vocabulary"):
        EnsembleSeq2Seq([a, build_model(ModelConfig(d_model=32, n_heads=2, ff_dim=64), 41)])


def test_ensemble_of_one_decodes_like_its_member_and_batches_like_one_by_one():
    (a,) = _members(1)
    sources = [torch.randint(4, 40, (n,)).numpy() for n in (3, 7, 5, 1)]
    src = pad_sources(sources)
    max_lens = torch.tensor([8, 12, 9, 4])
    assert greedy_decode(EnsembleSeq2Seq([a]), src, max_lens) == greedy_decode(a, src, max_lens)
    ens = EnsembleSeq2Seq(_members(2)).eval()
    batched = beam_decode(ens, src, max_lens, beam_size=3)
    for i, s in enumerate(sources):
        assert beam_decode(ens, pad_sources([s]), max_lens[i : i + 1], beam_size=3)[0] == batched[i]


def test_teacher_generations_must_be_earlier(tmp_path):
    cfg = tiny_config(tmp_path, "generations.count=2", 'generations.per_generation={"2": {"teacher_generations": [2]}}')
    with pytest.raises(MgkdError, match=r"generation 2: teacher_generations \[2\] must be earlier generations"):
        build_schedule(cfg)
