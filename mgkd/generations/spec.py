"""What one generation is, and the schedule that turns a config into generations."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mgkd.config import EvalConfig, ExperimentConfig, GenerationOverride, LossTerm, ModelConfig, TrainConfig
from mgkd.errors import MgkdError
from mgkd.losses import Criterion
from mgkd.models import check_arch


@dataclass(frozen=True)
class GenerationSpec:
    """Everything that decides how generation `index` is trained (plain values, picklable)."""

    index: int
    model: ModelConfig
    train: TrainConfig
    losses: list[LossTerm]
    eval: EvalConfig
    init: str  # "scratch" | "teacher"
    teacher_signal: str  # "online" | "cached"
    seed: int
    # k of the cached teacher signal (None: the largest top_k of the loss terms).
    teacher_cache_k: int | None = None

    @property
    def has_teacher(self) -> bool:
        return self.index > 0

    @property
    def cache_k(self) -> int:
        """The k the cached teacher signal stores: the configured one, else the largest term top_k."""
        return self.teacher_cache_k or max((p.teacher_needs.top_k for p in Criterion(self.losses).plugins), default=0)

    def as_params(self) -> dict[str, Any]:
        """Flat key -> value view for MLflow params."""
        flat: dict[str, Any] = {
            "generation": self.index,
            "init": self.init,
            "teacher_signal": self.teacher_signal,
            "seed": self.seed,
        }
        if self.teacher_signal == "cached":
            flat["teacher_cache_k"] = self.cache_k
        for section in ("model", "train", "eval"):
            for k, v in getattr(self, section).model_dump().items():
                flat[f"{section}.{k}"] = v
        for t in self.losses:
            flat[f"loss.{t.name}.weight"] = t.weight
            for k, v in t.params.items():
                flat[f"loss.{t.name}.{k}"] = v
        return flat

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"], d["train"], d["eval"] = (
            self.model.model_dump(),
            self.train.model_dump(mode="json"),
            self.eval.model_dump(),
        )
        d["losses"] = [t.model_dump() for t in self.losses]
        return d


def _apply(cfg: ExperimentConfig, base: GenerationSpec | None, ov: GenerationOverride, index: int) -> GenerationSpec:
    model = ModelConfig.model_validate({**(base.model if base else cfg.model).model_dump(), **ov.model})
    train = TrainConfig.model_validate({**(base.train if base else cfg.train).model_dump(), **ov.train})
    return GenerationSpec(
        index=index,
        model=model,
        train=train,
        losses=list(ov.losses if ov.losses is not None else (base.losses if base else [])),
        eval=cfg.eval,
        init=ov.init or (base.init if base else "scratch"),
        teacher_signal=ov.teacher_signal or (base.teacher_signal if base else "online"),
        seed=cfg.seed + index,
        teacher_cache_k=ov.teacher_cache_k or (base.teacher_cache_k if base else None),
    )


def build_schedule(cfg: ExperimentConfig) -> list[GenerationSpec]:
    """Generation 0 (the teacher) and generations 1..count, each checked before anything trains.

    born_again: every student has the teacher's architecture unless
    `generations.student.model` or `generations.per_generation.K.model` change it.
    """
    g = cfg.generations
    teacher = _apply(cfg, None, g.teacher, 0)
    student_defaults = _apply(cfg, None, g.student, 1)
    specs = [teacher]
    for k in range(1, g.count + 1):
        ov = g.per_generation.get(k)
        specs.append(
            _apply(cfg, student_defaults, ov, k) if ov else _apply(cfg, student_defaults, GenerationOverride(), k)
        )
    for spec in specs:
        _check(spec, specs[spec.index - 1] if spec.index else None)
    return specs


def _check(spec: GenerationSpec, teacher: GenerationSpec | None) -> None:
    where = "generations.teacher" if spec.index == 0 else f"generation {spec.index}"
    check_arch(spec.model.arch)
    try:
        criterion = Criterion(spec.losses)
    except MgkdError as e:
        raise MgkdError(f"{where}: {e}") from None
    if teacher is None:
        names = [n for n, _, p in criterion.terms if p.teacher_needs.any or p.teacher_needs.pseudo_targets]
        if names:
            raise MgkdError(
                f"{where}: loss(es) {', '.join(names)} need a teacher, but generation 0 has none; use label_smoothing"
            )
    try:
        criterion.check(spec.model, teacher.model if teacher else None)
    except MgkdError as e:
        raise MgkdError(f"{where}: {e}") from None
    if spec.teacher_signal == "cached":
        _check_cached(spec, criterion, where)
    shape = lambda m: m.model_dump(exclude={"dropout"})  # noqa: E731
    if spec.init == "teacher" and teacher is not None and shape(spec.model) != shape(teacher.model):
        raise MgkdError(
            f"{where}: init 'teacher' copies the teacher's tensors, so the student needs the same model "
            f"config; set init: scratch or drop the model change"
        )


def _check_cached(spec: GenerationSpec, criterion: Criterion, where: str) -> None:
    """A cached teacher keeps only top-k log-probs of the gold targets: every term must make do with that."""
    if not spec.has_teacher:
        raise MgkdError(f"{where}: teacher_signal 'cached' needs a teacher, and generation 0 has none; remove it there")
    readers = [(name, p) for name, _, p in criterion.terms if p.teacher_needs.any]
    if not readers:
        raise MgkdError(
            f"{where}: teacher_signal 'cached' but no loss term reads the teacher during training; "
            "add soft_label with params.top_k (e.g. 8) or use teacher_signal: online"
        )
    for name, p in readers:
        fix = (
            f"set params.top_k (e.g. 8) on {name!r}" if "top_k" in type(p).parameters() else "remove that term"
        ) + " or use teacher_signal: online"
        beyond = [n for n in ("logits", "hidden", "attention") if getattr(p.teacher_needs, n)]
        if beyond:
            raise MgkdError(
                f"{where}: teacher_signal 'cached' stores only the teacher's top-k log-probs, but loss {name!r} "
                f"needs its {', '.join(beyond)}; {fix}"
            )
        if p.view != "gold":
            raise MgkdError(
                f"{where}: loss {name!r} reads the teacher on the {p.view!r} view, but the teacher cache covers "
                "the gold training targets only; use teacher_signal: online"
            )
    name, largest = max(((n, p.teacher_needs.top_k) for n, p in readers), key=lambda x: x[1])
    if spec.teacher_cache_k is not None and spec.teacher_cache_k < largest:
        raise MgkdError(
            f"{where}: teacher_cache_k={spec.teacher_cache_k} is smaller than top_k={largest} of loss {name!r}; "
            f"set teacher_cache_k >= {largest} or leave it unset (it defaults to the largest top_k)"
        )
