"""Distillation from internal representations (Aguilar et al. 2020, AAAI).

Soft labels say what the teacher outputs, not how it gets there; this term
makes the student's intermediate layers resemble the teacher's: hidden states
(cosine or MSE, through a learned projection when the widths differ) and
attention probabilities (KL). A layer map says which student layer learns from
which teacher layer; a schedule says when each pair is trained.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mgkd.config import ModelConfig
from mgkd.errors import MgkdError
from mgkd.losses.base import LossPlugin, TeacherNeeds, register
from mgkd.losses.distances import DISTANCES
from mgkd.losses.layer_map import (
    DEFAULT_LOSS,
    FEATURES,
    MAP_KEYS,
    SCHEDULES,
    SIDES,
    LayerPair,
    bottom_up,
    parse_entry,
    uniform_layers,
)
from mgkd.losses.layer_map import map_error as _error
from mgkd.models.registry import FEATURE_FIELDS, Architecture, architecture
from mgkd.outputs import ModelOutput, TargetBatch
from mgkd.vocabulary import PAD


@register
class InternalRepresentation(LossPlugin):
    """Match the student's hidden states and attention to the teacher's, layer by mapped layer.

    `layer_map` is "uniform" (every student layer on each side learns the
    teacher layer round(j * n_t / n_s); hidden states by cosine, plus attention
    by KL when `uniform_features` lists it) or a list of entries
    `{teacher, student, feature: hidden|attention, loss: cosine|mse|kl, weight, side: encoder|decoder}`
    with 1-based layers (defaults: side encoder, hidden -> cosine, attention ->
    kl, weight 1). Decoder attention is the decoder's self-attention. Hidden
    states of different widths meet through a learned linear projection
    (student -> teacher width, one per hidden entry, trained with the student
    and dropped after training). The term is the weighted mean of the active
    entries' distances (divided by their weights' sum, so its scale does not
    grow with the number of entries).

    Schedules, and the paper's algorithms (Aguilar et al. 2020 distil BERT
    layer by layer, matching each layer's attention by KL and its [CLS] vector
    by cosine, then train the output):
    - `joint`: every entry at every step, added to the other terms: all layers
      and the output at once, the usual intermediate-layer KD baseline.
    - `progressive`: the paper's progressive internal distillation (PID). The
      first `internal_share` of the budget is cut into equal phases, one per
      layer pair (side, teacher layer, student layer; a pair's hidden and
      attention entries train together) in bottom-up order: encoder before
      decoder, lower student layers first. In phase i only pair i is matched and
      this term trains alone (`exclusive`); after the share its scale is 0 and
      the output losses (label smoothing, soft labels) train the student.
    - `stacked`: the paper's stacked internal distillation (SID): the same
      phases, but phase i matches pairs 1..i, so lower layers keep their
      target while upper ones are added; then the output losses.
    The paper gives each layer a number of epochs; here phases split the step
    budget evenly, so they follow `train.max_steps`/`max_epochs` unchanged.
    After its phases the term is still computed, without gradients, so the
    logged `loss.internal` shows whether the layers drift from the teacher.
    """

    name = "internal"
    # Classification compares hidden states at [CLS] only and attention at every real query, as the paper.
    tasks = ("translation", "classification")
    description = (
        "internal-representation KD (Aguilar et al. 2020): hidden cosine/MSE with projections and attention KL "
        "on mapped layers; joint, progressive or stacked schedule"
    )
    # The default map (uniform, hidden only); instances set their own from their map.
    teacher_needs = TeacherNeeds(hidden=True)
    student_needs = TeacherNeeds(hidden=True)

    def __init__(
        self,
        *,
        layer_map: str | list[dict[str, Any]] = "uniform",
        uniform_features: list[str] | tuple[str, ...] = ("hidden",),
        schedule: str = "joint",
        internal_share: float = 0.5,
    ) -> None:
        if schedule not in SCHEDULES:
            raise _error(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if not 0.0 < internal_share <= 1.0:
            raise _error(
                f"internal_share must be in (0, 1] (the share of the budget for layer phases), got {internal_share}"
            )
        if isinstance(uniform_features, str):
            uniform_features = [uniform_features]
        bad = [f for f in uniform_features if f not in FEATURES]
        if bad or not uniform_features:
            raise _error(f"uniform_features must list some of: {', '.join(FEATURES)}; got {list(uniform_features)}")
        self.schedule = schedule
        self.internal_share = float(internal_share)
        self.uniform_features = tuple(f for f in FEATURES if f in uniform_features)
        if isinstance(layer_map, str):
            if layer_map != "uniform":
                raise _error(
                    f"layer_map must be 'uniform' or a list of entries {{{', '.join(MAP_KEYS)}}}, got {layer_map!r}"
                )
            self.explicit: list[LayerPair] | None = None
            features = set(self.uniform_features)
        else:
            if not isinstance(layer_map, (list, tuple)) or not layer_map:
                raise _error(
                    f"layer_map must be 'uniform' or a non-empty list of entries "
                    f"{{{', '.join(MAP_KEYS)}}}, got {layer_map!r}"
                )
            self.explicit = [parse_entry(i, e) for i, e in enumerate(layer_map, start=1)]
            seen: set[str] = set()
            for p in self.explicit:
                if p.key in seen:
                    raise _error(
                        f"layer_map lists {p.side} {p.feature} teacher {p.teacher} -> student "
                        f"{p.student} twice; give it once with the summed weight"
                    )
                seen.add(p.key)
            features = {p.feature for p in self.explicit}
        # What the trainer must ask both forwards for (instance attributes, like soft_label's top_k).
        needs = TeacherNeeds(hidden="hidden" in features, attention="attention" in features)
        self.teacher_needs = needs
        self.student_needs = needs
        self.pairs: list[LayerPair] = []  # the resolved map, set by `bind`/`setup`
        self.projections = nn.ModuleDict()
        # Each active entry's last distance (detached), for logging without a device sync.
        self.last_pair_losses: dict[str, torch.Tensor] = {}

    # -- the map -----------------------------------------------------------------

    def resolved_map(self, student: ModelConfig, teacher: ModelConfig) -> list[LayerPair]:
        """The entries this term trains for these models, in bottom-up (phase) order."""
        if self.explicit is not None:
            return sorted(self.explicit, key=bottom_up)
        s_arch, t_arch = _architecture(student, "student"), _architecture(teacher, "teacher")
        exposed = s_arch.features & t_arch.features
        pairs = []
        for side in SIDES:
            for j, t in uniform_layers(s_arch.layer_count(student, side), t_arch.layer_count(teacher, side)):
                for feature in self.uniform_features:
                    if (side, feature) in exposed:
                        pairs.append(LayerPair(side, feature, t, j, DEFAULT_LOSS[feature]))
        return sorted(pairs, key=bottom_up)

    @staticmethod
    def phases(pairs: list[LayerPair]) -> list[list[LayerPair]]:
        """The entries grouped by layer pair (side, teacher, student), in bottom-up order."""
        groups: dict[tuple[str, int, int], list[LayerPair]] = {}
        for p in sorted(pairs, key=bottom_up):
            groups.setdefault((p.side, p.teacher, p.student), []).append(p)
        return list(groups.values())

    def describe_map(self, student: ModelConfig, teacher: ModelConfig) -> str:
        return "; ".join(p.describe() for p in self.resolved_map(student, teacher)) or "(empty)"

    def check(self, student: ModelConfig, teacher: ModelConfig | None) -> None:
        """Raise MgkdError when the map does not fit the two models (before anything trains)."""
        if teacher is None:
            raise _error(
                "needs a teacher's hidden states or attention; generation 0 has none, so use "
                "label_smoothing there and `internal` in generations.student.losses"
            )
        s_arch, t_arch = _architecture(student, "student"), _architecture(teacher, "teacher")
        s_feat, t_feat = s_arch.features, t_arch.features
        pairs = self.resolved_map(student, teacher)
        if not pairs:
            raise _error(
                f"the uniform map of {', '.join(self.uniform_features)} is empty: the student "
                f"({student.arch}) exposes {_names(s_feat)} and the teacher ({teacher.arch}) "
                f"{_names(t_feat)}; change uniform_features or give an explicit layer_map"
            )
        for p in pairs:
            for who, cfg, arch in (("student", student, s_arch), ("teacher", teacher, t_arch)):
                exposed = arch.features
                if (p.side, p.feature) not in exposed:
                    raise _error(
                        f"entry '{p.describe()}': the {who}'s arch {cfg.arch!r} does not expose "
                        f"{p.side} {p.feature} (it exposes {_names(exposed)}); change layer_map"
                    )
                layer, n = getattr(p, who), arch.layer_count(cfg, p.side)
                if not 1 <= layer <= n:
                    raise _error(
                        f"entry '{p.describe()}': {who} layer {layer} is outside the {who}'s {p.side} "
                        f"(layers 1..{n}); resolved map: {self.describe_map(student, teacher)}"
                    )

    # -- training hooks ----------------------------------------------------------

    def bind(
        self, student: ModelConfig, teacher: ModelConfig, device: torch.device | str = "cpu"
    ) -> list[nn.Parameter]:
        """Resolve the map for these models and make the projections; returns their parameters."""
        self.check(student, teacher)
        self.pairs = self.resolved_map(student, teacher)
        self.projections = nn.ModuleDict()
        for p in self.pairs:
            s_width = architecture(student.arch).hidden_width(student, p.side)
            t_width = architecture(teacher.arch).hidden_width(teacher, p.side)
            if p.feature == "hidden" and s_width != t_width:
                # No bias: a constant output could point at the teacher's mean
                # direction and lower the cosine without the student learning anything.
                self.projections[p.key] = nn.Linear(s_width, t_width, bias=False)
        self.projections.to(device)
        return list(self.projections.parameters())

    def setup(self, student: nn.Module, teacher: nn.Module | None) -> list[nn.Parameter]:
        if teacher is None:
            raise MgkdError("loss 'internal' needs a teacher; generation 0 has none")
        device = next(student.parameters()).device
        return self.bind(_model_config(student, "student"), _model_config(teacher, "teacher"), device)

    def _phase(self) -> int | None:
        """The layer phase now (0-based), or None under `joint` and after the share."""
        if self.schedule == "joint" or self.progress >= self.internal_share:
            return None
        n = len(self.phases(self.pairs)) or 1
        return min(n - 1, int(self.progress * n / self.internal_share))

    def active_pairs(self) -> list[LayerPair]:
        """The entries matched at the current progress (all of them outside the layer phases)."""
        phase = self._phase()
        if phase is None:
            return list(self.pairs)
        groups = self.phases(self.pairs)
        chosen = groups[phase : phase + 1] if self.schedule == "progressive" else groups[: phase + 1]
        return [p for g in chosen for p in g]

    def scale(self) -> float:
        done = self.schedule != "joint" and self.progress >= self.internal_share
        return 0.0 if done else 1.0

    def exclusive(self) -> bool:
        return self.schedule != "joint" and self.progress < self.internal_share

    # -- the term ----------------------------------------------------------------

    def __call__(self, student: ModelOutput, teacher: ModelOutput | None, batch: TargetBatch) -> torch.Tensor:
        if teacher is None:
            raise ValueError("internal needs a teacher; generation 0 has none")
        if not self.pairs:
            raise RuntimeError("internal: call setup() (or bind()) before computing the term; the trainer does")
        if self.scale() == 0.0:
            # Past the layer phases: the value is only logged, so no graph is kept.
            with torch.no_grad():
                return self._weighted(student, teacher, batch)
        return self._weighted(student, teacher, batch)

    def _weighted(self, student: ModelOutput, teacher: ModelOutput, batch: TargetBatch) -> torch.Tensor:
        masks = _masks(batch)
        total: torch.Tensor | float = 0.0
        weights = 0.0
        self.last_pair_losses = {}
        for p in self.active_pairs():
            s, t = _feature(student, p, "student"), _feature(teacher, p, "teacher")
            if p.key in self.projections:
                s = self.projections[p.key](s)
            value = DISTANCES[p.loss](s, t, masks[(p.side, p.feature)])
            self.last_pair_losses[p.key] = value.detach()
            total = total + p.weight * value
            weights += p.weight
        return total / weights  # type: ignore[return-value]


# -- helpers -------------------------------------------------------------------


def _masks(batch: TargetBatch) -> dict[tuple[str, str], torch.Tensor]:
    """Where each (side, feature) is compared: attention at every real query; encoder hidden states where
    the prediction reads them (every real token of a seq2seq model, a classifier's [CLS] only, as
    Aguilar et al. match it); decoder states at real target tokens."""
    dec = batch.target_mask
    return {("encoder", "hidden"): batch.readout_mask(), ("encoder", "attention"): batch.src.ne(PAD),
            ("decoder", "hidden"): dec, ("decoder", "attention"): dec}  # fmt: skip


def _names(exposed: frozenset[tuple[str, str]] | set[tuple[str, str]]) -> str:
    return ", ".join(f"{s} {f}" for s, f in sorted(exposed, key=lambda x: (SIDES.index(x[0]), x[1]))) or "nothing"


def _architecture(cfg: ModelConfig, who: str) -> Architecture:
    """The declaration of the model's arch: which features it exposes, how many layers each side has."""
    try:
        return architecture(cfg.arch)
    except MgkdError as e:
        raise _error(f"the {who}: {e}") from None


def _model_config(model: nn.Module, who: str) -> ModelConfig:
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"internal: the {who} model ({type(model).__name__}) has no `cfg` ModelConfig")
    return cfg


def _feature(out: Any, p: LayerPair, who: str) -> torch.Tensor:
    """The (B, L, D) hidden states or (B, H, Lq, Lk) attention of layer p.<who> on p.side."""
    layers = getattr(out, FEATURE_FIELDS[(p.side, p.feature)])
    index = getattr(p, who)
    if len(layers) < index:
        # A bug, not a config error: check() has verified the layer exists.
        raise RuntimeError(
            f"internal: the {who}'s output has {len(layers)} {p.side} {p.feature} layer(s), layer {index} is "
            f"mapped; the forward must run with return_hidden/return_attention (see internal.{who}_needs)"
        )
    return layers[index - 1]
