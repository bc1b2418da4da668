"""Layer cutting: a student initialised from a subset of its teacher's layers.

The seed method for compressing a deep model (as in XLM/DistilBERT-style
students): the student has fewer encoder/decoder layers of the same width; its
embeddings, final norms and the chosen layers are copies of the teacher's.
Copies, never shared storage: training the student must not touch the teacher.

Layer indices in configs are 1-based (layer 1 is the bottom), like the
internal-representation layer maps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mgkd.config import ModelConfig
from mgkd.errors import MgkdError
from mgkd.models.registry import architecture, architectures

CutLayers = str | list[int] | dict[str, list[int]]


def select_layers(how: str | list[int], n_teacher: int, n_student: int, side: str = "encoder") -> list[int]:
    """The teacher's layers (1-based, bottom-up) that become the student's layers 1..n_student."""
    if isinstance(how, list):
        chosen = list(how)
    elif how == "first":
        chosen = list(range(1, n_student + 1))
    elif how == "every_other":
        chosen = list(range(1, n_teacher + 1, 2))[:n_student]
    elif how == "spread":
        # Evenly spaced, always keeping the top layer (the one next to the output).
        chosen = [round(n_teacher * (j + 1) / n_student) for j in range(n_student)]
    else:
        raise MgkdError(f"cut_layers {how!r} for the {side}: use first, every_other, spread or a list of layers")
    if len(chosen) != n_student:
        raise MgkdError(
            f"cut_layers {how!r} gives {len(chosen)} {side} layer(s) {chosen}, but the student has {n_student}; "
            f"the teacher has {n_teacher} (every_other fits students of up to {(n_teacher + 1) // 2} layers)"
        )
    bad = [i for i in chosen if not 1 <= i <= n_teacher]
    if bad:
        raise MgkdError(f"cut_layers: {side} layer(s) {bad} outside the teacher's 1..{n_teacher}")
    return chosen


def plan_cut(how: CutLayers, student: ModelConfig, teacher: ModelConfig) -> dict[str, list[int]]:
    """Check that a cut is possible and return the teacher layers per side; raises MgkdError otherwise."""
    # Which architectures can be cut, and their layer stacks, are their declarations.
    cuttable = sorted(name for name, arch in architectures().items() if arch.cuttable)
    if student.arch != teacher.arch or student.arch not in cuttable:
        raise MgkdError(
            f"init: cut copies Transformer layers between models of one arch ({', '.join(cuttable)}); got teacher "
            f"{teacher.arch} and student {student.arch} (use init: scratch across architectures)"
        )
    same = ("d_model", "n_heads", "ff_dim")
    diff = [k for k in same if getattr(student, k) != getattr(teacher, k)]
    if diff:
        raise MgkdError(
            "init: cut copies whole layers, so the student keeps the teacher's "
            + ", ".join(f"{k} ({getattr(teacher, k)}, student has {getattr(student, k)})" for k in diff)
            + "; change only encoder_layers/decoder_layers, or use init: scratch"
        )
    plan = {}
    for side, attr in architecture(student.arch).layers:
        spec = how.get(side, "first") if isinstance(how, dict) else how
        plan[side] = select_layers(spec, getattr(teacher, attr), getattr(student, attr), side)
    return plan


@torch.no_grad()
def cut_layers(student: nn.Module, teacher: nn.Module, plan: dict[str, list[int]]) -> dict[str, Any]:
    """Copy the teacher's embeddings, final norms and planned layers into the student, tensor by tensor."""
    source = teacher.state_dict()
    target = student.state_dict()
    copied: dict[str, torch.Tensor] = {}
    for name in target:
        side, _, rest = name.partition(".")
        if side in plan and rest.split(".")[0].isdigit():
            j, _, tail = rest.partition(".")
            src_name = f"{side}.{plan[side][int(j)] - 1}.{tail}"
        else:
            src_name = name
        if src_name not in source or source[src_name].shape != target[name].shape:
            raise MgkdError(f"cannot cut: the teacher has no tensor {src_name} shaped like the student's {name}")
        copied[name] = source[src_name].clone()
    student.load_state_dict(copied)
    return {side: layers for side, layers in plan.items()}
