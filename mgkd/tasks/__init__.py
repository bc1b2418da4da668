"""What is learned: the registered tasks (translation, classification) and `prepare`, which turns a config
into its task's prepared data. A task's contract and the selection rule are in `mgkd.tasks.base`."""

from __future__ import annotations

from typing import Any

from mgkd.config import ExperimentConfig
from mgkd.errors import MgkdError
from mgkd.tasks.base import (
    Log,
    Metric,
    Task,
    footprint,
    footprint_line,
    lower_is_better,
    metric,
    scores_line,
    selection_score,
    table_columns,
)
from mgkd.tasks.classification import CLASSIFICATION, ClassificationData
from mgkd.tasks.translation import TRANSLATION, PreparedData

# Every task by name: config.task names one. A new task is a module with its data and a `Task`, added here.
TASKS: dict[str, Task] = {t.name: t for t in (TRANSLATION, CLASSIFICATION)}


def get_task(name: str) -> Task:
    """The task registered as `name`; an unknown name is the user's to fix."""
    try:
        return TASKS[name]
    except KeyError:
        raise MgkdError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def task_of(data: Any) -> Task:
    """The task whose `prepare` made `data` (each task's data names its task)."""
    return get_task(data.task)


def prepare(cfg: ExperimentConfig, log: Log = lambda _: None) -> PreparedData | ClassificationData:
    """The config's task, prepared once per lineage on the driver."""
    return get_task(cfg.task).prepare(cfg, log)


__all__ = [
    "TASKS",
    "ClassificationData",
    "Metric",
    "PreparedData",
    "Task",
    "footprint",
    "footprint_line",
    "get_task",
    "lower_is_better",
    "metric",
    "prepare",
    "scores_line",
    "selection_score",
    "table_columns",
    "task_of",
]
