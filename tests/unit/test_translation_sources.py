"""Translation data of one's own: Hugging Face datasets (local cache, save_to_disk), fixed and named test
sets, train/test overlap, comparable scores; and the bad input of each, refused before anything trains."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from datasets.data_files import DataFilesDict
from datasets.packaged_modules.parquet.parquet import Parquet
from typer.testing import CliRunner

from mgkd.cli import app
from mgkd.config import build_config, validate
from mgkd.errors import MgkdError
from mgkd.tasks.translation import prepare
from mgkd.tasks.translation.corpus import read_corpus
from mgkd.tasks.translation.eval_sets import Scoring, default_bleu_tokenize

OWN = Path(__file__).resolve().parents[1] / "data" / "own_corpus"
# The shipped sample: 1,500 train pairs, 40 valid (Romans), 40 test (1 Corinthians), 30 Psalms.
TRAIN, VALID, TEST = OWN / "train.tsv", OWN / "valid.tsv", OWN / "test.tsv"
SMALL = ["tokenizer.vocab_size=300", "corpus.max_words=null"]


def tsv_pairs(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text(encoding="utf-8").splitlines()]


def cfg_of(tmp_path: Path, *overrides: str):
    return build_config(overrides=[f"output_dir={tmp_path / 'out'}", "corpus.kind=tsv", f"corpus.path={TRAIN}",
                                   *SMALL, *overrides])  # fmt: skip


def translation_rows(pairs: list[tuple[str, str]]) -> dict:
    """The Hub's translation datasets' shape (wmt14, opus_books, ...): one `translation` dict per row."""
    return {"translation": [{"en": s, "fr": t} for s, t in pairs]}


# --- Hugging Face datasets ---------------------------------------------------


def test_save_to_disk_folder_with_two_columns_or_the_translation_column(tmp_path):
    pairs = tsv_pairs(TRAIN)[:200]
    plain = tmp_path / "plain"
    datasets.Dataset.from_dict({"english": [s for s, _ in pairs], "french": [t for _, t in pairs]}).save_to_disk(plain)
    cfg = cfg_of(tmp_path, "corpus.kind=hf", f"corpus.path={plain}",
                 "corpus.source_column=english", "corpus.target_column=french")  # fmt: skip
    got = read_corpus(cfg.corpus)
    assert [(p.source, p.target) for p in got] == pairs

    hub = tmp_path / "hub_shape"
    shards = {"train": pairs[:150], "extra": pairs[150:]}
    datasets.DatasetDict({k: datasets.Dataset.from_dict(translation_rows(v)) for k, v in shards.items()}).save_to_disk(
        hub
    )
    cfg = cfg_of(tmp_path, "corpus.kind=hf", f"corpus.path={hub}", "corpus.source_lang=en", "corpus.target_lang=fr",
                 "corpus.hf_split=[train, extra]")  # fmt: skip
    got = read_corpus(cfg.corpus)
    assert [(p.source, p.target) for p in got] == pairs  # both splits, in the order given
    assert len({p.id for p in got}) == len(pairs)
    # The other direction is the same dataset read with the codes swapped.
    back = read_corpus(cfg.corpus.model_copy(update={"source_lang": "fr", "target_lang": "en"}))
    assert [(p.target, p.source) for p in back] == pairs


def put_in_cache(cache: Path, name: str, config: str, splits: dict[str, list[tuple[str, str]]]) -> None:
    """What `datasets.load_dataset(name, config)` leaves in its cache when it reads a Hub translation dataset:
    <cache>/<namespace>___<name>/<config>/<version>/<hash>/ with the Arrow files and dataset_info.json. Built
    here with datasets' own Parquet builder from local files (no network), then moved under the config's name."""
    files = cache.parent / f"{name.replace('/', '_')}-files"
    files.mkdir(parents=True)
    for split, pairs in splits.items():
        datasets.Dataset.from_dict(translation_rows(pairs)).to_parquet(str(files / f"{split}.parquet"))
    data_files = DataFilesDict.from_patterns({s: [f"{s}.parquet"] for s in splits}, base_path=str(files))
    short = name.split("/")[-1]
    Parquet(cache_dir=str(cache), dataset_name=short, config_name=config, data_files=data_files,
            hash="0123abcd").download_and_prepare()  # fmt: skip
    built = next((cache / short).glob(f"{config}-*"))  # the builder names its config by its data files
    target = cache / name.replace("/", "___") / config
    target.parent.mkdir(parents=True, exist_ok=True)
    built.rename(target)


def test_hf_name_is_resolved_offline_from_a_local_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import: the variable alone is late
    train, test = tsv_pairs(TRAIN)[:300], tsv_pairs(TEST)
    cache = tmp_path / "hf-cache"
    put_in_cache(cache, "someone/toy_bible", "en-fr", {"train": train, "test": test})

    # datasets itself, offline, finds it there by name: the folder is what a real cache holds.
    own = datasets.load_dataset("someone/toy_bible", "en-fr", split="test", cache_dir=str(cache))
    assert own["translation"][0] == {"en": test[0][0], "fr": test[0][1]}

    langs = ["corpus.source_lang=en", "corpus.target_lang=fr"]
    cfg = cfg_of(tmp_path, "corpus.kind=hf", "corpus.path=null", "corpus.name=someone/toy_bible/en-fr",
                 f"corpus.hf_cache_dir={cache}", *langs, "eval.test_sets={wmt_like: {split: test}}")  # fmt: skip
    data = prepare(cfg)
    # The corpus is the train split; valid is carved from it, test is the dataset's own test split.
    assert len(data.splits["train"]) + len(data.splits["valid"]) + data.counts["train_test_overlap"] == len(train)
    assert set(data.splits["train"].sources) <= {s for s, _ in train}
    assert data.splits["test/wmt_like"].targets == [t for _, t in test]
    assert data.splits["test"].ids == data.splits["test/wmt_like"].ids  # the first named set is the test split

    # NAME/CONFIG without a namespace, and HF_DATASETS_CACHE instead of corpus.hf_cache_dir.
    put_in_cache(tmp_path / "other-cache", "toy_bible", "en-fr", {"train": train})
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "other-cache"))
    cfg = cfg_of(tmp_path, "corpus.kind=hf", "corpus.path=null", "corpus.name=toy_bible/en-fr", "corpus.source_lang=en",
                 "corpus.target_lang=fr")  # fmt: skip
    assert [(p.source, p.target) for p in read_corpus(cfg.corpus)] == train


def test_hf_errors_name_the_fix(tmp_path):
    cache = tmp_path / "hf-cache"
    put_in_cache(cache, "toy_bible", "en-fr", {"train": tsv_pairs(TRAIN)[:20]})
    base = ["corpus.kind=hf", "corpus.path=null", f"corpus.hf_cache_dir={cache}", "corpus.source_lang=en",
            "corpus.target_lang=fr"]  # fmt: skip

    with pytest.raises(MgkdError) as e:  # not in the cache: how to put it there, or use save_to_disk
        read_corpus(cfg_of(tmp_path, *base, "corpus.name=wmt/wmt14/de-en").corpus)
    assert "not in the local datasets cache" in str(e.value) and "load_dataset('wmt/wmt14', 'de-en')" in str(e.value)
    assert "save_to_disk" in str(e.value)
    with pytest.raises(MgkdError, match="Available configs in the cache: \\['en-fr'\\]"):  # a config it lacks
        read_corpus(cfg_of(tmp_path, *base, "corpus.name=toy_bible/de-en").corpus)
    with pytest.raises(MgkdError, match="has no language 'de' .*corpus.target_lang.*codes present are en, fr"):
        read_corpus(cfg_of(tmp_path, *base, "corpus.name=toy_bible/en-fr", "corpus.target_lang=de").corpus)
    with pytest.raises(MgkdError, match="has splits train, not 'validation'"):
        read_corpus(cfg_of(tmp_path, *base, "corpus.name=toy_bible/en-fr", "corpus.hf_split=validation").corpus)
    with pytest.raises(MgkdError, match="not a dataset folder written by save_to_disk"):
        read_corpus(cfg_of(tmp_path, *base, f"corpus.path={tmp_path}", "corpus.hf_cache_dir=null").corpus)
    with pytest.raises(MgkdError, match="needs corpus.name .* or corpus.path"):
        cfg_of(tmp_path, *base)
    with pytest.raises(MgkdError, match="set corpus.source_lang and corpus.target_lang"):
        cfg_of(tmp_path, "corpus.kind=hf", "corpus.path=null", "corpus.name=toy_bible")


# --- fixed and named test sets -------------------------------------------------


def test_fixed_sets_replace_the_hash_split_and_named_sets_keep_their_own_data(tmp_path):
    psalms = {"source_path": str(OWN / "psalms.en"), "target_path": str(OWN / "psalms.fr")}
    cfg = cfg_of(tmp_path, f"split.valid={VALID}", f"split.test={TEST}",
                 f"eval.test_sets={{psalms: {psalms}, cor: {TEST}}}")  # fmt: skip
    data = prepare(cfg)
    assert list(data.splits) == ["train", "valid", "test", "test/psalms", "test/cor"]
    assert len(data.splits["train"]) == 1500  # nothing carved from the corpus: valid and test are fixed
    assert data.splits["valid"].targets == [t for _, t in tsv_pairs(VALID)]
    assert data.splits["test/psalms"].sources == (OWN / "psalms.en").read_text(encoding="utf-8").splitlines()
    assert data.splits["test/cor"].targets == data.splits["test"].targets
    summary = data.summary()
    assert summary["test_pairs/psalms"] == 30 and summary["test_pairs"] == 40 and summary["valid_pairs"] == 40
    assert (data.cache_dir / "test" / "psalms.jsonl").is_file()

    # Only a test set fixed: valid is still carved from the corpus by hash; test is not.
    data = prepare(cfg_of(tmp_path, f"split.test={TEST}"))
    assert 0 < len(data.splits["valid"]) and len(data.splits["train"]) + len(data.splits["valid"]) == 1500


def test_overlap_with_train_is_counted_and_removed(tmp_path):
    train = tsv_pairs(TRAIN)
    # Three test sources that are in train, differently spaced and cased; two that are not.
    test = [(f"  {train[3][0].upper()} ", "x"), (train[10][0].replace(" ", "  "), "y"), (train[20][0], "z"),
            *tsv_pairs(TEST)[:2]]  # fmt: skip
    tsv = tmp_path / "test.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in test), encoding="utf-8")
    data = prepare(cfg_of(tmp_path, f"split.valid={VALID}", f"eval.test_sets={{mine: {tsv}}}"))
    assert data.counts == {"train_valid_overlap": 0, "train_test_overlap": 3}
    assert len(data.splits["train"]) == 1497
    assert train[3][0] not in data.splits["train"].sources and train[4][0] in data.splits["train"].sources
    assert data.summary()["train_test_overlap"] == 3

    kept = prepare(cfg_of(tmp_path, f"split.valid={VALID}", f"eval.test_sets={{mine: {tsv}}}",
                          "split.dedupe_against_eval=false"))  # fmt: skip
    assert kept.counts["train_test_overlap"] == 3 and len(kept.splits["train"]) == 1500


def test_test_set_bad_input_is_one_clear_error(tmp_path):
    def refused(*overrides: str) -> str:
        with pytest.raises(MgkdError) as e:
            prepare(cfg_of(tmp_path, *overrides))
        return str(e.value)

    no_tab = tmp_path / "no_tab.tsv"
    no_tab.write_text("a b\tc d\njust one side\n", encoding="utf-8")
    assert f"{no_tab}:2: no tab" in refused(f"eval.test_sets={{news: {no_tab}}}")
    src, tgt = tmp_path / "a.en", tmp_path / "a.fr"
    src.write_text("one\ntwo\nthree\n", encoding="utf-8")
    tgt.write_text("un\ndeux\n", encoding="utf-8")
    assert "has 3 lines but" in refused(f"split.test={{source_path: {src}, target_path: {tgt}}}")
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n", encoding="utf-8")
    assert "empty" in refused(f"eval.test_sets={{blank: {empty}}}")
    assert "eval.test_sets.gone" in refused(f"eval.test_sets={{gone: {tmp_path / 'missing.tsv'}}}")

    # The same name twice: a YAML file would keep the last silently; a name that differs only in case is the
    # same file on some disks.
    yaml_file = tmp_path / "twice.yaml"
    yaml_file.write_text(f"eval:\n  test_sets:\n    news: {TEST}\n    news: {VALID}\n", encoding="utf-8")
    with pytest.raises(MgkdError, match="key 'news' is given twice"):
        build_config(config=yaml_file)
    with pytest.raises(MgkdError, match="'News' is used twice"):
        cfg_of(tmp_path, f"eval.test_sets={{news: {TEST}, News: {VALID}}}")
    with pytest.raises(MgkdError, match="test set name 'a/b'"):
        cfg_of(tmp_path, f"eval.test_sets={{a/b: {TEST}}}")
    with pytest.raises(MgkdError, match="a split of the corpus's hf dataset, but corpus.kind is 'tsv'"):
        cfg_of(tmp_path, "split.test={split: test}")


def _bad_input(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """The `mgkd run` arguments of one bad input, and what its message must say."""
    tsv = ["--set", "corpus.kind=tsv", "--set", f"corpus.path={TRAIN}"]
    bad = tmp_path / "bad.tsv"
    if case == "not_cached":
        hf = ["corpus.kind=hf", "corpus.path=null", "corpus.name=wmt/wmt14/de-en", f"corpus.hf_cache_dir={tmp_path}",
              "corpus.source_lang=en", "corpus.target_lang=de"]  # fmt: skip
        return [x for o in hf for x in ("--set", o)], "not in the local datasets cache"
    if case == "language":
        folder = tmp_path / "ds"
        datasets.Dataset.from_dict(translation_rows(tsv_pairs(TEST))).save_to_disk(folder)
        hf = ["corpus.kind=hf", f"corpus.path={folder}", "corpus.source_lang=en", "corpus.target_lang=de"]
        return [x for o in hf for x in ("--set", o)], "codes present are en, fr"
    if case == "no_tab":
        bad.write_text("a b\tc d\njust one side\n", encoding="utf-8")
        return [*tsv, "--set", f"eval.test_sets={{news: {bad}}}"], "bad.tsv:2: no tab"
    if case == "unequal":
        (tmp_path / "a.en").write_text("one\ntwo\n", encoding="utf-8")
        (tmp_path / "a.fr").write_text("un\n", encoding="utf-8")
        both = f"{{source_path: {tmp_path / 'a.en'}, target_path: {tmp_path / 'a.fr'}}}"
        return [*tsv, "--set", f"split.test={both}"], "has 2 lines but"
    if case == "twice":
        config = tmp_path / "twice.yaml"
        config.write_text(f"corpus: {{kind: tsv, path: {TRAIN}}}\neval:\n  test_sets:\n    news: {TEST}\n"
                          f"    news: {VALID}\n", encoding="utf-8")  # fmt: skip
        return ["--config", str(config)], "key 'news' is given twice"
    bad.write_text("\n", encoding="utf-8")
    return [*tsv, "--set", f"eval.test_sets={{news: {bad}}}"], "empty"


@pytest.mark.parametrize("case", ["not_cached", "language", "no_tab", "unequal", "twice", "empty"])
def test_bad_data_stops_the_cli_with_exit_2_before_training(tmp_path, case):
    args, message = _bad_input(tmp_path, case)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--no-ray", "--output-dir", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not list(out.glob("lineages/*"))  # nothing recorded, nothing trained


def test_config_file_paths_of_eval_sets_are_relative_to_the_file(tmp_path):
    cfg = build_config(config=Path(__file__).resolve().parents[2] / "configs" / "own_data.yaml")
    assert cfg.corpus.path == TRAIN and cfg.split.valid.path == VALID
    assert cfg.eval.test_sets["psalms"].source_path == OWN / "psalms.en"
    assert build_config(preset="own_data") == cfg  # the preset names the same files


# --- comparable scores -----------------------------------------------------------


def test_bleu_tokenizer_default_per_language_and_its_override(tmp_path):
    assert [default_bleu_tokenize(x) for x in ("zh", "zh-Hant", "ja", "ko", "de", "fr", None)] == [
        "zh", "zh", "char", "char", "13a", "13a", "13a"]  # fmt: skip
    zh = Scoring.of(cfg_of(tmp_path, "corpus.target_lang=zh"))
    assert "tok:zh" in zh.signatures["bleu"] and zh.tags()["mgkd.bleu_signature"] == zh.signatures["bleu"]
    assert Scoring.of(cfg_of(tmp_path, "corpus.target_lang=zh", "eval.bleu_tokenize=intl")).tokenize == "intl"
    assert Scoring.of(cfg_of(tmp_path)).tokenize == "13a"

    # The tokenizer matters: Chinese without spaces is one "word" a sentence to 13a, characters to zh.
    hyp, ref = ["我们今天去公园散步"], ["我们明天去公园散步"]
    assert zh.score(hyp, ref)["bleu"] > 30 > Scoring("13a").score(hyp, ref)["bleu"]
    plus = Scoring(word_order=2)
    assert "nw:2" in plus.signatures["chrf"] and "nw:0" in Scoring().signatures["chrf"]
    hyp, ref = ["the cat sat on a mat"], ["the cat sat on the mat"]
    assert plus.score(hyp, ref)["chrf"] != Scoring().score(hyp, ref)["chrf"]
    with pytest.raises(MgkdError, match="unknown BLEU tokenizer 'moses'; sacrebleu ships .*13a"):
        cfg_of(tmp_path, "eval.bleu_tokenize=moses")


# --- the length filters --------------------------------------------------------------


def test_a_length_filter_that_drops_over_a_quarter_of_a_user_corpus_says_so(tmp_path):
    logs: list[str] = []
    read_corpus(cfg_of(tmp_path, "corpus.max_words=8").corpus, logs.append)
    warning = next(line for line in logs if line.startswith("WARNING"))
    assert "corpus.max_words=8" in warning and "of 1500 pairs" in warning and "max_tokens_per_side" in warning
    logs.clear()
    read_corpus(cfg_of(tmp_path, "corpus.max_words=30").corpus, logs.append)
    assert not any(line.startswith("WARNING") for line in logs)  # a few dropped: said, not shouted


def test_token_length_filter_cuts_train_but_never_a_fixed_test_set(tmp_path):
    logs: list[str] = []
    data = prepare(cfg_of(tmp_path, "corpus.max_tokens_per_side=40", f"split.test={TEST}"), logs.append)
    for name in ("train", "valid"):  # the corpus and what is carved from it
        s = data.splits[name]
        assert all(len(a) <= 40 and len(b) <= 40 for a, b in zip(s.src, s.tgt))
    assert data.counts["train_over_max_tokens"] > 0
    assert len(data.splits["test"]) == 40 and max(len(a) for a in data.splits["test"].tgt) > 40
    assert any(line.startswith("WARNING") and "corpus.max_tokens_per_side=40" in line for line in logs)
    unfiltered = prepare(cfg_of(tmp_path, f"split.test={TEST}"))
    assert unfiltered.data_hash != data.data_hash


def test_validation_of_an_eval_set_source():
    with pytest.raises(MgkdError, match="give one of path"):
        validate({"split": {"test": {"path": "a.tsv", "source_path": "b", "target_path": "c"}}})
    with pytest.raises(MgkdError, match="needs split"):
        validate({"eval": {"test_sets": {"x": {"name": "wmt14/de-en"}}}})


def test_the_builtin_hash_split_keeps_its_repeated_verses_by_default(tiny_data):
    # The published demo numbers were measured on this split: its overlap is counted, not removed (unless
    # split.dedupe_against_eval is set true).
    assert sum(len(tiny_data.splits[k]) for k in ("train", "valid", "test")) == 800  # corpus.max_pairs, all kept
    assert set(tiny_data.counts) == {"train_valid_overlap", "train_test_overlap"}
