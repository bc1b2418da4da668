"""What is learned. `prepare` turns a config into the task's prepared data (translation or classification)."""

from __future__ import annotations

from collections.abc import Callable

from mgkd.config import ExperimentConfig
from mgkd.tasks.classification import ClassificationData, prepare_classification
from mgkd.tasks.translation import PreparedData
from mgkd.tasks.translation import prepare as prepare_translation


def prepare(cfg: ExperimentConfig, log: Callable[[str], None] = lambda _: None) -> PreparedData | ClassificationData:
    """The config's task, prepared once per lineage on the driver."""
    if cfg.task == "classification":
        return prepare_classification(cfg, log)
    return prepare_translation(cfg, log)


__all__ = ["ClassificationData", "PreparedData", "prepare"]
