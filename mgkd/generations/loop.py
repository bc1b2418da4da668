"""The parts of a generation's training loop that every task shares, and what a run reports.

`Events` and `Session` are how a generation talks to whoever runs it (the
console, Ray Train, Ray Tune); `GenerationResult` is what it hands back.
The rest is plain arithmetic of a step: the learning-rate schedule, the
step-event window, and data parallelism (when a torch.distributed process
group is up, each worker takes every world-th batch of the epoch's order and
the gradients are averaged with one all-reduce per step).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mgkd.errors import MgkdError
from mgkd.generations.checkpoint import parameter_hash
from mgkd.generations.precision import Precision
from mgkd.generations.spec import GenerationSpec
from mgkd.generations.teacher_cache import TeacherCache
from mgkd.losses.base import TeacherNeeds
from mgkd.outputs import Events


class Session(Protocol):
    """Where a generation reports besides `events`, when a framework runs it (Ray Train, Ray Tune)."""

    # True: report at epoch ends only (a Tune scheduler compares trials there); False: at every saved state too.
    epoch_reports_only: bool

    def restored(self) -> Path | None:
        """The folder holding the `train_state.pt` of an earlier attempt of this run, if it was restarted."""
        ...

    def report(self, metrics: dict[str, float], state: Path | None) -> None:
        """Called by every worker at the same points; `state` (worker 0 only) is the saved training state."""
        ...

    def stop_requested(self) -> bool:
        """Whether the driver asked the run to stop (its Ctrl-C): checked once per step; the run then saves its
        state after that step and ends as interrupted, as a Ctrl-C in this process would."""
        ...


class StepWindow:
    """The loss terms' means and the target-token rate over the steps since the last step event."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.tokens, self.t0 = 0, time.perf_counter()

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], tokens: int) -> None:
        self.tokens += tokens
        for key, value in [("loss", loss), *((f"loss.{n}", v) for n, v in parts.items())]:
            self.sums[key] = self.sums.get(key, 0.0) + float(value.detach())
            self.counts[key] = self.counts.get(key, 0) + 1

    def emit(self, events: Events, step: int, epoch: int, lr: float) -> None:
        """One step event with the window's means, lr and tokens/s; then a new window starts."""
        dt = time.perf_counter() - self.t0
        metrics = {k: v / self.counts[k] for k, v in self.sums.items()}
        metrics["lr"] = lr
        metrics["train_tokens_per_s"] = self.tokens / max(dt, 1e-9)
        events({"type": "step", "step": step, "epoch": epoch, "metrics": metrics})
        self.reset()


@dataclass
class GenerationResult:
    index: int
    checkpoint: str
    checkpoint_sha256: str
    parameters: int
    metrics: dict[str, float]
    # The teacher's parameter hash before and after training: equal, or training raised.
    teacher_hash: str | None = None
    translations: str | None = None  # TSV of the test split: id, source, reference, hypothesis
    samples: list[dict[str, str]] = field(default_factory=list)
    # Files to record with the generation (e.g. the teacher's pseudo-target corpus).
    artifacts: list[str] = field(default_factory=list)
    # An external generation 0: `checkpoint` is its folder, recorded as this manifest (files, sizes, sha256).
    manifest: str | None = None
    # sha256 of the student's weights right after it was built (before any step): a generation and its matched
    # control must show the same.
    init_sha256: str | None = None
    # sha256 of the training batches in order after each epoch of the budget, as this trainer cut them
    # (generations/controls.py: data_order_digests); the last is the run's `mgkd.data_order_sha256`.
    data_order: list[str] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise MgkdError("train.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak at the last step."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def no_events(_: dict[str, Any]) -> None:
    pass


def world_position() -> tuple[int, int]:
    """(rank, world size) of this worker in a torch.distributed group; (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def broadcast_from_worker_0(tensors: list[torch.Tensor]) -> None:
    """Every worker's `tensors` become worker 0's, in place: one flat broadcast per dtype (as average_gradients
    flattens), so a student built from each worker's own seed, and the loss plugins' projections, start equal."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    for dtype, group in groups.items():
        wire = torch.uint8 if dtype == torch.bool else dtype  # gloo has no bool all the way through
        flat = torch.cat([t.detach().reshape(-1).to(wire) for t in group])
        torch.distributed.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t).to(dtype))
                offset += t.numel()


def replica_hash(model: torch.nn.Module, extra: list[torch.Tensor]) -> str:
    """sha256 over a worker's replica: the model's parameters and buffers and the loss plugins' own tensors."""
    h = hashlib.sha256(parameter_hash(model).encode())
    for t in extra:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gather_to_worker_0(obj: Any, world: int) -> list[Any] | None:
    """Every worker's `obj` on worker 0, in rank order (None on the others); every worker must call this."""
    if world == 1:
        return [obj]
    out: list[Any] | None = [None] * world if torch.distributed.get_rank() == 0 else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def first_on_worker_0(world: int, build: Callable[[], Any]) -> Any:
    """Run `build` on worker 0, then on the others (which find what worker 0 stored): no two write at once."""
    if world == 1:
        return build()
    rank = torch.distributed.get_rank()
    out = build() if rank == 0 else None
    torch.distributed.barrier()
    return out if rank == 0 else build()


def backward(loss: torch.Tensor, parts: dict[str, torch.Tensor], trainable: list[torch.Tensor], tokens: int,
             stop: bool, world: int, spec: GenerationSpec, step: int, precision: Precision,
             optimizer: torch.optim.Optimizer, earlier_finite: bool = True) -> tuple[int, bool]:  # fmt: skip
    """The step's gradients, averaged over data-parallel workers, unscaled (fp16) and clipped; a non-finite loss
    on any worker stops every worker with an error naming the terms. Returns (the step's tokens over all
    workers, whether any worker was asked to stop). `earlier_finite`: whether the step's earlier micro-batches
    (train.accumulate_batches), whose gradients are already accumulated, had finite losses."""
    finite = bool(torch.isfinite(loss)) and earlier_finite
    if world > 1:  # every worker learns of a non-finite loss or a stop anywhere, in the same all-reduce
        if finite:
            precision.scaled(loss).backward()
        finite, tokens, stop = average_gradients(trainable, finite, tokens, world, stop)
    if not finite:
        bad = [n for n, v in parts.items() if not torch.isfinite(v)] or ["total"]
        raise MgkdError(
            f"generation {spec.index}: loss is not finite at step {step + 1} (term(s): {', '.join(bad)}); "
            "lower train.lr or check the loss weights"
        )
    if world == 1:
        precision.scaled(loss).backward()
    precision.unscale(optimizer)  # every worker holds the same averaged gradients: the same overflow verdict
    if spec.train.clip_norm:
        torch.nn.utils.clip_grad_norm_(trainable, spec.train.clip_norm)
    return tokens, stop


def average_gradients(
    params: list[torch.Tensor], finite: bool, tokens: int, world: int, stop: bool = False
) -> tuple[bool, int, bool]:
    """Data-parallel step: the mean of every worker's gradients, in one flat all-reduce (DDP's arithmetic).

    torch's DDP wrapper is not used because a step runs the student once per data view and the loss
    plugins own trainable tensors outside the model (projections); averaging the flat gradient covers
    both. The same all-reduce sums whether every worker's loss was finite, the step's target tokens and
    whether any worker was asked to stop. Returns (all finite, tokens over all workers, any stop).
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    tail = grads[0].new_tensor([float(not finite), float(tokens), float(stop)])
    flat = torch.cat([g.reshape(-1) for g in grads] + [tail])
    torch.distributed.all_reduce(flat)
    all_finite, total_tokens, any_stop = float(flat[-3]) == 0, int(round(float(flat[-2]))), float(flat[-1]) > 0
    if all_finite:
        flat = flat[:-3] / world
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g)
            offset += g.numel()
    return all_finite, total_tokens, any_stop


def forward_pair(student: torch.nn.Module, teacher: torch.nn.Module | None, batch: Any, t_needs: TeacherNeeds,
                 s_needs: TeacherNeeds, cache: TeacherCache | None = None) -> tuple[Any, Any, Any]:  # fmt: skip
    """The student's output on a batch (any task's: it names its `model_inputs`), and the teacher's (no grad)
    where a term on this view reads it: from `cache` when given (top-k only, no forward pass), else a forward
    pass. Returns (student output, teacher output or None, batch), as the loss terms read them."""
    hidden = t_needs.hidden or s_needs.hidden
    attention = t_needs.attention or s_needs.attention
    out = student(*batch.model_inputs(), return_hidden=hidden, return_attention=attention)
    t_out = None
    if cache is not None and t_needs.any:
        t_out = cache.teacher_output(batch)
    elif teacher is not None and t_needs.any:
        with torch.no_grad():
            t_out = teacher(*batch.model_inputs(), return_hidden=hidden, return_attention=attention)
    return out, t_out, batch
