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
from mgkd.losses import Criterion
from mgkd.losses.base import registry
from mgkd.models import architecture, check_model, task_architectures
from mgkd.models.cutting import plan_cut
from mgkd.tasks import TASKS, get_task
from mgkd.tasks.monolingual import check_source


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
                    **{f"eval.{k}": v for k, v in self.eval.model_dump().items()}}  # fmt: skip
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
        d["search"] = self.search.model_dump() if self.search is not None else None
        if d["search"] is None:
            del d["search"]
        for key in ("external", "teacher_external", "control_of"):  # only where set: other specs read as before
            value = getattr(self, key)
            if value is None:
                del d[key]
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
    _check_task(cfg, specs)
    for i, spec in enumerate(specs):
        tg = spec.teacher_generations or []
        bad = [t for t in tg if not 0 <= t < spec.index]
        if bad:
            raise MgkdError(
                f"generation {spec.index}: teacher_generations {bad} must be earlier generations (0..{spec.index - 1})"
            )
        if g.teacher.external is not None and 0 in tg:
            spec = specs[i] = replace(spec, teacher_external=_check_external_student(spec, g.teacher.external))
        if spec.external is not None:
            continue  # generation 0 is the folder's model: nothing of ours to check
        # The newest teacher is the one init teacher/cut copies from.
        specs[i] = _check(spec, specs[max(tg)] if tg else None)
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


def _check_task(cfg: ExperimentConfig, specs: list[GenerationSpec]) -> None:
    """The selection metric, and every generation's architecture, loss terms and teacher, must fit the config's
    task as the task declares it (mgkd.tasks)."""
    declared = get_task(cfg.task)
    task = declared.name
    by = cfg.eval.select_by
    if by not in declared.select_by:
        owners = [f"{t.name}'s" for t in TASKS.values() if by in t.select_by] or ["no task's metric"]
        raise MgkdError(f"eval.select_by {by!r} is {owners[0]}; task {task} selects by "
                        f"{', '.join(declared.select_by[:-1])} or {declared.select_by[-1]}")  # fmt: skip
    for spec in specs:
        where = "generations.teacher" if spec.index == 0 else f"generation {spec.index}"
        if spec.external is not None:
            if not declared.external_teacher:
                raise MgkdError(f"{where}: an external (Hugging Face seq2seq) teacher is for task translation, "
                                f"not {task}; drop generations.teacher.external")  # fmt: skip
            continue
        check_model(spec.model, where)
        if spec.model.arch not in task_architectures(task):
            raise MgkdError(
                f"{where}: arch {spec.model.arch!r} does not fit task {task!r} (its architectures: "
                f"{', '.join(sorted(task_architectures(task)))}); set model.arch"
                f"; `--task {task}` with no --config runs the {declared.preset} preset"
            )
        try:
            criterion = Criterion(spec.losses)
        except MgkdError as e:
            raise MgkdError(f"{where}: {e}") from None
        wrong = [name for name, _, p in criterion.terms if task not in p.tasks]
        if wrong:
            fits = sorted(n for n, cls in registry().items() if task in cls.tasks)
            raise MgkdError(
                f"{where}: loss(es) {', '.join(wrong)} work on task(s) "
                f"{', '.join(sorted({t for n, _, p in criterion.terms if n in wrong for t in p.tasks}))}, "
                f"not on task {task!r}; use {', '.join(fits)}"
            )
        problem = declared.check_model(cfg, spec.model)
        if problem:
            raise MgkdError(f"{where}: {problem}")
        if spec.teacher_signal == "cached" and not declared.teacher_made_data:
            raise MgkdError(f"{where}: teacher_signal 'cached' stores per-token top-k for translation; a "
                            f"{task} teacher is cheap to run: use teacher_signal: online")  # fmt: skip
        if len(spec.teacher_generations or []) > 1 and not declared.teacher_ensembles:
            raise MgkdError(f"{where}: an ensemble teacher (teacher_generations {spec.teacher_generations}) is "
                            f"for task translation; give {task} generations one teacher")  # fmt: skip


def _check_external_student(spec: GenerationSpec, external: ExternalTeacherConfig) -> ExternalTeacherConfig:
    """A student of the external generation 0 learns from its text only: refuse, all at once, what needs more."""
    where = f"generation {spec.index}"
    try:
        criterion = Criterion(spec.losses)
    except MgkdError as e:
        raise MgkdError(f"{where}: {e}") from None
    problems = []
    tg = spec.teacher_generations or []
    if len(tg) > 1:
        problems.append(f"an ensemble (teacher_generations {tg}) averages log-probabilities: leave generation 0 out")
    if spec.init != "scratch":
        problems.append(
            f"init {spec.init!r} copies the teacher's tensors: set init: scratch "
            f"(generations.per_generation.{spec.index}.init=scratch)"
        )
    for name, _, plugin in criterion.terms:
        if plugin.teacher_needs.any:
            what = ", ".join(n for n in plugin.teacher_needs.names() if n != "pseudo_targets")
            problems.append(f"loss {name!r} needs the teacher's {what}: use seq_kd, pseudo_label, label_smoothing")
    if problems:
        raise MgkdError(
            f"{where}: the teacher is the external model {external.path}, whose vocabulary is not the student's, "
            "so it teaches through its translations only: " + "; ".join(problems)
        )
    return external


def _check_terms(criterion: Criterion, student: ModelConfig, teacher: ModelConfig | None) -> None:
    """The loss terms fit these models, and the source-only text they read exists (before anything trains)."""
    criterion.check(student, teacher)
    for param, source in criterion.unlabeled_sources().items():
        check_source(source, param)


def _check(spec: GenerationSpec, teacher: GenerationSpec | None) -> GenerationSpec:
    where = "generations.teacher" if spec.index == 0 else f"generation {spec.index}"
    check_model(spec.model, where)
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
        _check_terms(criterion, spec.model, teacher.model if teacher else None)
    except MgkdError as e:
        raise MgkdError(f"{where}: {e}") from None
    if spec.init == "teacher" and teacher is not None and spec.model.arch != teacher.model.arch:
        raise MgkdError(
            f"{where}: init 'teacher' copies the teacher's tensors, but the teacher is arch "
            f"{teacher.model.arch!r} and this generation is arch {spec.model.arch!r}; a student of another "
            f"architecture starts from random weights: set init: scratch for it "
            f"(generations.per_generation.{spec.index}.init=scratch)"
        )
    if spec.teacher_signal == "cached":
        _check_cached(spec, criterion, where)
    if spec.search is not None:  # every trial's generation must be valid too
        for point in search_corners(spec.search):
            trial = apply_search(spec, point)
            try:
                _check_terms(Criterion(trial.losses), trial.model, teacher.model if teacher else None)
            except MgkdError as e:
                raise MgkdError(f"{where}: search.space {point}: {e}") from None
    shape = lambda m: m.model_dump(exclude={"dropout"})  # noqa: E731
    if spec.init == "teacher" and teacher is not None and shape(spec.model) != shape(teacher.model):
        raise MgkdError(
            f"{where}: init 'teacher' copies the teacher's tensors, so the student needs the same model "
            f"config (teacher {teacher.model.arch}, student {spec.model.arch}); set init: scratch, "
            "init: cut (fewer layers), or drop the model change"
        )
    if spec.init == "cut":
        if teacher is None:
            raise MgkdError(f"{where}: init 'cut' needs a teacher to cut layers from")
        try:
            plan = plan_cut(spec.cut_layers if spec.cut_layers is not None else "first", spec.model, teacher.model)
        except MgkdError as e:
            raise MgkdError(f"{where}: {e}") from None
        return replace(spec, cut_layers=plan)
    return replace(spec, cut_layers=None)


def apply_search(spec: GenerationSpec, point: dict[str, Any]) -> GenerationSpec:
    """The generation with a Tune trial's values (`train.<field>`, `loss.<plugin>.weight|<param>`) put in."""
    where = f"generation {spec.index}: search.space"
    train = spec.train.model_dump()
    losses = [t.model_copy(deep=True) for t in spec.losses]
    for key, value in point.items():
        section, _, rest = key.partition(".")
        if section == "train" and rest in TrainConfig.model_fields:
            train[rest] = value
        elif section == "loss" and "." in rest:
            name, _, param = rest.partition(".")
            terms = [t for t in losses if t.name == name]
            if not terms:
                raise MgkdError(
                    f"{where}.{key}: the generation has no loss term {name!r} (its terms: "
                    f"{', '.join(t.name for t in losses) or 'none'})"
                )
            for t in terms:
                if param == "weight":
                    t.weight = value
                else:
                    t.params[param] = value
        else:
            raise MgkdError(
                f"{where}.{key}: keys are train.<field> (one of {', '.join(TrainConfig.model_fields)}), "
                "loss.<plugin>.weight or loss.<plugin>.<param>"
            )
    try:
        new_train = TrainConfig.model_validate(train)
        new_losses = [LossTerm.model_validate(t.model_dump()) for t in losses]
    except ValueError as e:
        raise MgkdError(f"{where}: {str(e).splitlines()[0]} ({point})") from None
    return replace(spec, train=new_train, losses=new_losses)


def search_corners(search: SearchConfig) -> list[dict[str, Any]]:
    """Points that reach every value a domain can give at its ends: checked before anything trains."""
    values = {}
    for key, domain in search.space.items():
        kind, v = next(iter(domain.items()))
        values[key] = (
            list(v) if kind in ("choice", "grid") else ([v[0], v[1] - 1] if kind == "randint" else [v[0], v[1]])
        )
    longest = max(len(v) for v in values.values())
    return [{k: v[min(i, len(v) - 1)] for k, v in values.items()} for i in range(longest)]


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
