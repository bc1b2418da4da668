"""The loss-plugin contract, the registry, and the weighted sum of terms.

A plugin is a class registered by name (torchdistill's habit). It states what
it needs from the teacher, so the teacher computes only that, and returns one
scalar term (a mean over non-padding target tokens). The config names plugins
and weights them; third-party packages add plugins through the entry-point
group `mgkd.losses` (`name = "package.module:PluginClass"`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib import metadata
from typing import Any, ClassVar

import torch

from mgkd.config import LossTerm
from mgkd.errors import MgkdError
from mgkd.models.transformer import Seq2SeqOutput
from mgkd.tasks.translation import Batch

ENTRY_POINT_GROUP = "mgkd.losses"


@dataclass(frozen=True)
class TeacherNeeds:
    """What a plugin reads from the teacher's forward pass."""

    logits: bool = False
    hidden: bool = False
    attention: bool = False

    def __or__(self, other: TeacherNeeds) -> TeacherNeeds:
        return TeacherNeeds(self.logits or other.logits, self.hidden or other.hidden, self.attention or other.attention)

    @property
    def any(self) -> bool:
        return self.logits or self.hidden or self.attention


class LossPlugin:
    """Base class of loss plugins: subclass, set the class attributes, implement `__call__`."""

    name: ClassVar[str]
    description: ClassVar[str]
    teacher_needs: ClassVar[TeacherNeeds] = TeacherNeeds()
    # What the plugin needs from the student's forward pass beyond logits.
    student_needs: ClassVar[TeacherNeeds] = TeacherNeeds()

    def __call__(self, student: Seq2SeqOutput, teacher: Seq2SeqOutput | None, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

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


class Criterion:
    """The weighted sum of a generation's loss terms."""

    def __init__(self, terms: list[LossTerm]) -> None:
        if not terms:
            raise MgkdError("a generation needs at least one loss term (e.g. label_smoothing)")
        self.terms = [(t.name, t.weight, create(t)) for t in terms]
        self.teacher_needs = TeacherNeeds()
        self.student_needs = TeacherNeeds()
        for _, _, plugin in self.terms:
            self.teacher_needs = self.teacher_needs | plugin.teacher_needs
            self.student_needs = self.student_needs | plugin.student_needs

    def __call__(
        self, student: Seq2SeqOutput, teacher: Seq2SeqOutput | None, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: plugin(student, teacher, batch) for name, _, plugin in self.terms}
        total = sum(weight * parts[name] for name, weight, _ in self.terms)
        return total, parts  # type: ignore[return-value]
