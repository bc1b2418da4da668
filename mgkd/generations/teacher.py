"""What the teacher gives a generation: the frozen teacher itself, the student's initial weights, and the
teacher-made data (its top-k cache, the views of pseudo-targets), each built once per teacher."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from mgkd.config import ExternalTeacherConfig
from mgkd.errors import MgkdError
from mgkd.files import sha256_file
from mgkd.generations.checkpoint import load_checkpoint
from mgkd.generations.loop import Events, first_on_worker_0, resolve_device
from mgkd.generations.spec import GenerationSpec
from mgkd.generations.teacher_cache import TeacherCache, load_or_build_cache
from mgkd.generations.views import GenerationViewContext
from mgkd.losses import Criterion
from mgkd.losses.base import ViewData
from mgkd.models import build_model
from mgkd.models.cutting import cut_layers
from mgkd.models.ensemble import EnsembleSeq2Seq
from mgkd.models.external import HFTeacher
from mgkd.tasks.translation import PreparedData


def build_student(spec: GenerationSpec, vocab_size: int, teacher: torch.nn.Module | None,
                  num_classes: int | None = None) -> torch.nn.Module:  # fmt: skip
    """A new model object (`num_classes`: a classifier's); with init 'teacher' or 'cut' its tensors are copies of
    the teacher's, never shared."""
    student = build_model(spec.model, vocab_size, num_classes)
    if spec.init == "teacher" and teacher is not None:
        # load_state_dict copies into the student's own storage.
        student.load_state_dict(teacher.state_dict())
    elif spec.init == "cut" and teacher is not None:
        cut_layers(student, teacher, spec.cut_layers or {})
    return student


def load_teacher(
    checkpoint: str | list[str], sha256: str | list[str] | None, external: ExternalTeacherConfig | None = None
) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """The frozen teacher, the model init 'teacher'/'cut' copies from, and the teacher's checksum.

    A list of checkpoints is an ensemble (BAN-E): it teaches with its averaged
    log-probabilities; students copy from its last (newest) member; its checksum
    is the sha256 of the members' checksums joined by commas. A folder is an
    external generation 0 (`HFTeacher`, decoding as `external` says); its
    checksum is the folder's.
    """
    if isinstance(checkpoint, str) and Path(checkpoint).is_dir():
        ext = external or ExternalTeacherConfig(path=Path(checkpoint))
        hf = HFTeacher.load(checkpoint, sha256 if isinstance(sha256, str) else None, ext.source_prefix,
                            ext.max_new_tokens)  # fmt: skip
        return hf, hf, hf.sha256
    paths = [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)
    if sha256 is None:
        shas: list[str | None] = [None] * len(paths)
    else:
        shas = [sha256] if isinstance(sha256, str) else list(sha256)
    if len(shas) != len(paths):
        raise ValueError(f"{len(paths)} teacher checkpoints but {len(shas)} checksums")
    members = [load_checkpoint(Path(p), s)[0] for p, s in zip(paths, shas)]
    if len(members) == 1:
        teacher: torch.nn.Module = members[0]
        digest = shas[0] or ""
    else:
        teacher = EnsembleSeq2Seq(members)
        digest = hashlib.sha256(",".join(s or "" for s in shas).encode()).hexdigest()
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher, members[-1], digest


TeacherSignal = tuple[torch.nn.Module, torch.nn.Module, str, "TeacherCache | None"]


def teacher_signal(spec: GenerationSpec, data: PreparedData, checkpoint: Any, sha256: Any, device: torch.device,
                    events: Events, world: int) -> TeacherSignal:  # fmt: skip
    """The frozen teacher on `device`, the model init copies from, its checksum, and with teacher_signal
    "cached" its top-k on disk (built once per teacher, data and k)."""
    if checkpoint is None:
        raise ValueError(f"generation {spec.index} needs its teacher's checkpoint")
    teacher, init_source, digest = load_teacher(checkpoint, sha256, spec.teacher_external)
    teacher.to(device)
    cache = None
    if spec.teacher_signal == "cached":
        cache = first_on_worker_0(world, lambda: load_or_build_cache(
            teacher, digest or sha256_file(Path(str(checkpoint))), data, spec.cache_k, spec.train.max_tokens,
            device, events,
        ))  # fmt: skip
    return teacher, init_source, digest, cache


def teacher_views(criterion: Criterion, teacher: torch.nn.Module, digest: str, spec: GenerationSpec,
                   data: PreparedData, device: torch.device, events: Events,
                   world: int) -> tuple[dict[str, ViewData], dict[str, float]]:  # fmt: skip
    """Teacher-made views of the data (pseudo-targets), built once per teacher and stored; worker 0 builds
    each, the other workers then read it from the store."""
    views: dict[str, ViewData] = {}
    view_metrics: dict[str, float] = {}
    ctx = GenerationViewContext(teacher, digest, data, spec.eval, Path(data.cache_dir) / "teacher", device,
                                spec.seed, events)  # fmt: skip
    for name, _, plugin in criterion.terms:
        if plugin.view != "gold" and plugin.view not in views:
            made = first_on_worker_0(world, lambda plugin=plugin: plugin.build_view(ctx))
            if made is None:
                raise MgkdError(f"loss {name!r} is on view {plugin.view!r} but built no examples for it")
            views[plugin.view] = made
            view_metrics.update(made.metrics or {})
    return views, view_metrics


def prepare_teacher_outputs(spec: GenerationSpec, data: PreparedData, teacher_checkpoint: Any, teacher_sha256: Any,
                            events: Events = lambda _: None) -> None:  # fmt: skip
    """Build and store what the teacher gives this generation (cached top-k, pseudo-target views) once, so the
    Tune trials of the generation read it instead of each recomputing it (and racing to write it)."""
    if not spec.has_teacher:
        return
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    device = resolve_device(spec.train.device)
    teacher, _, digest, _ = teacher_signal(spec, data, teacher_checkpoint, teacher_sha256, device, events, 1)
    teacher_views(Criterion(spec.losses), teacher, digest, spec, data, device, events, 1)
