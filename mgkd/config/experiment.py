"""`ExperimentConfig`: every section of one runnable experiment, and the checks that span sections."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator

from mgkd.config.base import StrictModel, format_validation_error
from mgkd.config.data import ClassificationDataConfig, CorpusConfig, EvalConfig, SplitConfig, TokenizerConfig
from mgkd.config.generations import GenerationsConfig
from mgkd.config.model import ModelConfig
from mgkd.config.runtime import RayConfig, TrackingConfig
from mgkd.config.train import TrainConfig


class ExperimentConfig(StrictModel):
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
    def _eval_sets_fit_corpus(self) -> ExperimentConfig:
        sets = {"split.valid": self.split.valid, "split.test": self.split.test}
        sets.update({f"eval.test_sets.{k}": v for k, v in self.eval.test_sets.items()})
        for where, src in sets.items():
            if src is None:
                continue
            if self.task != "translation":
                raise ValueError(f"{where} is a translation set; task {self.task!r} makes its own splits")
            if src.kind == "corpus_split" and self.corpus.kind != "hf":
                raise ValueError(
                    f"{where}: split {src.split!r} alone means a split of the corpus's hf dataset, but corpus.kind "
                    f"is {self.corpus.kind!r}; give a path, source_path + target_path, or name + split"
                )
        return self

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
