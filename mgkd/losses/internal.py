"""Distillation from internal representations (Aguilar et al. 2020, AAAI).

Soft labels say what the teacher outputs, not how it gets there; this term
makes the student's intermediate layers resemble the teacher's: hidden states
(cosine or MSE, through a learned projection when the widths differ) and
attention probabilities (KL). A layer map says which student layer learns from
which teacher layer; a schedule says when each pair is trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mgkd.config import ModelConfig
from mgkd.errors import MgkdError
from mgkd.losses.base import LossPlugin, TeacherNeeds, register
from mgkd.outputs import ModelOutput, TargetBatch
from mgkd.vocabulary import PAD

SIDES = ("encoder", "decoder")  # bottom-up: the decoder reads the encoder's output
FEATURES = ("hidden", "attention")
LOSSES = {"hidden": ("cosine", "mse"), "attention": ("kl",)}
DEFAULT_LOSS = {"hidden": "cosine", "attention": "kl"}
SCHEDULES = ("joint", "progressive", "stacked")
MAP_KEYS = ("teacher", "student", "feature", "loss", "weight", "side")

# What each architecture's forward(return_hidden=..., return_attention=...) fills,
# as (side, feature). A new architecture declares its own row, e.g. a BiGRU
# seq2seq with only encoder states: {("encoder", "hidden")}. Checked at config
# time, so a map the student cannot serve fails before anything trains.
ARCH_FEATURES: dict[str, frozenset[tuple[str, str]]] = {
    "transformer": frozenset((side, feature) for side in SIDES for feature in FEATURES),
    # The BiGRU returns one hidden entry per side (the top encoder states, the decoder's attentional
    # states), so it counts as one layer per side here; its attention is not per layer and head.
    "bigru": frozenset({("encoder", "hidden"), ("decoder", "hidden")}),
    # The encoder classifier: its layers' states and attention (hidden states are compared at [CLS] only).
    "transformer_classifier": frozenset({("encoder", "hidden"), ("encoder", "attention")}),
}

# Probabilities are clamped before the log: masked keys have probability 0.
_EPS = 1e-12


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


# -- the three distances ----------------------------------------------------------


def hidden_cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over mask positions of 1 - cos(student, teacher); states (B, L, D), mask (B, L) True = real token.

    Cosine ignores the states' scale, which differs between models of different
    width and depth (the residual stream grows layer by layer).
    """
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)
    m = mask.to(cos.dtype)
    return ((1.0 - cos) * m).sum() / m.sum().clamp_min(1.0)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over mask positions and the D dimensions of the squared error."""
    sq = (student.float() - teacher.float()).pow(2).mean(-1)
    m = mask.to(sq.dtype)
    return (sq * m).sum() / m.sum().clamp_min(1.0)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over the keys, averaged over heads and mask (non-padding) query positions.

    Attention is (B, H, Lq, Lk) probabilities; mask (B, Lq). Keys at padding
    have probability 0 in both, so they add nothing (0 * log 0 is taken as 0).
    With different head counts there is no head-to-head correspondence, so
    both sides are first averaged over their heads and the mean distributions
    compared; by convexity this KL is at most the mean per-head KL, a looser
    signal than matching heads one by one.
    """
    s, t = student.float(), teacher.float()
    if s.size(1) != t.size(1):
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    kl = (torch.xlogy(t, t) - t * s.clamp_min(_EPS).log()).sum(-1).mean(1)  # (B, Lq)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0)


DISTANCES = {"cosine": hidden_cosine, "mse": hidden_mse, "kl": attention_kl}


# -- the map -------------------------------------------------------------------


def uniform_layers(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student j, teacher round(j * n_t / n_s)) for j = 1..n_s, halves rounded up, at least layer 1.

    The student's top layer meets the teacher's top layer and the others are
    spread evenly below it (12 -> 6 maps j to 2j, as in the paper).
    """
    return [(j, max(1, math.floor(j * n_teacher / n_student + 0.5))) for j in range(1, n_student + 1)]


def layer_count(cfg: ModelConfig, side: str) -> int:
    if cfg.arch == "bigru":
        return 1  # one exposed state per side (see ARCH_FEATURES)
    return cfg.encoder_layers if side == "encoder" else cfg.decoder_layers


def hidden_width(cfg: ModelConfig, side: str) -> int:
    """Width of a side's hidden states (every transformer layer outputs d_model)."""
    return cfg.d_model


def _bottom_up(pair: LayerPair) -> tuple[int, int, int, int]:
    return (SIDES.index(pair.side), pair.student, pair.teacher, FEATURES.index(pair.feature))


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
            self.explicit = [_parse_entry(i, e) for i, e in enumerate(layer_map, start=1)]
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
            return sorted(self.explicit, key=_bottom_up)
        exposed = _features(student, "student") & _features(teacher, "teacher")
        pairs = []
        for side in SIDES:
            for j, t in uniform_layers(layer_count(student, side), layer_count(teacher, side)):
                for feature in self.uniform_features:
                    if (side, feature) in exposed:
                        pairs.append(LayerPair(side, feature, t, j, DEFAULT_LOSS[feature]))
        return sorted(pairs, key=_bottom_up)

    @staticmethod
    def phases(pairs: list[LayerPair]) -> list[list[LayerPair]]:
        """The entries grouped by layer pair (side, teacher, student), in bottom-up order."""
        groups: dict[tuple[str, int, int], list[LayerPair]] = {}
        for p in sorted(pairs, key=_bottom_up):
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
        s_feat, t_feat = _features(student, "student"), _features(teacher, "teacher")
        pairs = self.resolved_map(student, teacher)
        if not pairs:
            raise _error(
                f"the uniform map of {', '.join(self.uniform_features)} is empty: the student "
                f"({student.arch}) exposes {_names(s_feat)} and the teacher ({teacher.arch}) "
                f"{_names(t_feat)}; change uniform_features or give an explicit layer_map"
            )
        for p in pairs:
            for who, cfg, exposed in (("student", student, s_feat), ("teacher", teacher, t_feat)):
                if (p.side, p.feature) not in exposed:
                    raise _error(
                        f"entry '{p.describe()}': the {who}'s arch {cfg.arch!r} does not expose "
                        f"{p.side} {p.feature} (it exposes {_names(exposed)}); change layer_map"
                    )
                layer, n = getattr(p, who), layer_count(cfg, p.side)
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
            s_width, t_width = hidden_width(student, p.side), hidden_width(teacher, p.side)
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


def _error(message: str) -> MgkdError:
    return MgkdError(f"loss 'internal': {message}")


def _names(exposed: frozenset[tuple[str, str]] | set[tuple[str, str]]) -> str:
    return ", ".join(f"{s} {f}" for s, f in sorted(exposed, key=lambda x: (SIDES.index(x[0]), x[1]))) or "nothing"


def _features(cfg: ModelConfig, who: str) -> frozenset[tuple[str, str]]:
    if cfg.arch not in ARCH_FEATURES:
        raise _error(
            f"the {who}'s arch {cfg.arch!r} does not declare which internal features it exposes; "
            f"add it to mgkd.losses.internal.ARCH_FEATURES (known: {', '.join(sorted(ARCH_FEATURES))})"
        )
    return ARCH_FEATURES[cfg.arch]


def _model_config(model: nn.Module, who: str) -> ModelConfig:
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"internal: the {who} model ({type(model).__name__}) has no `cfg` ModelConfig")
    return cfg


def _feature(out: Any, p: LayerPair, who: str) -> torch.Tensor:
    """The (B, L, D) hidden states or (B, H, Lq, Lk) attention of layer p.<who> on p.side."""
    if p.feature == "hidden":
        layers = out.encoder_hidden if p.side == "encoder" else out.decoder_hidden
    else:
        layers = out.encoder_attention if p.side == "encoder" else out.decoder_self_attention
    index = getattr(p, who)
    if len(layers) < index:
        # A bug, not a config error: check() has verified the layer exists.
        raise RuntimeError(
            f"internal: the {who}'s output has {len(layers)} {p.side} {p.feature} layer(s), layer {index} is "
            f"mapped; the forward must run with return_hidden/return_attention (see internal.{who}_needs)"
        )
    return layers[index - 1]


def _parse_entry(index: int, entry: Any) -> LayerPair:
    """One layer_map entry, its names and types checked; the layer ranges are checked in `check`."""
    where = f"layer_map entry {index}"
    if not isinstance(entry, dict):
        raise _error(f"{where} must be a mapping {{{', '.join(MAP_KEYS)}}}, got {entry!r}")
    unknown = sorted(set(entry) - set(MAP_KEYS))
    if unknown:
        raise _error(f"{where} has unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(MAP_KEYS)}")
    for key in ("teacher", "student"):
        if key not in entry:
            raise _error(f"{where} needs `{key}` (a 1-based layer index)")
        if not isinstance(entry[key], int) or isinstance(entry[key], bool):
            raise _error(f"{where}: `{key}` must be a 1-based layer index (an integer), got {entry[key]!r}")
    side = entry.get("side", "encoder")
    if side not in SIDES:
        raise _error(f"{where}: unknown side {side!r}; choose one of: {', '.join(SIDES)}")
    feature = entry.get("feature", "hidden")
    if feature not in FEATURES:
        raise _error(f"{where}: unknown feature {feature!r}; choose one of: {', '.join(FEATURES)}")
    loss = entry.get("loss", DEFAULT_LOSS[feature])
    if loss not in LOSSES[feature]:
        known = {name for names in LOSSES.values() for name in names}
        what = "wrong" if loss in known else "unknown"
        raise _error(
            f"{where}: {what} loss {loss!r} for feature {feature!r}; {feature} is compared with "
            f"{' or '.join(LOSSES[feature])} (hidden: cosine or mse; attention: kl)"
        )
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise _error(f"{where}: weight must be a number > 0, got {weight!r}")
    return LayerPair(side, feature, entry["teacher"], entry["student"], loss, float(weight))
