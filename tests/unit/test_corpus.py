from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgkd.cli import app
from mgkd.config import CorpusConfig, SplitConfig
from mgkd.errors import MgkdError
from mgkd.tasks.translation import batch_indices, collate, split_pairs
from mgkd.tasks.translation.corpus import Pair, bible_db_path, clean_verse, read_corpus


def test_builtin_corpus_is_web_to_segond_aligned_by_verse():
    pairs = read_corpus(CorpusConfig(max_words=None))
    assert bible_db_path().name == "bible.db"
    assert len(pairs) > 30_000
    by_id = {p.id: p for p in pairs}
    gen = by_id["bible:1.1.1"]  # Genesis 1:1
    assert gen.source == "In the beginning God created the heavens and the earth."
    assert gen.target == "Au commencement, Dieu créa les cieux et la terre."
    john = by_id["bible:43.3.16"]
    assert "one and only Son" in john.source and "Fils unique" in john.target
    # markup is gone: supplied-word brackets, backtick apostrophes, psalm verse numbers
    assert not any("[" in p.source or "`" in p.source or "(9:1)" in p.target for p in pairs)


def test_length_filter():
    pairs = read_corpus(CorpusConfig(max_words=8))
    assert pairs and all(len(p.source.split()) <= 8 and len(p.target.split()) <= 8 for p in pairs)


def test_out_of_range_pairs_are_counted_or_refused(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("a b\tc d\none two three four five\tun deux trois quatre cinq\ne f\tg h\n", encoding="utf-8")
    seen = []
    pairs = read_corpus(CorpusConfig(kind="tsv", path=tsv, max_words=3), seen.append)
    assert len(pairs) == 2 and seen[0] == "corpus: skipped 1 of 3 pairs outside 1..3 words"
    assert seen[1].startswith("WARNING: the length filter dropped 1 of 3 pairs (33%)")  # over a quarter: loud
    with pytest.raises(MgkdError, match=r"1 of 3 corpus pairs are outside .*the first is .*:2 \(5 / 5 words\)"):
        read_corpus(CorpusConfig(kind="tsv", path=tsv, max_words=3, out_of_range="error"))


def test_clean_verse():
    assert (
        clean_verse("(9:1) Au chef des chantres. Sur [Meurs pour le fils].")
        == "Au chef des chantres. Sur Meurs pour le fils."
    )
    assert clean_verse("the priest`s  [things]") == "the priest's things"


def test_split_is_a_function_of_the_id():
    pairs = [Pair(f"x:{i}", f"s{i}", f"t{i}") for i in range(2000)]
    cfg = SplitConfig(valid_fraction=0.1, test_fraction=0.1, max_valid=None, max_test=None)
    a = split_pairs(pairs, cfg)
    b = split_pairs(list(reversed(pairs[:1500])), cfg)  # other order, fewer pairs
    where_a = {p.id: name for name, ps in a.items() for p in ps}
    where_b = {p.id: name for name, ps in b.items() for p in ps}
    assert all(where_a[i] == where_b[i] for i in where_b)
    assert 150 < len(a["test"]) < 250 and 150 < len(a["valid"]) < 250
    assert not {p.id for p in a["test"]} & {p.id for p in a["train"]}


def test_split_caps_send_the_rest_to_train():
    pairs = [Pair(f"x:{i}", "s", "t") for i in range(1000)]
    out = split_pairs(pairs, SplitConfig(valid_fraction=0.2, test_fraction=0.2, max_valid=10, max_test=20))
    assert len(out["valid"]) == 10 and len(out["test"]) == 20 and len(out["train"]) == 970


def test_token_budget_batches_cover_every_example_once(tiny_data):
    train = tiny_data.splits["train"]
    batches = batch_indices(train, max_tokens=512, shuffle=True, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(train)))
    for idx in batches:
        b = collate(train, idx)
        assert b.src.numel() <= 512 and b.tgt_in.numel() <= 512
        # padding mask: tgt_out is PAD exactly where there is no target token
        lengths = [len(train.tgt[i]) + 1 for i in idx]
        assert (b.tgt_out != 0).sum(1).tolist() == lengths
    assert batch_indices(train, 512, True, seed=3) == batches  # deterministic


def test_tsv_and_parallel_corpora(tmp_path: Path):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("hello world\tbonjour le monde\n\nthank you\tmerci\n", encoding="utf-8")
    pairs = read_corpus(CorpusConfig(kind="tsv", path=tsv))
    assert [(p.source, p.target) for p in pairs] == [("hello world", "bonjour le monde"), ("thank you", "merci")]
    (tmp_path / "s.txt").write_text("a b\nc\n", encoding="utf-8")
    (tmp_path / "t.txt").write_text("x\ny z\n", encoding="utf-8")
    pairs = read_corpus(CorpusConfig(kind="parallel", source_path=tmp_path / "s.txt", target_path=tmp_path / "t.txt"))
    assert [(p.source, p.target) for p in pairs] == [("a b", "x"), ("c", "y z")]


def _corpus_error(tmp_path: Path, **kw) -> str:
    with pytest.raises(MgkdError) as e:
        read_corpus(CorpusConfig(**kw))
    return str(e.value)


def test_corpus_errors(tmp_path: Path):
    assert "does not exist" in _corpus_error(tmp_path, kind="tsv", path=tmp_path / "nope.tsv")
    (tmp_path / "notab.tsv").write_text("ok\tok\nno tab here\n", encoding="utf-8")
    assert "notab.tsv:2: no tab" in _corpus_error(tmp_path, kind="tsv", path=tmp_path / "notab.tsv")
    (tmp_path / "empty.tsv").write_text("\n\n", encoding="utf-8")
    assert "is empty" in _corpus_error(tmp_path, kind="tsv", path=tmp_path / "empty.tsv")
    (tmp_path / "latin1.tsv").write_bytes("caf\xe9\tcoffee\n".encode("latin-1"))
    assert "not UTF-8" in _corpus_error(tmp_path, kind="tsv", path=tmp_path / "latin1.tsv")
    (tmp_path / "s.txt").write_text("a\nb\nc\n", encoding="utf-8")
    (tmp_path / "t.txt").write_text("x\ny\n", encoding="utf-8")
    msg = _corpus_error(tmp_path, kind="parallel", source_path=tmp_path / "s.txt", target_path=tmp_path / "t.txt")
    assert "has 3 lines but" in msg and "has 2" in msg


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: (d / "c.tsv").write_text("one\ttwo\nthree four\n", encoding="utf-8"), "c.tsv:2: no tab"),
    ],
)
def test_cli_corpus_errors_exit_2(tmp_path: Path, setup, message):
    setup(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--no-ray",
            "--output-dir",
            str(out),
            "--set",
            "corpus.kind=tsv",
            "--set",
            f"corpus.path={tmp_path / 'c.tsv'}",
        ],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_cli_unequal_parallel_files_exit_2(tmp_path: Path):
    (tmp_path / "s.txt").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "t.txt").write_text("x\n", encoding="utf-8")
    result = CliRunner().invoke(
        app,
        ["run", "--no-ray", "--output-dir", str(tmp_path / "out"), "--set", "corpus.kind=parallel",
         "--set", f"corpus.source_path={tmp_path / 's.txt'}", "--set", f"corpus.target_path={tmp_path / 't.txt'}"],
    )  # fmt: skip
    assert result.exit_code == 2 and "has 2 lines but" in result.output
