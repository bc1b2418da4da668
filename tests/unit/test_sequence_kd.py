"""Sequence-level KD and pseudo-labels: n-best search, the teacher-output store, both plugins, a lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import sentencepiece as spm
import torch
import torch.nn.functional as F

from mgkd.config import LossTerm, ModelConfig
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule
from mgkd.generations.pseudo_targets import DecodeSettings, teacher_outputs, to_split
from mgkd.generations.recipe import cycle_batches
from mgkd.generations.views import GenerationViewContext
from mgkd.losses import create
from mgkd.losses.pseudo_label import PseudoLabel, SourceNoise
from mgkd.losses.sequence import SentenceBleu, SequenceKD, select_hypotheses, token_cross_entropy
from mgkd.models import build_model
from mgkd.models.decoding import beam_decode, beam_search, greedy_decode
from mgkd.models.transformer import Seq2SeqOutput
from mgkd.tasks.translation import EOS, PAD, TRANSLATION, Batch, collate, pad_sources
from mgkd.tasks.translation.monolingual import check_source, fit_length, normalized, read_sources

from ..helpers import tiny_config
from ..helpers.sequence_kd import CountingDecoder

V = 23


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(ModelConfig(d_model=32, n_heads=4, encoder_layers=2, decoder_layers=2, ff_dim=64, dropout=0.0), V)
    return m.eval()


def _sources(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(4, V, size=int(rng.integers(1, 12))).astype(np.int32) for _ in range(n)]


# --- n-best beam search ----------------------------------------------------------------------------


@pytest.mark.parametrize("beam,n_best", [(4, 3), (5, 5), (1, 1)])
def test_n_best_batched_equals_one_by_one(model, beam, n_best):
    sources = _sources(6, seed=3)
    max_lens = torch.tensor([len(s) + 6 for s in sources])
    batched = beam_search(model, pad_sources(sources), max_lens, beam, n_best=n_best)
    single = [beam_search(model, pad_sources([s]), max_lens[i : i + 1], beam, n_best=n_best)[0]
              for i, s in enumerate(sources)]  # fmt: skip
    assert [[t for _, t in h] for h in batched] == [[t for _, t in h] for h in single]
    for hb, hs in zip(batched, single):
        assert [s for s, _ in hb] == pytest.approx([s for s, _ in hs], abs=1e-4)
        assert 1 <= len(hb) <= n_best
        assert [s for s, _ in hb] == sorted((s for s, _ in hb), reverse=True)  # best first
        assert len({tuple(t) for _, t in hb}) == len(hb)  # distinct hypotheses
    if n_best > 1:
        assert max(len(h) for h in batched) == n_best
        # beam_decode(n_best>1) is the same n-best list
        assert beam_decode(model, pad_sources(sources), max_lens, beam, n_best=n_best) == batched


def test_n_best_one_is_the_existing_beam_output(model):
    sources = _sources(9, seed=4)
    src, max_lens = pad_sources(sources), torch.tensor([len(s) + 6 for s in sources])
    best = beam_decode(model, src, max_lens, 4)
    assert beam_decode(model, src, max_lens, 4, n_best=1) == best
    assert all(isinstance(t, int) for seq in best for t in seq)
    assert [h[0][1] for h in beam_search(model, src, max_lens, 4)] == best
    # beam 1 through beam_search is greedy search, with a score
    greedy = greedy_decode(model, src, max_lens)
    scored = beam_search(model, src, max_lens, 1)
    assert [h[0][1] for h in scored] == greedy
    logp = [_sequence_logprob(model, s, h[0][1]) for s, h in zip(sources, scored)]
    assert [h[0][0] * (len(h[0][1]) + 1) for h in scored] == pytest.approx(logp, abs=1e-4)
    with pytest.raises(ValueError, match="n_best"):
        beam_search(model, src, max_lens, 2, n_best=3)


def _sequence_logprob(model, source: np.ndarray, tokens: list[int]) -> float:
    """log p(tokens + EOS | source) by a full forward pass."""
    tgt = torch.tensor([[2, *tokens]])
    with torch.no_grad():
        logp = F.log_softmax(model(pad_sources([source]), tgt).logits[0].float(), -1)
    return float(sum(logp[t, tok] for t, tok in enumerate([*tokens, EOS])))


# --- the pseudo-target store ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_teacher(tiny_data):
    torch.manual_seed(1)
    cfg = ModelConfig(d_model=32, n_heads=2, encoder_layers=1, decoder_layers=1, ff_dim=64, dropout=0.0)
    return build_model(cfg, tiny_data.vocab_size).eval()


def _examples(data, n: int = 30) -> list[tuple[str, str]]:
    train = data.splits["train"]
    return list(zip(train.ids[:n], train.sources[:n]))


def test_store_decodes_once_per_teacher_and_settings(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    counter = CountingDecoder(monkeypatch)
    events: list[dict] = []
    examples = _examples(tiny_data)
    settings = DecodeSettings(beam_size=2, n_best=2, max_len_a=0.0, max_len_b=5)

    def call(sha: str, s: DecodeSettings = settings):
        return teacher_outputs(tiny_teacher, sha, examples, tiny_data.tokenizer, s, tmp_path,
                               batch_size=8, events=events.append)  # fmt: skip

    first = call("a" * 64)
    assert not first.cached and counter.calls == 1 and counter.sentences == len(examples)
    assert set(first.hypotheses) == {i for i, _ in examples}
    assert all(1 <= len(h) <= 2 for h in first.hypotheses.values())
    assert "a" * 16 in first.path.name and first.manifest.is_file()
    progress = [e for e in events if e["type"] == "decode"]
    assert all(e["split"] == "pseudo" for e in progress) and progress[-1]["done"] == progress[-1]["total"] == 30
    # outputs are text (the teacher's detokenized hypotheses), keyed by example id
    header, *rows = first.path.read_text(encoding="utf-8").splitlines()
    assert header.split("\t") == ["id", "rank", "score", "source", "hypothesis"]
    assert rows[0].split("\t")[0] == examples[0][0] and rows[0].split("\t")[3] == examples[0][1]

    again = call("a" * 64)
    assert again.cached and counter.calls == 1 and again.hypotheses == first.hypotheses

    other_teacher = call("b" * 64)  # another checksum: another file, decoded anew
    assert not other_teacher.cached and counter.calls == 2 and other_teacher.path != first.path

    other_beam = call("a" * 64, DecodeSettings(beam_size=1, n_best=1, max_len_a=0.0, max_len_b=5))
    assert not other_beam.cached and counter.calls == 3 and other_beam.path != first.path
    assert all(len(h) == 1 for h in other_beam.hypotheses.values())


def test_store_recomputes_a_corrupt_or_unfinished_file(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    counter = CountingDecoder(monkeypatch)
    examples = _examples(tiny_data, 12)
    settings = DecodeSettings(max_len_a=0.0, max_len_b=5)

    def call():
        return teacher_outputs(tiny_teacher, "c" * 64, examples, tiny_data.tokenizer, settings, tmp_path)

    first = call()
    text = first.path.read_text(encoding="utf-8")
    first.path.write_text(text.replace("\t0\t", "\t1\t", 1), encoding="utf-8")  # one changed byte
    fixed = call()
    assert not fixed.cached and counter.calls == 2 and "sha256" in fixed.rejected
    assert fixed.path.read_text(encoding="utf-8") == text and fixed.hypotheses == first.hypotheses
    assert call().cached and counter.calls == 2

    fixed.manifest.unlink()  # an interrupted write: the file without its manifest
    again = call()
    assert not again.cached and counter.calls == 3 and "manifest" in again.rejected
    assert call().cached


def test_outputs_are_text_retokenized_with_another_vocabulary(tiny_data, tiny_teacher, tmp_path):
    train = tiny_data.splits["train"]
    # The student's tokenizer: another sentencepiece model (unigram, smaller vocabulary).
    other_model = _train_spm(train.sources + train.targets, 300, tmp_path)
    other = spm.SentencePieceProcessor(model_proto=other_model)
    assert other.get_piece_size() != tiny_data.vocab_size
    examples = _examples(tiny_data, 20)
    out = teacher_outputs(tiny_teacher, "d" * 64, examples, tiny_data.tokenizer,
                          DecodeSettings(max_len_a=0.0, max_len_b=5), tmp_path)  # fmt: skip
    targets = [out.hypotheses[i][0][1] for i, _ in examples]
    split = to_split([i for i, _ in examples], [s for _, s in examples], targets, other)
    assert split.ids == [i for i, _ in examples] and split.targets == targets
    for text, ids in zip(targets, split.tgt):
        assert other.decode(ids.tolist()) == text  # the text round-trips through the other vocabulary
        assert ids.size == 0 or int(ids.max()) < other.get_piece_size()
    for source, ids in zip(split.sources, split.src):
        assert other.decode(ids.tolist()) == source
    # ...and differs from the teacher's tokenization: ids are not carried across vocabularies
    assert any(len(a) != len(b) for a, b in zip(split.src, train.src[:20]))


def _train_spm(texts: list[str], vocab: int, tmp: Path) -> bytes:
    import io

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab, model_type="unigram",
        character_coverage=1.0, pad_id=PAD, unk_id=1, bos_id=2, eos_id=EOS, num_threads=1, minloglevel=2,
    )  # fmt: skip
    return buf.getvalue()


# --- seq_kd -----------------------------------------------------------------------------------------


def test_seq_inter_picks_the_hypothesis_closest_to_the_reference():
    nbest = [
        [(-0.1, "the man went to the city"), (-0.5, "he went into the city of david"), (-0.9, "a dog")],
        [(-0.2, "light was made"), (-0.3, "let there be light")],
        [(-0.4, "same"), (-0.6, "same")],
    ]
    refs = ["and he went into the city of david", "let there be light", "same"]
    assert select_hypotheses(nbest, refs, "top") == ["the man went to the city", "light was made", "same"]
    assert select_hypotheses(nbest, refs, "inter") == ["he went into the city of david", "let there be light", "same"]


@pytest.mark.parametrize("fast", [True, False])
def test_sentence_bleu_gives_sacrebleus_sentence_scores(fast):
    # Selection's scorer must give exactly sacrebleu.sentence_bleu's numbers (else seq-inter picks other targets):
    # a broken reference cache, smoothing or effective order changes some of these.
    ref = "Au commencement, Dieu créa les cieux et la terre."
    hyps = [
        "Au commencement, Dieu créa les cieux et la terre.",
        "Au commencement Dieu créa le ciel et la terre.",
        "Dieu créa",
        "",
        "la terre la terre la terre la terre",
        "Et Dieu dit: Que la lumière soit! Et la lumière fut.",
        "commencement",
    ]
    scorer = SentenceBleu()
    scorer.fast = fast
    want = [sacrebleu.sentence_bleu(h, [ref]).score for h in hyps]
    assert scorer.scores(hyps, ref) == want
    assert len(set(want)) == len(want)  # all distinct: each hypothesis is really scored
    # each reference is its own: scoring against another one after this one must not reuse it
    other = "Et Dieu dit: Que la lumière soit! Et la lumière fut."
    assert scorer.scores(hyps, other) == [sacrebleu.sentence_bleu(h, [other]).score for h in hyps]


def test_seq_kd_term_is_the_cross_entropy_on_pseudo_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    tgt_out = torch.tensor([[4, 2, EOS], [4, EOS, PAD]])
    batch = Batch([0, 1], torch.tensor([[4, EOS], [4, EOS]]), torch.zeros(2, 3, dtype=torch.long), tgt_out)
    logp = torch.log_softmax(logits, -1)
    tokens = [(b, t) for b in range(2) for t in range(3) if tgt_out[b, t] != PAD]
    for s in (0.0, 0.1):
        # (1 - s) * NLL + s * mean over the vocabulary of -log p, averaged over the 5 real tokens
        hand = sum((1 - s) * -logp[b, t, tgt_out[b, t]] - s * logp[b, t].mean() for b, t in tokens) / len(tokens)
        plugin = create(LossTerm(name="seq_kd", params={"smoothing": s}))
        torch.testing.assert_close(plugin(Seq2SeqOutput(logits), None, batch), hand)
        torch.testing.assert_close(token_cross_entropy(logits, tgt_out, s), hand)
    # padding is ignored: changing the logits under PAD changes nothing
    changed = logits.clone()
    changed[1, 2] += 100.0
    torch.testing.assert_close(token_cross_entropy(changed, tgt_out), token_cross_entropy(logits, tgt_out))


def test_seq_kd_params_are_checked():
    bad = [
        ({"select": "best"}, "select"),
        ({"select": "inter", "beam_size": 2, "n_best": 4}, "n_best"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"max_sentences": 0}, "max_sentences"),
    ]
    for params, match in bad:
        with pytest.raises(MgkdError, match=match):
            create(LossTerm(name="seq_kd", params=params))
    assert create(LossTerm(name="seq_kd")).n_best == 1  # "top" decodes one hypothesis


def _ctx(data, teacher, tmp_path: Path, events=None, sha: str = "e" * 64) -> GenerationViewContext:
    # An untrained teacher rarely ends a sentence: outputs of at most 4 tokens keep decoding quick.
    eval_cfg = tiny_config(tmp_path).eval.model_copy(update={"max_len_a": 0.0})
    return GenerationViewContext(teacher, sha, data, eval_cfg, tmp_path / "teacher", torch.device("cpu"), 1,
                                 events or (lambda _: None))  # fmt: skip


def test_seq_kd_view_is_aligned_with_the_training_split(tiny_data, tiny_teacher, tmp_path):
    train = tiny_data.splits["train"]
    view = SequenceKD(beam_size=1).build_view(_ctx(tiny_data, tiny_teacher, tmp_path))
    assert view.aligned and view.split.ids == train.ids and view.split.sources == train.sources
    assert all(np.array_equal(a, b) for a, b in zip(view.split.src, train.src))
    assert view.artifact.is_file() and view.artifact.parent == tmp_path / "teacher"
    assert view.metrics["seq_kd_cached"] == 0.0 and view.metrics["seq_kd_sentences"] == len(train)
    batch = collate(view.split, [0, 5])  # the trainer collates the gold batch's indices
    assert batch.src.tolist() == collate(train, [0, 5]).src.tolist()
    again = SequenceKD(beam_size=1).build_view(_ctx(tiny_data, tiny_teacher, tmp_path))
    assert again.metrics["seq_kd_cached"] == 1.0 and again.split.targets == view.split.targets


def test_seq_kd_inter_and_a_capped_view(tiny_data, tiny_teacher, tmp_path):
    plugin = SequenceKD(beam_size=3, select="inter", n_best=3, max_sentences=40)
    view = plugin.build_view(_ctx(tiny_data, tiny_teacher, tmp_path))
    # a subset of the training sources is its own stream of batches at the gold budget
    assert not view.aligned and view.token_ratio == 1.0 and len(view.split) == 40
    assert set(view.split.ids) <= set(tiny_data.splits["train"].ids)
    rows = view.artifact.read_text(encoding="utf-8").splitlines()[1:]
    assert max(int(r.split("\t")[1]) for r in rows) == 2  # the n-best is stored, ranks 0..2
    assert "seq_kd_pseudo_bleu" in view.metrics


# --- pseudo_label: noise ----------------------------------------------------------------------------


def _long_batch(rows: int = 300, width: int = 60) -> Batch:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(width // 2, width, (rows,), generator=g)
    # distinct tokens per row, so moved tokens can be told apart
    src = [np.arange(10, 10 + int(n), dtype=np.int32) for n in lengths]
    return Batch(list(range(rows)), pad_sources(src), torch.zeros(rows, 2, dtype=torch.long),
                 torch.zeros(rows, 2, dtype=torch.long))  # fmt: skip


def _tokens(src: torch.Tensor) -> list[list[int]]:
    out = []
    for row in src.tolist():
        n = row.index(EOS)
        assert all(t == PAD for t in row[n + 1 :])  # EOS, then only padding
        assert EOS not in row[:n] and PAD not in row[:n]
        out.append(row[:n])
    return out


def test_token_dropout_rate_and_determinism():
    batch = _long_batch()
    noise = SourceNoise(dropout=0.2, swap=0.0)
    out = noise(batch, torch.Generator().manual_seed(5))
    before, after = _tokens(batch.src), _tokens(out.src)
    kept = sum(len(a) for a in after) / sum(len(b) for b in before)
    assert 1 - kept == pytest.approx(0.2, abs=0.015)
    assert all(a == [t for t in b if t in set(a)] for a, b in zip(after, before))  # order kept
    assert out.src.size(1) == max(len(a) for a in after) + 1  # re-padded to the longest
    assert torch.equal(out.src, noise(batch, torch.Generator().manual_seed(5)).src)
    assert not torch.equal(out.src, noise(batch, torch.Generator().manual_seed(6)).src)
    assert out.tgt_out is batch.tgt_out and out.indices == batch.indices  # targets untouched


def test_token_swap_rate_and_zero_rates_are_identity():
    batch = _long_batch()
    p = 0.1
    out = SourceNoise(dropout=0.0, swap=p)(batch, torch.Generator().manual_seed(7))
    swaps = decisions = 0
    for a, b in zip(_tokens(out.src), _tokens(batch.src)):
        assert sorted(a) == b and len(a) == len(b)
        i = 0
        while i < len(b) - 1:  # replay the left-to-right scan
            decisions += 1
            if a[i] != b[i]:
                assert (a[i], a[i + 1]) == (b[i + 1], b[i])  # only adjacent swaps
                swaps += 1
                i += 2
            else:
                i += 1
    assert swaps / decisions == pytest.approx(p, abs=0.012)
    same = SourceNoise(0.0, 0.0)(batch, torch.Generator().manual_seed(7))
    assert torch.equal(same.src, batch.src)


# --- pseudo_label: sources ---------------------------------------------------------------------------


def test_file_source_drops_valid_and_test_sentences(tiny_data, tmp_path):
    test_src, valid_src = tiny_data.splits["test"].sources[0], tiny_data.splits["valid"].sources[0]
    long_line = "And he said to them, Go. And they went out; and the whole herd rushed down the steep bank into " \
        "the sea, and they perished in the water. Then all was quiet."  # fmt: skip
    lines = ["In the beginning was the Word.", "", f"  {test_src.upper()}  ", valid_src, long_line,
             "In the beginning was the Word.", tiny_data.splits["train"].sources[0]]  # fmt: skip
    path = tmp_path / "mono.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sentences, counts = read_sources(str(path), tiny_data, max_words=20, max_sentences=None)
    texts = [s.text for s in sentences]
    assert texts[0] == "In the beginning was the Word." and sentences[0].id == "line:1"
    assert counts["leak_dropped"] == 2 and counts["duplicate_dropped"] == 1 and counts["parallel_dropped"] == 1
    held = {normalized(t) for n in ("valid", "test") for t in tiny_data.splits[n].sources}
    assert not held & {normalized(t) for t in texts}
    # the long line is cut into clauses of at most 20 words
    assert [s.id for s in sentences[1:]] == ["line:5#0", "line:5#1", "line:5#2"]
    assert texts[1] == "And he said to them, Go. And they went out;" and texts[3] == "Then all was quiet."
    assert all(len(t.split()) <= 20 for t in texts)
    assert fit_length(long_line, 20) == texts[1:]


@pytest.mark.parametrize(
    "content,match",
    [(None, "does not exist"), (b"\n  \n", "is empty"), (b"caf\xe9 au lait\n", "not UTF-8")],
)
def test_bad_file_source_is_a_config_error(tmp_path, content, match):
    path = tmp_path / "mono.txt"
    if content is not None:
        path.write_bytes(content)
    plugin = PseudoLabel(source=str(path))
    # The plugin names the text it reads; the schedule checks it, and the message names the param.
    assert plugin.unlabeled_sources() == {"loss 'pseudo_label' params.source": str(path)}
    # ...and the schedule refuses it while the config is checked, before anything trains
    cfg = tiny_config(
        tmp_path, "generations.count=2",
        f"generations.per_generation.2.losses=[{{name: pseudo_label, params: {{source: '{path}'}}}}]",
    )  # fmt: skip
    with pytest.raises(MgkdError, match=f"generation 2: loss 'pseudo_label' params.source .*{match}"):
        build_schedule(cfg)


def test_builtin_sources_heldout_and_another_version(tiny_data):
    used = {i for s in tiny_data.splits.values() for i in s.ids}
    valid_test = set(tiny_data.splits["valid"].ids) | set(tiny_data.splits["test"].ids)
    held = {normalized(t) for n in ("valid", "test") for t in tiny_data.splits[n].sources}

    heldout, counts = read_sources("builtin:heldout", tiny_data, max_words=20, max_sentences=500)
    assert len(heldout) == 500 and counts["read"] > 20_000  # WEB verses outside the 800 pairs
    assert not {s.id.split("#")[0] for s in heldout} & used
    assert all(s.id.startswith("bible:") and len(s.text.split()) <= 20 for s in heldout)
    assert not held & {normalized(s.text) for s in heldout}
    again, _ = read_sources("builtin:heldout", tiny_data, max_words=20, max_sentences=500)
    assert again == heldout  # a stable choice

    kjv, _ = read_sources("builtin:k", tiny_data, max_words=20, max_sentences=300)
    assert len(kjv) == 300 and all(s.id.startswith("k:bible:") for s in kjv)
    assert not {s.id.split("#")[0].removeprefix("k:") for s in kjv} & valid_test  # no test verse, reworded
    assert not held & {normalized(s.text) for s in kjv}
    assert any("LORD" in s.text or "thee" in s.text.split() for s in kjv)  # it is the King James text
    [(param, source)] = PseudoLabel(source="builtin:zz").unlabeled_sources().items()  # what the schedule checks
    with pytest.raises(MgkdError, match="params.source 'builtin:zz': bible.db has no version 'zz'"):
        check_source(source, param)


def test_pseudo_label_view_respects_the_token_ratio(tiny_data, tiny_teacher, tmp_path):
    events: list[dict] = []
    plugin = PseudoLabel(source="builtin:heldout", max_sentences=120, ratio=0.25, max_words=15)
    view = plugin.build_view(_ctx(tiny_data, tiny_teacher, tmp_path, events.append))
    assert not view.aligned and view.token_ratio == 0.25 and view.noise == SourceNoise(0.1, 0.1)
    assert 0 < len(view.split) <= 120 and view.artifact.is_file()
    assert view.metrics["pseudo_label_cached"] == 0.0 and events[-1]["split"] == "pseudo"
    max_tokens = 2048
    batches = cycle_batches(TRANSLATION, view, max_tokens, seed=1)
    for _ in range(60):  # a few passes over the view
        b = next(batches)
        padded = max(b.src.size(1), b.tgt_out.size(1)) * len(b.indices)
        assert padded <= 0.25 * max_tokens or len(b.indices) == 1
    quiet = PseudoLabel(source="builtin:heldout", max_sentences=120, token_dropout=0, token_swap=0, max_words=15)
    assert quiet.build_view(_ctx(tiny_data, tiny_teacher, tmp_path)).noise is None
