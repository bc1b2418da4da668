"""What is learned: the registered tasks (translation, classification) and `prepare`, which turns a config
into its task's prepared data. A task's contract and the selection rule are in `mgkd.tasks.base`.

A task is a sub-package of this one: its `__init__` defines `TASK` (a `Task`: data, metrics, declarations) and
its `steps.py` defines `STEPS` (a `TaskSteps`: the recipe's hooks). Both are found here by walking the
sub-packages, so adding a task is its folder plus a preset (configs/<preset>.yaml)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from mgkd.config import ExperimentConfig
from mgkd.errors import MgkdError
from mgkd.tasks.base import (
    Log,
    Metric,
    Task,
    TaskSteps,
    footprint,
    footprint_line,
    lower_is_better,
    metric,
    scores_line,
    selection_score,
    table_columns,
)

# Listed first where tasks are listed (messages, --help); the rest follow in name order.
FIRST = "translation"


def _discover() -> tuple[dict[str, Task], dict[str, TaskSteps]]:
    """Every sub-package's `TASK` and `steps.STEPS`, by task name."""
    tasks: dict[str, Task] = {}
    steps: dict[str, TaskSteps] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != FIRST, m.name)):
        if not info.ispkg:
            continue
        task = importlib.import_module(f"{__name__}.{info.name}").TASK
        tasks[task.name] = task
        steps[task.name] = importlib.import_module(f"{__name__}.{info.name}.steps").STEPS
    return tasks, steps


# Every task by name (config.task names one) and its hooks into the generation recipe.
TASKS, STEPS = _discover()


def get_task(name: str) -> Task:
    """The task registered as `name`; an unknown name is the user's to fix."""
    try:
        return TASKS[name]
    except KeyError:
        raise MgkdError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def task_of(data: Any) -> Task:
    """The task whose `prepare` made `data` (each task's data names its task)."""
    return get_task(data.task)


def steps_of(data: Any) -> TaskSteps:
    """The recipe's hooks of the task whose `prepare` made `data`."""
    return STEPS[data.task]


def prepare(cfg: ExperimentConfig, log: Log = lambda _: None) -> Any:
    """The config's task, prepared once per lineage on the driver."""
    return get_task(cfg.task).prepare(cfg, log)


__all__ = [
    "STEPS",
    "TASKS",
    "Metric",
    "Task",
    "TaskSteps",
    "footprint",
    "footprint_line",
    "get_task",
    "lower_is_better",
    "metric",
    "prepare",
    "scores_line",
    "selection_score",
    "table_columns",
    "steps_of",
    "task_of",
]
