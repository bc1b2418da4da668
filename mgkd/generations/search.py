"""A Ray Tune trial's values put into a generation (`apply_search`), and the points of a search space that
the schedule checks before anything trains (`search_corners`)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mgkd.config import LossTerm, SearchConfig, TrainConfig
from mgkd.errors import MgkdError

if TYPE_CHECKING:
    from mgkd.generations.spec import GenerationSpec


def apply_search(spec: GenerationSpec, point: dict[str, Any]) -> GenerationSpec:
    """The generation with a Tune trial's values (`train.<field>`, `loss.<plugin>.weight|<param>`) put in."""
    where = f"generation {spec.index}: search.space"
    train = spec.train.model_dump()
    losses = [t.model_copy(deep=True) for t in spec.losses]
    for key, value in point.items():
        section, _, rest = key.partition(".")
        if section == "train" and rest in TrainConfig.model_fields:
            train[rest] = value
        elif section == "loss" and "." in rest:
            name, _, param = rest.partition(".")
            terms = [t for t in losses if t.name == name]
            if not terms:
                raise MgkdError(
                    f"{where}.{key}: the generation has no loss term {name!r} (its terms: "
                    f"{', '.join(t.name for t in losses) or 'none'})"
                )
            for t in terms:
                if param == "weight":
                    t.weight = value
                else:
                    t.params[param] = value
        else:
            raise MgkdError(
                f"{where}.{key}: keys are train.<field> (one of {', '.join(TrainConfig.model_fields)}), "
                "loss.<plugin>.weight or loss.<plugin>.<param>"
            )
    try:
        new_train = TrainConfig.model_validate(train)
        new_losses = [LossTerm.model_validate(t.model_dump()) for t in losses]
    except ValueError as e:
        raise MgkdError(f"{where}: {str(e).splitlines()[0]} ({point})") from None
    return replace(spec, train=new_train, losses=new_losses)


def search_corners(search: SearchConfig) -> list[dict[str, Any]]:
    """Points that reach every value a domain can give at its ends: checked before anything trains."""
    values = {}
    for key, domain in search.space.items():
        kind, v = next(iter(domain.items()))
        values[key] = (
            list(v) if kind in ("choice", "grid") else ([v[0], v[1] - 1] if kind == "randint" else [v[0], v[1]])
        )
    longest = max(len(v) for v in values.values())
    return [{k: v[min(i, len(v) - 1)] for k, v in values.items()} for i in range(longest)]
