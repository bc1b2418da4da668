"""Fair comparisons of recorded runs: what differs between two of them, and what a difference means.

A comparison may say "only X differs" when the MLflow params (seed included)
are equal but for X and the runs started from the same weights (equal
`mgkd.init_sha256`). A verdict ("A is ahead") is given only when the mean
difference over seeds is larger than the spread over seeds; inside it, the
report says "no measurable difference".
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mgkd.errors import MgkdError

# Params that name a run's place in the lineage, not how it was trained.
PLACE = ("generation", "teacher_generations")


def params_diff(a: dict[str, Any], b: dict[str, Any], may_differ: Sequence[str] = ()) -> list[str]:
    """The params in which two runs differ, beyond their place in the lineage and the keys (or key prefixes
    ending in ".") in `may_differ`. The seed counts: runs of different seeds differ in weights and batches."""

    def allowed(p: str) -> bool:
        return p in PLACE or any(p == m or (m.endswith(".") and p.startswith(m)) for m in may_differ)

    a = {p: v for p, v in a.items() if not allowed(p)}
    b = {p: v for p, v in b.items() if not allowed(p)}
    return sorted(p for p in set(a) | set(b) if a.get(p) != b.get(p))


def check_only(what: str, a: dict[str, Any], b: dict[str, Any], may_differ: Sequence[str],
               init_a: str | None, init_b: str | None) -> str:  # fmt: skip
    """Raise unless runs `a` and `b` (their params) differ only in `may_differ` and start from the same weights;
    returns the sentence a report may print."""
    diff = params_diff(a, b, may_differ)
    if diff:
        raise MgkdError(f"{what}: the runs differ in {', '.join(diff)}, not only in {', '.join(may_differ)}")
    if not init_a or not init_b:
        raise MgkdError(f"{what}: a run has no recorded initial-weight hash (mgkd.init_sha256); re-run it")
    if init_a != init_b:
        raise MgkdError(f"{what}: the runs started from different weights (init sha256 {init_a[:12]}… vs "
                        f"{init_b[:12]}…), so more than {', '.join(may_differ) or 'their params'} differs")  # fmt: skip
    differing = params_diff(a, b)  # what does differ, named as a reader would: "the losses" for loss.*
    names = sorted({"the losses" if p.startswith("loss.") else p for p in differing})
    weights = f"the same initial weights (sha256 {init_a[:12]}…)"
    if not names:  # e.g. the same recipe under two teachers: what differs is not a param, the caller names it
        return f"params (seed included) all equal, and {weights}"
    return f"only {' and '.join(names)} differ: params (seed included) checked equal otherwise, and {weights}"


@dataclass(frozen=True)
class Verdict:
    gap: float  # mean of a − mean of b
    spread: float | None  # the larger min–max range of the two sides over seeds (None: one seed)
    measurable: bool
    text: str


def verdict(a: Sequence[float], b: Sequence[float], a_name: str, b_name: str, metric: str) -> Verdict:
    """Compare two recipes' scores over seeds (one score per seed each).

    The gap counts only when it is larger than the spread over seeds, the larger min–max range of either
    side: a difference inside what a change of seed alone moves is "no measurable difference". One seed has
    no spread, so it gives no verdict.
    """
    if not a or not b:
        raise ValueError("verdict needs at least one score per side")
    gap = statistics.mean(a) - statistics.mean(b)
    head = f"{a_name} − {b_name} {metric} {gap:+.2f}"
    if len(a) < 2 or len(b) < 2:
        text = f"{head} from one seed: no spread over seeds to measure it against, so no verdict (run ≥ 2 seeds)"
        return Verdict(gap, None, False, text)
    spread = max(max(a) - min(a), max(b) - min(b))
    seeds = min(len(a), len(b))
    if abs(gap) <= spread:
        text = f"{head} (mean of {seeds} seeds) is inside the seed spread {spread:.2f}: no measurable difference"
        return Verdict(gap, spread, False, text)
    ahead = a_name if gap > 0 else b_name
    text = f"{head} (mean of {seeds} seeds) is larger than the seed spread {spread:.2f}: {ahead} is ahead"
    return Verdict(gap, spread, True, text)
