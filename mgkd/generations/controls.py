"""Matched controls: a distilled generation's twin trained without its teacher.

A control answers "what did distillation add beyond the training itself?". It is
generation k again (same architecture, same initialisation path, same seed, so
the same initial weights and the same batch order, same budget) with the
teacher-dependent loss terms removed: what is left are the terms on the gold
labels, reweighted to sum to 1 (a model trained without a teacher puts its whole
loss on the labels). Where generation k has no gold term (e.g. soft_label
alone), the control takes generation 0's losses, the loss the teacher itself was
trained with.

A control is not a generation: it has no index of its own, is never a teacher,
and is recorded as a run tagged `mgkd.control_of=<generation run id>`.
The fairness of the pair is recorded, not assumed: both runs carry the
sha256 of the initial weights and of the batch order (`mgkd.init_sha256`,
`mgkd.data_order_sha256`).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from mgkd.config import ExperimentConfig, LossTerm
from mgkd.errors import MgkdError
from mgkd.generations.search import apply_search
from mgkd.generations.spec import GenerationSpec
from mgkd.losses import Criterion
from mgkd.tasks import task_of

# Params in which a generation and its control may differ: the losses, and how the teacher's signal is delivered
# (a control reads no teacher signal, so a cached one is not built for it).
CONTROL_MAY_DIFFER = ("loss.", "teacher_signal", "teacher_cache_k")
# ... and, with generations.control_budget 'batches', the length of its run.
BUDGET_KEYS = ("train.max_steps", "train.max_epochs", "train.warmup_steps")


def control_may_differ(budget: str = "steps") -> tuple[str, ...]:
    """The params in which a generation and its control may differ under `generations.control_budget`."""
    return CONTROL_MAY_DIFFER + (BUDGET_KEYS if budget == "batches" else ())


def views_per_step(spec: GenerationSpec) -> int:
    """How many data views' batches one training step of `spec` reads (gold, seq-KD, pseudo-label, ...)."""
    return max(1, len(Criterion(spec.losses).views))


def teacher_dependent(term: LossTerm) -> bool:
    """Whether the term learns from the teacher (its outputs, internals or decoded targets)."""
    plugin = Criterion([term]).plugins[0]
    return plugin.teacher_needs.any or plugin.teacher_needs.pseudo_targets or plugin.view != "gold"


def is_distilled(spec: GenerationSpec) -> bool:
    """A student with at least one teacher-dependent loss term: the generations a control is trained for."""
    return spec.index > 0 and spec.external is None and any(teacher_dependent(t) for t in spec.losses)


def control_losses(spec: GenerationSpec, teacher_losses: list[LossTerm]) -> list[LossTerm]:
    """The generation's gold-label terms with weights summing to 1 (or generation 0's losses if it has none)."""
    gold = [t for t in spec.losses if not teacher_dependent(t)]
    if not gold:
        return [t.model_copy(deep=True) for t in teacher_losses]
    total = sum(t.weight for t in gold)
    return [t.model_copy(update={"weight": t.weight / total}, deep=True) for t in gold]


def control_spec(spec: GenerationSpec, teacher_losses: list[LossTerm], best_point: dict[str, Any] | None = None,
                 budget: str = "steps") -> GenerationSpec:  # fmt: skip
    """Generation `spec`'s control. A swept generation's control takes the winning trial's values except its
    loss parameters (`best_point`): the control is trained as the selected student was, minus the teacher.
    `budget` 'batches': as many training batches as the generation reads (see `generations.control_budget`)."""
    if best_point:
        spec = apply_search(spec, {k: v for k, v in best_point.items() if not k.startswith("loss.")})
    train = spec.train
    n = views_per_step(spec) if budget == "batches" else 1
    if n > 1:  # the same schedule, n times as long
        train = train.model_copy(update={"max_epochs": train.max_epochs * n, "warmup_steps": train.warmup_steps * n,
                                         "max_steps": train.max_steps * n if train.max_steps else None})  # fmt: skip
    # train.batch_targets 'longest': the control's batches are cut by the generation's teacher-made targets too
    plan = None
    if train.batch_targets == "longest":
        plan = [t for t in spec.losses if Criterion([t]).plugins[0].view != "gold"] or None  # on teacher-made data
    return replace(spec, losses=control_losses(spec, teacher_losses), teacher_signal="online", teacher_cache_k=None,
                   search=None, control_of=spec.index, train=train, plan_losses=plan)  # fmt: skip


def check_controls(cfg: ExperimentConfig, specs: list[GenerationSpec]) -> None:
    """`generations.control` needs at least one distilled generation; otherwise a control would be its twin."""
    if not cfg.generations.control:
        return
    if not any(is_distilled(s) for s in specs):
        students = [s for s in specs if s.index > 0]
        losses = sorted({t.name for s in students for t in s.losses})
        raise MgkdError(
            f"generations.control: generation(s) {', '.join(str(s.index) for s in students)} learn without the "
            f"teacher (losses: {', '.join(losses)}), so a control would be the same run; give a generation a "
            "distillation loss (soft_label, seq_kd, internal, pseudo_label) or drop generations.control / --control"
        )


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s batch order (1-based): the trainer's, and the digest's below."""
    return seed * 100_003 + epoch


def data_order_digests(data: Any, spec: GenerationSpec, epochs: int | None = None, split: Any = None) -> list[str]:
    """sha256 of the training batches, in order, after each epoch the budget allows (or of the first `epochs`):
    equal digests mean equal data order. `split`: what the batches are cut by (default the gold training split;
    the trainer passes the one train.batch_targets makes). Data-parallel workers take interleaved slices of this
    one order."""
    batches = task_of(data).batch_indices
    train = split if split is not None else data.splits["train"]
    h = hashlib.sha256()
    digests = []
    for epoch in range(1, (epochs or spec.train.max_epochs) + 1):
        for batch in batches(train, spec.train.max_tokens, shuffle=True, seed=epoch_seed(spec.seed, epoch)):
            h.update(",".join(map(str, batch)).encode() + b";")
        h.update(b"|")
        digests.append(h.hexdigest())
    return digests


def data_order_sha256(data: Any, spec: GenerationSpec, epochs: int | None = None, split: Any = None) -> str:
    """The last of `data_order_digests`: the whole budget's (or the first `epochs`') batch order."""
    return data_order_digests(data, spec, epochs, split)[-1]
