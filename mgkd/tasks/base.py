"""What a task is: the contract every task (translation, classification, ...) fulfils, and the selection rule.

A task turns a config into prepared data (`prepare`), cuts a split into
token-budget batches (`batch_indices`, `collate`), and declares its metrics
with their direction, the metrics a checkpoint may be selected by
(`eval.select_by`), the columns of the lineage table and the two metrics of
the lineage plot, and its default preset. The rest of mgkd reads these
declarations instead of guessing the task from an architecture or a metric
name. How a generation of the task trains (its forward per data view, its
validation and test outputs) is the generation layer's part
(`TaskSteps` in `mgkd.generations.recipe`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import sentencepiece as spm
import torch

from mgkd.config import EvalConfig, ExperimentConfig, ModelConfig, TrainConfig
from mgkd.outputs import Events, TestOutputs

Log = Callable[[str], None]
# The prefixes a metric carries in a generation's record; the task declares the bare names.
SPLIT_PREFIXES = ("best_valid_", "valid_", "test_")


Split = TypeVar("Split")


@dataclass
class TokenizedData(Generic[Split]):
    """What every task's prepared data shares (plain data Ray ships to workers): its sentencepiece model as
    bytes and the processor built from them on first use, the hash of data and settings, its splits by name,
    and its cache folder. A task's data is a dataclass that adds its own fields after these."""

    spm_model: bytes
    data_hash: str
    splits: dict[str, Split]
    cache_dir: Path
    _processor: spm.SentencePieceProcessor | None = field(default=None, repr=False, compare=False, kw_only=True)

    @property
    def tokenizer(self) -> spm.SentencePieceProcessor:
        if self._processor is None:
            self._processor = spm.SentencePieceProcessor(model_proto=self.spm_model)
        return self._processor

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_piece_size()

    def __getstate__(self) -> dict:
        # The processor is a SWIG object: rebuilt from the bytes after unpickling.
        state = self.__dict__.copy()
        state["_processor"] = None
        return state


AnyBatch = TypeVar("AnyBatch", bound="TensorBatch")


class TensorBatch:
    """What every task's batch (a dataclass of `indices` and tensors) shares: the same batch on a device."""

    def to(self: AnyBatch, device: torch.device | str, non_blocking: bool = False) -> AnyBatch:
        """A new batch with every tensor field moved to `device` (the other fields shared). `non_blocking` (for a
        CUDA device): from pinned memory, so the copy overlaps the work already queued."""
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        move = (lambda v: v.pin_memory().to(device, non_blocking=True)) if non_blocking else (lambda v: v.to(device))
        moved = {f.name: move(v) for f in fields if isinstance(v := getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **moved)  # type: ignore[type-var]


@dataclass(frozen=True)
class Metric:
    """One quality measure of a task: its bare name (as in `valid_<name>`), a label, and its direction."""

    name: str
    label: str
    higher_is_better: bool


class Task(Protocol):
    """A task: its data and its declarations. Instances are registered in `mgkd.tasks.TASKS` by name."""

    name: str
    description: str
    # The config section holding the task's data settings (`corpus`, `classification`).
    data_section: str
    # The preset `mgkd run --task NAME` starts from.
    preset: str
    metrics: tuple[Metric, ...]
    # The eval.select_by values this task offers (each `valid_<metric>`).
    select_by: tuple[str, ...]
    # The test metrics the lineage table shows (a column each, where the run has them) and the two it plots.
    table: tuple[str, ...]
    plot: tuple[str, str]
    # The data views its loss terms may read (gold: the split's own examples).
    views: tuple[str, ...]
    # Whether its teacher makes data before training (a top-k cache, pseudo-targets: built once per teacher,
    # before a sweep's trials), may be an ensemble of generations, or an external (Hugging Face) model.
    teacher_made_data: bool
    teacher_ensembles: bool
    external_teacher: bool

    def prepare(self, cfg: ExperimentConfig, log: Log = ...) -> Any:
        """The config's data, prepared once per lineage on the driver: plain data Ray ships to workers."""
        ...

    def batch_indices(self, split: Any, max_tokens: int, shuffle: bool, seed: int = 0) -> list[list[int]]:
        """Token-budget batches of a split's example indices (seeded order when shuffled)."""
        ...

    def collate(self, split: Any, indices: list[int]) -> Any:
        """One batch of the examples `indices` of `split`, as tensors."""
        ...

    def batch_tokens(self, batch: Any) -> int:
        """The tokens a batch trains on (the throughput the step events report)."""
        ...

    def check_model(self, cfg: ExperimentConfig, model: ModelConfig) -> str | None:
        """What in a generation's model does not fit the task's data (None: nothing), checked before training."""
        ...


class StepSpec(Protocol):
    """What a task's steps read of a generation's spec (`mgkd.generations.spec.GenerationSpec` has both)."""

    train: TrainConfig
    eval: EvalConfig


class TaskSteps(Protocol):
    """A task's hooks into the generation recipe (`mgkd.generations.recipe`), in the task's folder as
    `steps.py` (`STEPS`, an instance). The recipe owns everything else: teacher, optimizer, resume, selection,
    checkpoint."""

    task: Task

    def model_sizes(self, data: Any) -> dict[str, int]:
        """What a new student's shape takes from the data: `vocab_size`, and `num_classes` for a classifier."""
        ...

    def validate(self, student: torch.nn.Module, data: Any, spec: StepSpec,
                 device: torch.device) -> dict[str, float]:  # fmt: skip
        """The validation metrics (`valid_<metric>`) after an epoch; eval.select_by names one of them."""
        ...

    def checkpoint_meta(self, data: Any) -> dict[str, Any]:
        """What the checkpoint carries besides weights and spec (a classifier: its label names)."""
        ...

    def test(self, student: torch.nn.Module, data: Any, spec: StepSpec, device: torch.device, out_dir: Path,
             events: Events) -> TestOutputs:  # fmt: skip
        """The selected model's test metrics, its outputs file and samples."""
        ...


def metric(task: Task, name: str) -> Metric:
    """The task's metric behind a recorded name (`valid_bleu`, `test_accuracy`, `best_valid_loss`, `loss`)."""
    bare = name
    for prefix in SPLIT_PREFIXES:
        if name.startswith(prefix):
            bare = name[len(prefix) :]
            break
    for m in task.metrics:
        if m.name == bare:
            return m
    raise KeyError(f"task {task.name} has no metric {name!r}; its metrics: {', '.join(m.name for m in task.metrics)}")


def lower_is_better(task: Task, name: str) -> bool:
    """Whether a smaller value of the metric `name` is the better one (a loss); the one place this is decided."""
    return not metric(task, name).higher_is_better


def selection_score(task: Task, name: str, metrics: dict[str, float]) -> float:
    """What checkpoint selection minimises for `eval.select_by = name`: the metric, negated where higher is
    better. Selection (in a generation and across a sweep's trials) compares these and nothing else."""
    value = metrics[name]
    return value if lower_is_better(task, name) else -value


def table_columns(task: Task, metrics: dict[str, float]) -> list[tuple[str, str]]:
    """(metric name, label) of the task's table metrics that `metrics` holds (an optional one, MCC, may not)."""
    return [(name, metric(task, name).label) for name in task.table if name in metrics]


def scores_line(task: Task, metrics: dict[str, float]) -> str:
    """A generation's test scores in one line, e.g. `test BLEU 31.20  chrF 55.10`."""
    return "test " + "  ".join(f"{label} {metrics[name]:.2f}" for name, label in table_columns(task, metrics))


# A generation's cost beside its quality: the model's size on disk (its checkpoint; an external model's folder)
# and how fast it decoded the test split (translation: sentences/s, classification: examples/s).
SIZE_METRIC = "model_size_bytes"
SPEED_METRICS = {"decode_sentences_per_s": "sent/s", "eval_examples_per_s": "ex/s"}


def footprint(metrics: dict[str, float]) -> tuple[str, str]:
    """A generation's size on disk and test decode speed as the tables show them, e.g. ("3.36 MB", "412.3 sent/s");
    "-" for what its run did not record (a lineage from before these metrics, a failed generation)."""
    size = metrics.get(SIZE_METRIC)
    speed = next(((metrics[k], unit) for k, unit in SPEED_METRICS.items() if k in metrics), None)
    return (
        f"{size / 1e6:.2f} MB" if size is not None else "-",
        f"{speed[0]:.1f} {speed[1]}" if speed is not None else "-",
    )


def footprint_line(metrics: dict[str, float]) -> str:
    """`footprint` in one line, e.g. `3.36 MB on disk  412.3 sent/s`."""
    size, speed = footprint(metrics)
    return f"{size} on disk  {speed}"
