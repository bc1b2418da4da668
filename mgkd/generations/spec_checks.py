"""What the schedule checks of every generation before anything trains: that it fits the config's task, that
its loss terms fit its models and teacher, what a cached teacher or an external generation 0 allow, and what
layer cutting keeps (each refused with an MgkdError that names the generation and the fix)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from mgkd.config import ExperimentConfig, ExternalTeacherConfig, ModelConfig
from mgkd.errors import MgkdError
from mgkd.generations.search import apply_search, search_corners
from mgkd.losses import Criterion
from mgkd.losses.base import registry
from mgkd.models import check_model, task_architectures
from mgkd.models.cutting import plan_cut
from mgkd.tasks import TASKS, get_task
from mgkd.tasks.translation.monolingual import check_source

if TYPE_CHECKING:
    from mgkd.generations.spec import GenerationSpec


def check_task(cfg: ExperimentConfig, specs: list[GenerationSpec]) -> None:
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


def check_external_student(spec: GenerationSpec, external: ExternalTeacherConfig) -> ExternalTeacherConfig:
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


def check_terms(criterion: Criterion, student: ModelConfig, teacher: ModelConfig | None) -> None:
    """The loss terms fit these models, and the source-only text they read exists (before anything trains)."""
    criterion.check(student, teacher)
    for param, source in criterion.unlabeled_sources().items():
        check_source(source, param)


def check_generation(spec: GenerationSpec, teacher: GenerationSpec | None) -> GenerationSpec:
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
        check_terms(criterion, spec.model, teacher.model if teacher else None)
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
        check_cached(spec, criterion, where)
    if spec.search is not None:  # every trial's generation must be valid too
        for point in search_corners(spec.search):
            trial = apply_search(spec, point)
            try:
                check_terms(Criterion(trial.losses), trial.model, teacher.model if teacher else None)
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


def check_cached(spec: GenerationSpec, criterion: Criterion, where: str) -> None:
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
