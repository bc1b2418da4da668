"""The experiment config: pydantic models, presets, `--set` overrides.

One `ExperimentConfig` is one runnable experiment (torchtune's habit): the
corpus, the tokenizer, every generation's architecture, losses and budget, Ray
and MLflow. It is built once in the CLI from a preset or YAML file plus
`--set a.b=c` overrides, validated here, and passed down unchanged; everything
below it reads plain values.

The sections live in this package's modules (`data`, `model`, `train`, `generations`, `runtime`, `experiment`),
the building of a config in `loading`; every public name is imported from `mgkd.config`.
"""

from mgkd.config.base import StrictModel, format_validation_error
from mgkd.config.data import (
    ClassificationDataConfig,
    CorpusConfig,
    EvalConfig,
    EvalSetSource,
    SplitConfig,
    TokenizerConfig,
)
from mgkd.config.experiment import ExperimentConfig
from mgkd.config.generations import GenerationOverride, GenerationsConfig, ShrinkConfig
from mgkd.config.loading import apply_overrides, build_config, load_raw, preset_names, validate
from mgkd.config.model import ExternalTeacherConfig, ModelConfig
from mgkd.config.runtime import SEARCH_DOMAINS, RayConfig, SearchConfig, TrackingConfig
from mgkd.config.train import LossTerm, TrainConfig

__all__ = [
    "SEARCH_DOMAINS",
    "ClassificationDataConfig",
    "CorpusConfig",
    "EvalConfig",
    "EvalSetSource",
    "ExperimentConfig",
    "ExternalTeacherConfig",
    "GenerationOverride",
    "GenerationsConfig",
    "LossTerm",
    "ModelConfig",
    "RayConfig",
    "SearchConfig",
    "ShrinkConfig",
    "SplitConfig",
    "StrictModel",
    "TokenizerConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "format_validation_error",
    "load_raw",
    "preset_names",
    "validate",
]
