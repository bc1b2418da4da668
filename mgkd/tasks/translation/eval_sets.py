"""Fixed valid/test sets, named test sets, their overlap with train, and comparable scores.

A fixed set (split.valid, split.test, eval.test_sets) is read whole, as the
user gave it: no length filter and no cap, so its scores are comparable with
other systems' scores on the same set. Train pairs whose source also occurs in
an eval set (case and spacing aside) are counted, and removed from train when
split.dedupe_against_eval is on. Scores are sacrebleu's, with the signature
that says how they were computed (tokenizer, chrF word order, version).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from sacrebleu.metrics import BLEU, CHRF

from mgkd.config import CorpusConfig, EvalSetSource, ExperimentConfig
from mgkd.errors import MgkdError
from mgkd.files import write_atomic
from mgkd.tasks.translation.corpus import Pair, read_parallel, read_tsv

if TYPE_CHECKING:
    from mgkd.tasks.translation import PreparedData

# Named test sets live in PreparedData.splits as "test/<name>"; their metrics are test_bleu/<name>.
TEST_SET_PREFIX = "test/"


def normalized(text: str) -> str:
    """How sources are compared for train/eval overlap: case and spacing do not matter."""
    return " ".join(text.split()).casefold()


def read_eval_set(source: EvalSetSource, corpus: CorpusConfig, where: str) -> list[Pair]:
    """The pairs of one fixed set, ids prefixed by `where` so they never collide with the corpus's."""
    kind = source.kind
    if kind == "tsv":
        assert source.path is not None
        pairs = read_tsv(source.path, f"{where} file", where)
    elif kind == "parallel":
        assert source.source_path is not None and source.target_path is not None
        pairs = read_parallel(source.source_path, source.target_path, where)
    else:
        from mgkd.tasks.translation.hf_corpus import read_hf_split  # `datasets` is imported only for hf sets

        if source.kind == "hf_disk":
            pairs = read_hf_split(corpus, source.split or "test", where, path=source.path)
        elif source.kind == "hf_cache":
            assert source.split is not None
            pairs = read_hf_split(corpus, source.split, where, name=source.name)
        else:
            assert source.split is not None
            pairs = read_hf_split(corpus, source.split, where)
    pairs = [Pair(f"{where}:{p.id}", p.source, p.target) for p in pairs if p.source.strip() or p.target.strip()]
    if not pairs:
        raise MgkdError(f"{where} is empty: it holds no sentence pair; give a set with at least one")
    half = [p.id for p in pairs if not (p.source.strip() and p.target.strip())]
    if half:
        raise MgkdError(
            f"{where}: {len(half)} pair(s) have an empty side, the first is {half[0]}; an eval set needs a source "
            "and a reference on every line"
        )
    return pairs


def fixed_sets(cfg: ExperimentConfig) -> dict[str, list[Pair]]:
    """Every fixed eval set of the config, by split name: valid, test and test/<name>; in that order."""
    out: dict[str, list[Pair]] = {}
    if cfg.split.valid is not None:
        out["valid"] = read_eval_set(cfg.split.valid, cfg.corpus, "split.valid")
    if cfg.split.test is not None:
        out["test"] = read_eval_set(cfg.split.test, cfg.corpus, "split.test")
    for name, source in cfg.eval.test_sets.items():
        out[TEST_SET_PREFIX + name] = read_eval_set(source, cfg.corpus, f"eval.test_sets.{name}")
    return out


def test_set_names(splits: dict[str, object]) -> list[str]:
    """The named test sets among prepared splits, in config order."""
    return [k[len(TEST_SET_PREFIX) :] for k in splits if k.startswith(TEST_SET_PREFIX)]


def remove_overlap(train: list[Pair], evals: dict[str, list[Pair]], dedupe: bool) -> tuple[list[Pair], dict[str, int]]:
    """Train pairs whose source is also an eval set's source: counted, and dropped when `dedupe`.

    Counts: train_valid_overlap (sources of valid), train_test_overlap (of test or any named test set).
    """
    valid = {normalized(p.source) for name, ps in evals.items() if name == "valid" for p in ps}
    test = {normalized(p.source) for name, ps in evals.items() if name != "valid" for p in ps}
    counts = {"train_valid_overlap": 0, "train_test_overlap": 0}
    kept = []
    for p in train:
        key = normalized(p.source)
        counts["train_valid_overlap"] += key in valid
        counts["train_test_overlap"] += key in test
        if not (dedupe and (key in valid or key in test)):
            kept.append(p)
    return kept, counts


# --- comparable scores -------------------------------------------------------


def default_bleu_tokenize(target_lang: str | None) -> str:
    """sacrebleu's tokenizer for a target language: zh for Chinese, char for Japanese and Korean, else 13a."""
    lang = (target_lang or "").lower().replace("_", "-").split("-")[0]
    return {"zh": "zh", "ja": "char", "ko": "char"}.get(lang, "13a")


@dataclass(frozen=True)
class Scoring:
    """How translations are scored: sacrebleu BLEU with `tokenize`, chrF with `word_order` (2: chrF++)."""

    tokenize: str = "13a"
    word_order: int = 0

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> Scoring:
        """The config's scoring: eval.bleu_tokenize if set, else the target language's default."""
        tokenize = cfg.eval.bleu_tokenize or default_bleu_tokenize(cfg.corpus.target_lang)
        scoring = cls(tokenize, cfg.eval.chrf_word_order)
        try:
            scoring.signatures  # noqa: B018 - builds the tokenizer now: a missing dependency stops the run here
        except (ImportError, RuntimeError, OSError) as e:
            raise MgkdError(
                f"the BLEU tokenizer {tokenize!r} cannot be used here ({str(e).splitlines()[0][:200]}); install "
                "what it needs (ja-mecab/ko-mecab: pip install 'sacrebleu[ja]' / 'sacrebleu[ko]') or set "
                "eval.bleu_tokenize to another one (13a, intl, char)"
            ) from None
        return scoring

    def score(self, hypotheses: list[str], references: list[str]) -> dict[str, float]:
        """Corpus BLEU and chrF of detokenized hypotheses against one reference each."""
        return {
            "bleu": float(BLEU(tokenize=self.tokenize).corpus_score(hypotheses, [references]).score),
            "chrf": float(CHRF(word_order=self.word_order).corpus_score(hypotheses, [references]).score),
        }

    @cached_property
    def signatures(self) -> dict[str, str]:
        """sacrebleu's signatures, e.g. nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0."""
        # A signature exists once a metric has scored (it records the number of references): score one line.
        bleu, chrf = BLEU(tokenize=self.tokenize), CHRF(word_order=self.word_order)
        bleu.corpus_score(["a"], [["a"]])
        chrf.corpus_score(["a"], [["a"]])
        return {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}

    def tags(self) -> dict[str, str]:
        """The signatures as MLflow tags (each run of a lineage carries them)."""
        return {"mgkd.bleu_signature": self.signatures["bleu"], "mgkd.chrf_signature": self.signatures["chrf"]}


def language_tags(corpus: CorpusConfig) -> dict[str, str]:
    """corpus.source_lang / target_lang as tags, where set."""
    tags = {"mgkd.source_lang": corpus.source_lang, "mgkd.target_lang": corpus.target_lang}
    return {k: v for k, v in tags.items() if v}


# --- scoring a model on every test set -------------------------------------------


@dataclass
class HeldOutScores:
    """A model's scores on the test split and every named test set, and where its translations are."""

    # test_bleu, test_chrf; test_bleu/<name>, test_chrf/<name> for each named set.
    metrics: dict[str, float]
    hypotheses: list[str]  # of the test split, in its order
    sentences_per_s: float  # decode speed on the test split
    translations: Path  # test_translations.tsv; the named sets' are in test_sets/<name>.tsv beside it


def write_translations(path: Path, ids: list[str], sources: list[str], references: list[str],
                       hypotheses: list[str]) -> Path:  # fmt: skip
    """One TSV row per sentence: id, source, reference, hypothesis (tabs inside a text become spaces)."""
    rows = ["id\tsource\treference\thypothesis"] + [
        "\t".join(x.replace("\t", " ") for x in row) for row in zip(ids, sources, references, hypotheses)
    ]
    write_atomic(path, ("\n".join(rows) + "\n").encode("utf-8"))
    return path


Decode = Callable[[str], tuple[list[str], float]]


def score_test_sets(data: PreparedData, decode: Decode, out_dir: Path) -> HeldOutScores:
    """Decode and score the test split and each named test set with the data's scoring.

    `decode(split)` gives a split's detokenized outputs and sentences/second. A named set that is the test
    split itself (the first named set when split.test is not given) is decoded once.
    """
    out_dir = Path(out_dir)
    test = data.splits["test"]
    hyps, speed = decode("test")
    scores = data.scoring.score(hyps, test.targets)
    metrics = {"test_bleu": scores["bleu"], "test_chrf": scores["chrf"]}
    translations = write_translations(out_dir / "test_translations.tsv", test.ids, test.sources, test.targets, hyps)
    for name in test_set_names(data.splits):
        s = data.splits[TEST_SET_PREFIX + name]
        named = hyps if s.digest == test.digest else decode(TEST_SET_PREFIX + name)[0]
        scores = data.scoring.score(named, s.targets)
        metrics[f"test_bleu/{name}"], metrics[f"test_chrf/{name}"] = scores["bleu"], scores["chrf"]
        write_translations(out_dir / "test_sets" / f"{name}.tsv", s.ids, s.sources, s.targets, named)
    return HeldOutScores(metrics, hyps, speed, translations)
