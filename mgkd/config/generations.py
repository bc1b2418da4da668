"""The lineage: generation 0, the students, per-generation changes, the shrink schedule, matched controls."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from mgkd.config.base import StrictModel
from mgkd.config.model import ExternalTeacherConfig
from mgkd.config.runtime import SearchConfig
from mgkd.config.train import LossTerm


class GenerationOverride(StrictModel):
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


class ShrinkConfig(StrictModel):
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


class GenerationsConfig(StrictModel):
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
    # What "the same budget" holds a control to. steps: the generation's optimizer steps and epochs. batches:
    # the same number of training batches through the model: a student whose step reads N data views (gold and
    # seq-KD or pseudo-label batches) gets a control with N times the steps, epochs and warm-up, so the two
    # have about the same compute (its first epochs are the generation's batches, in the same order).
    control_budget: Literal["steps", "batches"] = "steps"

    @model_validator(mode="after")
    def _indices_in_range(self) -> GenerationsConfig:
        # Keys above `count` are generations this run does not reach (`mgkd run -g 2` on a 4-generation preset
        # runs its first two); below 1 there is no student.
        bad = [k for k in self.per_generation if k < 1]
        if bad:
            raise ValueError(
                f"generations.per_generation has keys {bad} below 1 "
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
