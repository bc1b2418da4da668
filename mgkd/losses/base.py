"""The loss-plugin contract, the registry, and the weighted sum of terms.

A plugin is a class registered by name (torchdistill's habit). It states what
it needs from the teacher, so the teacher computes only that, and returns one
scalar term (a mean over non-padding target tokens). The config names plugins
and weights them; third-party packages add plugins through the entry-point
group `mgkd.losses` (`name = "package.module:PluginClass"`).

A term is computed on one *view* of the training data:
- `gold`: the training pairs with their reference targets (every step);
- `seq_kd`: the same training sources with the teacher's decoded outputs as
  targets (sequence-level KD), built once per teacher by `build_view`;
- `unlabeled`: extra source-only text labeled by the teacher (pseudo-labels),
  drawn alongside each gold batch at a configured token ratio.
The trainer runs the student (and, where a plugin asks, the teacher) once per
view that some term uses.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from mgkd.config import EvalConfig, LossTerm, ModelConfig
from mgkd.errors import MgkdError
from mgkd.outputs import ModelOutput, TargetBatch

ENTRY_POINT_GROUP = "mgkd.losses"
VIEWS = ("gold", "seq_kd", "unlabeled")


@dataclass(frozen=True)
class TeacherNeeds:
    """What a plugin reads from the teacher (or, as `student_needs`, from the student).

    `logits`, `top_k`, `hidden` and `attention` come from a forward pass every
    step; `pseudo_targets` (the teacher's decoded outputs) are made once, before
    the generation trains. `top_k > 0` says the teacher's k best log-probs per
    token suffice, so a cached teacher can serve the plugin.
    """

    logits: bool = False
    hidden: bool = False
    attention: bool = False
    top_k: int = 0
    pseudo_targets: bool = False

    def __or__(self, other: TeacherNeeds) -> TeacherNeeds:
        return TeacherNeeds(
            self.logits or other.logits,
            self.hidden or other.hidden,
            self.attention or other.attention,
            max(self.top_k, other.top_k),
            self.pseudo_targets or other.pseudo_targets,
        )

    @property
    def any(self) -> bool:
        """True when the teacher must run a forward pass during training."""
        return self.logits or self.hidden or self.attention or self.top_k > 0

    def names(self) -> list[str]:
        out = [n for n in ("logits", "hidden", "attention", "pseudo_targets") if getattr(self, n)]
        return out + ([f"top_{self.top_k}"] if self.top_k else [])


class TeacherText(Protocol):
    """The teacher's stored outputs: for each example id its n best (score, text), best first."""

    path: Path
    hypotheses: dict[str, list[tuple[float, str]]]
    cached: bool  # read back from the store, nothing decoded
    rejected: str | None  # why a stored file was not trusted (then decoded again)
    seconds: float


class ViewContext(Protocol):
    """What a plugin may use to build its view of the data before a generation trains.

    The generation supplies it (`mgkd.generations.views.GenerationViewContext`):
    decoding with the teacher and reading the task's data happen there, so a
    plugin imports neither generations nor tasks code.
    """

    teacher: nn.Module
    teacher_sha256: str
    data: Any  # the task's prepared data: `splits` by name (ids, sources, targets), `tokenizer`
    eval: EvalConfig
    cache_dir: Path  # where teacher-derived data is stored, keyed by teacher checksum
    device: torch.device
    seed: int
    events: Callable[[dict[str, Any]], None]

    def teacher_outputs(
        self, examples: Sequence[tuple[str, str]], *, beam_size: int, n_best: int, label: str
    ) -> TeacherText:
        """The teacher's n best outputs for (id, source text) examples, decoded once per teacher and stored."""
        ...

    def to_split(self, ids: list[str], sources: list[str], targets: list[str]) -> Any:
        """Texts as a split of the task's data, tokenized with the student's tokenizer."""
        ...

    def unlabeled_sources(
        self, source: str, max_words: int, max_sentences: int | None, param: str
    ) -> tuple[list[tuple[str, str]], dict[str, int]]:
        """(id, text) of source-only sentences named by `source`, and counts of what was dropped and why."""
        ...

    def subset(self, ids: list[str], cap: int | None) -> list[int]:
        """Positions of at most `cap` ids, chosen by a hash of the id."""
        ...


@dataclass
class ViewData:
    """A view's examples. `aligned`: row i belongs to training example i (same batches as gold);
    otherwise the view is drawn in batches of `token_ratio` times the gold token budget.
    `noise` perturbs a batch's sources (noisy student); `artifact` is logged to the generation's run."""

    split: Any  # the task's split type (translation: SplitData)
    aligned: bool = True
    token_ratio: float = 1.0
    noise: Callable[[Any, torch.Generator], Any] | None = None
    artifact: Path | None = None
    metrics: dict[str, float] | None = None


class LossPlugin:
    """Base class of loss plugins: subclass, set the class attributes, implement `__call__`.

    Optional hooks, in the order the trainer calls them: `check` (config time,
    before anything trains), `build_view` (once, for plugins on a teacher-made
    view), `setup` (once, returns extra trainable parameters such as
    projections), `set_progress` (every step).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    teacher_needs: ClassVar[TeacherNeeds] = TeacherNeeds()
    # What the plugin needs from the student's forward pass beyond logits.
    student_needs: ClassVar[TeacherNeeds] = TeacherNeeds()
    # The data the term is computed on (see the module docstring).
    view: ClassVar[str] = "gold"
    # The tasks (ExperimentConfig.task) whose batches and outputs the term understands; the schedule
    # refuses a term on any other task before anything trains.
    tasks: ClassVar[tuple[str, ...]] = ("translation",)
    # Share of the training budget done, in [0, 1]; set by the trainer every step.
    progress: float = 0.0

    def __call__(self, student: ModelOutput, teacher: ModelOutput | None, batch: TargetBatch) -> torch.Tensor:
        raise NotImplementedError

    def check(self, student: ModelConfig, teacher: ModelConfig | None) -> None:
        """Raise MgkdError if the plugin cannot work with these architectures (layer maps, features)."""

    def unlabeled_sources(self) -> dict[str, str]:
        """Source-only text the term reads, by the config param that names it ({param: source}).

        The schedule checks each can be read (`mgkd.tasks.translation.monolingual.check_source`) before anything trains.
        """
        return {}

    def build_view(self, ctx: ViewContext) -> ViewData | None:
        """Plugins on the `seq_kd`/`unlabeled` views make their examples here (cached by teacher checksum)."""
        return None

    def setup(self, student: nn.Module, teacher: nn.Module | None) -> list[nn.Parameter]:
        """Called once before training; returns extra parameters to train with the student."""
        return []

    def set_progress(self, progress: float) -> None:
        self.progress = progress

    def scale(self) -> float:
        """Multiplier of the term's weight at the current progress (schedules); 1 by default."""
        return 1.0

    def exclusive(self) -> bool:
        """True while this term alone trains the student (e.g. the layer phases of a progressive schedule)."""
        return False

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """The plugin's config parameters and their defaults (from `__init__`)."""
        sig = inspect.signature(cls.__init__)
        return {n: p.default for n, p in sig.parameters.items() if n != "self" and p.kind is p.KEYWORD_ONLY}


_REGISTRY: dict[str, type[LossPlugin]] = {}
_entry_points_loaded = False


def register(cls: type[LossPlugin]) -> type[LossPlugin]:
    """Class decorator: make a plugin available to configs under `cls.name`."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__qualname__} needs a class attribute `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"loss plugin name {cls.name!r} is already registered by {_REGISTRY[cls.name].__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[LossPlugin]]:
    """All plugins: the built-in ones and those of installed packages (entry points)."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                cls = ep.load()
            except Exception as e:  # a broken third-party plugin must not hide the others
                raise MgkdError(f"loss plugin entry point {ep.name!r} ({ep.value}) failed to load: {e}") from e
            if not (isinstance(cls, type) and issubclass(cls, LossPlugin)):
                raise MgkdError(f"entry point {ep.name!r} ({ep.value}) is not a LossPlugin subclass")
            _REGISTRY.setdefault(ep.name, cls)
    return dict(_REGISTRY)


def create(term: LossTerm) -> LossPlugin:
    plugins = registry()
    if term.name not in plugins:
        raise MgkdError(f"unknown loss {term.name!r}; registered losses: {', '.join(sorted(plugins))}")
    cls = plugins[term.name]
    known = cls.parameters()
    unknown = sorted(set(term.params) - set(known))
    if unknown:
        raise MgkdError(
            f"loss {term.name!r} has no parameter(s) {', '.join(unknown)}; its parameters: "
            f"{', '.join(f'{k} (default {v})' for k, v in known.items()) or 'none'}"
        )
    try:
        return cls(**term.params)
    except (TypeError, ValueError) as e:
        raise MgkdError(f"loss {term.name!r}: {e}") from None


Output = tuple[ModelOutput, ModelOutput | None, TargetBatch]


class Criterion:
    """The weighted sum of a generation's loss terms, each on its view of the data."""

    def __init__(self, terms: list[LossTerm]) -> None:
        if not terms:
            raise MgkdError("a generation needs at least one loss term (e.g. label_smoothing)")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise MgkdError(f"loss terms must have distinct names, got {names}; combine their weights into one term")
        self.terms = [(t.name, t.weight, create(t)) for t in terms]
        for name, _, plugin in self.terms:
            if plugin.view not in VIEWS:
                raise MgkdError(f"loss {name!r} declares view {plugin.view!r}; known views: {', '.join(VIEWS)}")
        self.teacher_needs = TeacherNeeds()
        self.student_needs = TeacherNeeds()
        for _, _, plugin in self.terms:
            self.teacher_needs = self.teacher_needs | plugin.teacher_needs
            self.student_needs = self.student_needs | plugin.student_needs

    @property
    def plugins(self) -> list[LossPlugin]:
        return [p for _, _, p in self.terms]

    @property
    def views(self) -> list[str]:
        """The views some term uses, in a fixed order."""
        used = {p.view for p in self.plugins}
        return [v for v in VIEWS if v in used]

    def needs(self, view: str) -> tuple[TeacherNeeds, TeacherNeeds]:
        """(teacher, student) needs of the terms on one view."""
        t, s = TeacherNeeds(), TeacherNeeds()
        for p in self.plugins:
            if p.view == view:
                t, s = t | p.teacher_needs, s | p.student_needs
        return t, s

    def check(self, student: ModelConfig, teacher: ModelConfig | None) -> None:
        for p in self.plugins:
            p.check(student, teacher)

    def unlabeled_sources(self) -> dict[str, str]:
        """Every term's source-only text, by the config param that names it."""
        return {param: source for p in self.plugins for param, source in p.unlabeled_sources().items()}

    def set_progress(self, progress: float) -> None:
        for p in self.plugins:
            p.set_progress(progress)

    def weights(self) -> dict[str, float]:
        """Each term's effective weight now: config weight x schedule; an exclusive term silences the rest."""
        exclusive = [name for name, _, p in self.terms if p.exclusive()]
        return {
            name: (weight * p.scale() if not exclusive or name in exclusive else 0.0) for name, weight, p in self.terms
        }

    def __call__(
        self,
        student: ModelOutput | None,
        teacher: ModelOutput | None = None,
        batch: TargetBatch | None = None,
        views: dict[str, Output] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and each raw term. `views` maps a view to (student output, teacher output, batch);
        the positional arguments are the gold view."""
        outputs = dict(views or {})
        if student is not None:
            outputs["gold"] = (student, teacher, batch)  # type: ignore[assignment]
        weights = self.weights()
        in_exclusive_phase = any(p.exclusive() for p in self.plugins)
        parts: dict[str, torch.Tensor] = {}
        total: torch.Tensor | float = 0.0
        for name, _, plugin in self.terms:
            if weights[name] == 0.0 and in_exclusive_phase:
                continue  # silenced by an exclusive phase: not computed
            if plugin.view not in outputs:
                raise ValueError(f"loss {name!r} is computed on view {plugin.view!r}, which this step lacks")
            s_out, t_out, b = outputs[plugin.view]
            parts[name] = plugin(s_out, t_out, b)
            total = total + weights[name] * parts[name]
        return total, parts  # type: ignore[return-value]
