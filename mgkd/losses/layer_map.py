"""Layer maps of internal-representation KD: which student layer learns from which teacher layer.

A map is "uniform" (each student layer j learns teacher layer round(j * n_t / n_s))
or a list of entries `{teacher, student, feature, loss, weight, side}` as
TextBrewer writes them; this module parses and orders them. Whether both models
expose a mapped feature is the architectures' declaration (`mgkd.models.registry`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mgkd.errors import MgkdError

SIDES = ("encoder", "decoder")  # bottom-up: the decoder reads the encoder's output
FEATURES = ("hidden", "attention")
LOSSES = {"hidden": ("cosine", "mse"), "attention": ("kl",)}
DEFAULT_LOSS = {"hidden": "cosine", "attention": "kl"}
SCHEDULES = ("joint", "progressive", "stacked")
MAP_KEYS = ("teacher", "student", "feature", "loss", "weight", "side")


@dataclass(frozen=True)
class LayerPair:
    """One mapped feature: student layer `student` learns teacher layer `teacher` (1-based) on `side`."""

    side: str
    feature: str
    teacher: int
    student: int
    loss: str
    weight: float = 1.0

    @property
    def key(self) -> str:
        """A stable name (also the projection's name; nn.ModuleDict keys cannot hold dots)."""
        return f"{self.side}_{self.feature}_t{self.teacher}_s{self.student}"

    def describe(self) -> str:
        return (
            f"{self.side} {self.feature}: teacher {self.teacher} -> student {self.student} "
            f"({self.loss}, weight {self.weight:g})"
        )


def uniform_layers(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student j, teacher round(j * n_t / n_s)) for j = 1..n_s, halves rounded up, at least layer 1.

    The student's top layer meets the teacher's top layer and the others are
    spread evenly below it (12 -> 6 maps j to 2j, as in the paper).
    """
    return [(j, max(1, math.floor(j * n_teacher / n_student + 0.5))) for j in range(1, n_student + 1)]


def bottom_up(pair: LayerPair) -> tuple[int, int, int, int]:
    return (SIDES.index(pair.side), pair.student, pair.teacher, FEATURES.index(pair.feature))


def map_error(message: str) -> MgkdError:
    return MgkdError(f"loss 'internal': {message}")


def parse_entry(index: int, entry: Any) -> LayerPair:
    """One layer_map entry, its names and types checked; the layer ranges are checked in `check`."""
    where = f"layer_map entry {index}"
    if not isinstance(entry, dict):
        raise map_error(f"{where} must be a mapping {{{', '.join(MAP_KEYS)}}}, got {entry!r}")
    unknown = sorted(set(entry) - set(MAP_KEYS))
    if unknown:
        raise map_error(f"{where} has unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(MAP_KEYS)}")
    for key in ("teacher", "student"):
        if key not in entry:
            raise map_error(f"{where} needs `{key}` (a 1-based layer index)")
        if not isinstance(entry[key], int) or isinstance(entry[key], bool):
            raise map_error(f"{where}: `{key}` must be a 1-based layer index (an integer), got {entry[key]!r}")
    side = entry.get("side", "encoder")
    if side not in SIDES:
        raise map_error(f"{where}: unknown side {side!r}; choose one of: {', '.join(SIDES)}")
    feature = entry.get("feature", "hidden")
    if feature not in FEATURES:
        raise map_error(f"{where}: unknown feature {feature!r}; choose one of: {', '.join(FEATURES)}")
    loss = entry.get("loss", DEFAULT_LOSS[feature])
    if loss not in LOSSES[feature]:
        known = {name for names in LOSSES.values() for name in names}
        what = "wrong" if loss in known else "unknown"
        raise map_error(
            f"{where}: {what} loss {loss!r} for feature {feature!r}; {feature} is compared with "
            f"{' or '.join(LOSSES[feature])} (hidden: cosine or mse; attention: kl)"
        )
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise map_error(f"{where}: weight must be a number > 0, got {weight!r}")
    return LayerPair(side, feature, entry["teacher"], entry["student"], loss, float(weight))
