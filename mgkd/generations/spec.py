"""What one generation is, and the schedule that turns a config into generations."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from mgkd.config import (
    EvalConfig,
    ExperimentConfig,
    ExternalTeacherConfig,
    GenerationOverride,
    LossTerm,
    ModelConfig,
    SearchConfig,
    ShrinkConfig,
    TrainConfig,
)
from mgkd.errors import MgkdError
from mgkd.generations.spec_checks import check_external_student, check_generation, check_task
from mgkd.losses import Criterion
from mgkd.models import architecture


@dataclass(frozen=True)
class GenerationSpec:
    """Everything that decides how generation `index` is trained (plain values, picklable)."""

    index: int
    model: ModelConfig
    train: TrainConfig
    losses: list[LossTerm]
    eval: EvalConfig
    init: str  # "scratch" | "teacher" | "cut"
    teacher_signal: str  # "online" | "cached"
    seed: int
    # init "cut": the teacher's layers (1-based) per side that the student starts from.
    cut_layers: dict[str, list[int]] | None = None
    # The generations that teach this one: [index - 1] unless an ensemble is configured.
    teacher_generations: list[int] | None = None
    # Generation 0 only: it is this external model (loaded and evaluated, not trained).
    external: ExternalTeacherConfig | None = None
    # A student of the external generation 0: how to load and run its teacher.
    teacher_external: ExternalTeacherConfig | None = None
    # k of the cached teacher signal (None: the largest top_k of the loss terms).
    teacher_cache_k: int | None = None
    # A Ray Tune sweep over this generation (None: one run).
    search: SearchConfig | None = None
    # A matched control (see generations/controls.py): the index of the generation it is the twin of.
    control_of: int | None = None
    # A matched control under train.batch_targets 'longest': its generation's teacher-made terms, whose targets
    # (read from the teacher-output store, never learned from) cut the control's batches as they cut the
    # generation's. Not a param: the generation's run records these losses.
    plan_losses: list[LossTerm] | None = None

    @property
    def has_teacher(self) -> bool:
        return self.index > 0

    @property
    def cache_k(self) -> int:
        """The k the cached teacher signal stores: the configured one, else the largest term top_k."""
        return self.teacher_cache_k or max((p.teacher_needs.top_k for p in Criterion(self.losses).plugins), default=0)

    def as_params(self) -> dict[str, Any]:
        """Flat key -> value view for MLflow params."""
        if self.external is not None:  # no model, budget or losses of ours: the folder and how it decodes
            from mgkd.hf_folder import model_params

            ext = {f"external.{k}": v for k, v in self.external.model_dump(mode="json").items()}
            return {"generation": self.index, "seed": self.seed, **model_params(self.external.path), **ext,
                    **{f"eval.{k}": v for k, v in self.eval.model_dump(mode="json").items()}}  # fmt: skip
        flat: dict[str, Any] = {
            "generation": self.index,
            "init": self.init,
            "teacher_signal": self.teacher_signal,
            "seed": self.seed,
        }
        if self.teacher_generations and self.teacher_generations != [self.index - 1]:
            flat["teacher_generations"] = self.teacher_generations
        if self.cut_layers:
            flat.update({f"cut_layers.{side}": layers for side, layers in self.cut_layers.items()})
        if self.teacher_signal == "cached":
            flat["teacher_cache_k"] = self.cache_k
        for section in ("model", "train", "eval"):
            # json: eval.test_sets holds paths, which a checkpoint's spec and a param show as plain strings
            for k, v in getattr(self, section).model_dump(mode="json").items():
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
            self.eval.model_dump(mode="json"),
        )
        d["losses"] = [t.model_dump() for t in self.losses]
        d["search"] = self.search.model_dump() if self.search is not None else None
        if d["search"] is None:
            del d["search"]
        for key in ("external", "teacher_external", "control_of", "plan_losses"):  # only where set
            value = getattr(self, key)
            if value is None:
                del d[key]
            elif key == "plan_losses":
                d[key] = [t.model_dump() for t in value]
            elif key != "control_of":
                d[key] = value.model_dump(mode="json")
        return d


def _apply(cfg: ExperimentConfig, base: GenerationSpec | None, ov: GenerationOverride, index: int,
           model_base: ModelConfig | None = None, seed: int | None = None) -> GenerationSpec:  # fmt: skip
    """`ov` on top of `base` (or the experiment's defaults). The seed: `seed`, else the experiment's + index."""
    model_base = model_base or (base.model if base else cfg.model)
    model = ModelConfig.model_validate({**model_base.model_dump(), **ov.model})
    train = TrainConfig.model_validate({**(base.train if base else cfg.train).model_dump(), **ov.train})
    return GenerationSpec(
        index=index,
        model=model,
        train=train,
        losses=list(ov.losses if ov.losses is not None else (base.losses if base else [])),
        eval=cfg.eval,
        init=ov.init or (base.init if base else "scratch"),
        teacher_signal=ov.teacher_signal or (base.teacher_signal if base else "online"),
        seed=seed if seed is not None else cfg.seed + index,
        cut_layers=ov.cut_layers if ov.cut_layers is not None else (base.cut_layers if base else None),  # type: ignore[arg-type]
        teacher_generations=None if index == 0 else sorted(ov.teacher_generations or [index - 1]),
        teacher_cache_k=ov.teacher_cache_k or (base.teacher_cache_k if base else None),
        search=ov.search if ov.search is not None else (base.search if base else None),
    )


def shrink_model(model: ModelConfig, shrink: ShrinkConfig) -> ModelConfig:
    """The next generation's (smaller) architecture under the `shrink` schedule."""
    f = shrink.factor
    if shrink.dimension == "layers":
        fewer = lambda n: max(shrink.min_layers, min(n, round(n * f)))  # noqa: E731
        # Every layer stack the architecture declares (a classifier's encoder only).
        stacks = [count for _, count in architecture(model.arch).layers]
        return model.model_copy(update={count: fewer(getattr(model, count)) for count in stacks})
    heads = model.n_heads
    d = max(shrink.min_d_model, int(math.floor(model.d_model * f / (8 * heads))) * 8 * heads)
    ff = max(d, int(round(model.ff_dim * d / model.d_model)))
    return model.model_copy(update={"d_model": min(d, model.d_model), "ff_dim": ff})


def build_schedule(cfg: ExperimentConfig) -> list[GenerationSpec]:
    """Generation 0 (the teacher) and generations 1..count, each checked before anything trains.

    born_again: every student has the teacher's architecture unless
    `generations.student.model` or `generations.per_generation.K.model` change it.
    shrink: generation k's architecture is generation k-1's made smaller (`generations.shrink`);
    with `dimension: layers` students start from a cut of their teacher's layers.
    Explicit per-generation lists are `generations.per_generation` (any key of a generation).
    """
    g = cfg.generations
    teacher = replace(_apply(cfg, None, g.teacher, 0, seed=g.teacher.seed), external=g.teacher.external)
    student_defaults = _apply(cfg, None, g.student, 1)
    specs = [teacher]
    for k in range(1, g.count + 1):
        ov = g.per_generation.get(k) or GenerationOverride()
        # A seed pinned on generations.student holds for every student, unless generation k pins its own.
        seed = ov.seed if ov.seed is not None else g.student.seed
        if g.schedule == "shrink":
            prev = specs[-1]
            base_model = shrink_model(prev.model, g.shrink)
            defaults = student_defaults
            if ov.init is None:  # the schedule decides how a smaller student starts, unless K says otherwise
                init = g.shrink.init if g.shrink.dimension == "layers" else "scratch"
                ov = ov.model_copy(update={"init": init, "cut_layers": ov.cut_layers or g.shrink.cut_layers})
            specs.append(_apply(cfg, defaults, ov, k, model_base=base_model, seed=seed))
        else:
            specs.append(_apply(cfg, student_defaults, ov, k, seed=seed))
    check_task(cfg, specs)
    for i, spec in enumerate(specs):
        tg = spec.teacher_generations or []
        bad = [t for t in tg if not 0 <= t < spec.index]
        if bad:
            raise MgkdError(
                f"generation {spec.index}: teacher_generations {bad} must be earlier generations (0..{spec.index - 1})"
            )
        if g.teacher.external is not None and 0 in tg:
            spec = specs[i] = replace(spec, teacher_external=check_external_student(spec, g.teacher.external))
        if spec.external is not None:
            continue  # generation 0 is the folder's model: nothing of ours to check
        # The newest teacher is the one init teacher/cut copies from.
        specs[i] = check_generation(spec, specs[max(tg)] if tg else None)
        if len(tg) > 1:
            criterion = Criterion(spec.losses)
            if criterion.teacher_needs.hidden or criterion.teacher_needs.attention:
                raise MgkdError(
                    f"generation {spec.index}: an ensemble teacher {tg} exposes log-probabilities only; "
                    "internal-representation losses need a single teacher"
                )
    from mgkd.generations.controls import check_controls  # it imports this module

    check_controls(cfg, specs)
    return specs
