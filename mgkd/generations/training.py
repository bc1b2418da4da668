"""Train one generation: plain PyTorch, with or without Ray around it.

`train_generation` loads the frozen teacher (if any), builds a new student,
trains it on the weighted loss terms, keeps the checkpoint that is best on the
validation split, and decodes the test split with it. It reports progress
through `events` (a callable taking dicts) and touches neither Ray nor MLflow:
the orchestration layer decides where it runs and what is recorded.

Data parallelism: when a torch.distributed process group is up (Ray Train sets
one up for its workers), each worker takes every world-th batch of the epoch's
order and the gradients are averaged with one all-reduce per step; worker 0
saves, selects and decodes. With one worker the run is the single-process one,
step for step. A `Session` (Ray Train or Tune) receives the epoch metrics and
the saved training states, and hands back a state after a restart.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from mgkd.config import ExternalTeacherConfig
from mgkd.errors import MgkdError
from mgkd.files import sha256_file
from mgkd.generations.checkpoint import load_checkpoint, parameter_hash, save_checkpoint
from mgkd.generations.controls import epoch_seed
from mgkd.generations.spec import GenerationSpec
from mgkd.generations.teacher_cache import TeacherCache, load_or_build_cache
from mgkd.generations.train_state import (
    clear_train_state,
    identity,
    interrupts_deferred,
    load_train_state,
    rng_state,
    save_train_state,
    set_rng_state,
)
from mgkd.generations.views import GenerationViewContext
from mgkd.losses import Criterion
from mgkd.losses.base import TeacherNeeds, ViewData
from mgkd.models import build_model, count_parameters
from mgkd.models.cutting import cut_layers
from mgkd.models.decoding import translate
from mgkd.models.ensemble import EnsembleSeq2Seq
from mgkd.models.external import HFTeacher
from mgkd.tasks.classification import ClassificationData
from mgkd.tasks.translation import PAD, Batch, PreparedData, batch_indices, collate, iterate_batches, score_translations

Events = Callable[[dict[str, Any]], None]


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


@torch.no_grad()
def validation_loss(model: torch.nn.Module, data: PreparedData, max_tokens: int, device: torch.device) -> float:
    """Token-mean cross-entropy (no smoothing) of the gold valid targets."""
    was = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in iterate_batches(data.splits["valid"], max_tokens, shuffle=False):
        b = batch.to(device)
        logits = model(b.src, b.tgt_in).logits
        total += float(
            F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), b.tgt_out.reshape(-1), ignore_index=PAD, reduction="sum"
            )
        )
        tokens += b.target_tokens
    model.train(was)
    return total / max(1, tokens)


def decode_split(
    model: torch.nn.Module,
    data: PreparedData,
    split: str,
    spec: GenerationSpec,
    device: torch.device,
    limit: int | None = None,
    beam_size: int | None = None,
    events: Events | None = None,
) -> tuple[list[str], float]:
    """Detokenized outputs for a split (or its first `limit` sentences) and sentences/second."""
    s = data.splits[split]
    n = len(s) if limit is None else min(limit, len(s))
    t0 = time.perf_counter()
    done = [0]

    def on_batch(k: int) -> None:
        done[0] += k
        if events:
            events({"type": "decode", "split": split, "done": done[0], "total": n})

    hyps = translate(
        model, s.src[:n], data.tokenizer.decode, spec.eval.max_len_a, spec.eval.max_len_b,
        spec.eval.decode_batch_size, beam_size or spec.eval.beam_size, spec.eval.length_penalty, device, on_batch,
    )  # fmt: skip
    return hyps, n / max(1e-9, time.perf_counter() - t0)


def build_student(spec: GenerationSpec, vocab_size: int, teacher: torch.nn.Module | None) -> torch.nn.Module:
    """A new model object; with init 'teacher' or 'cut' its tensors are copies of the teacher's, never shared."""
    student = build_model(spec.model, vocab_size)
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


def train_generation(
    spec: GenerationSpec,
    data: PreparedData,
    out_dir: Path,
    teacher_checkpoint: str | list[str] | None = None,
    teacher_sha256: str | list[str] | None = None,
    events: Events = lambda _: None,
    session: Session | None = None,
) -> GenerationResult | None:
    """Train generation `spec.index` and return its selected checkpoint and metrics (None on workers > 0)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    rank, world = world_position()
    if rank:
        events = _no_events
    if spec.external is not None:  # a trained model from elsewhere: loaded and evaluated, not trained
        from mgkd.generations.external import evaluate_external  # it imports this module

        return evaluate_external(spec, data, out_dir, events) if rank == 0 else None
    if isinstance(data, ClassificationData):  # the classification task has its own loop (no decoding, no views)
        from mgkd.generations.classify import train_classifier_generation  # it imports this module

        return train_classifier_generation(spec, data, out_dir, teacher_checkpoint, teacher_sha256, events, session)
    device = resolve_device(spec.train.device)
    # Worker r > 0 draws its own dropout masks and noise; worker 0 draws what a single process would.
    seed_everything(spec.seed + rank)
    criterion = Criterion(spec.losses)

    teacher = init_source = cache = None
    teacher_hash = None
    teacher_digest = ""
    if spec.has_teacher:
        teacher, init_source, teacher_digest, cache = _teacher_signal(
            spec, data, teacher_checkpoint, teacher_sha256, device, events, world
        )
        teacher_hash = parameter_hash(teacher)

    student = build_student(spec, data.vocab_size, init_source).to(device)
    init_sha256 = parameter_hash(student)  # recorded: a generation and its matched control must start equal
    n_params = count_parameters(student)

    views, view_metrics = (
        _teacher_views(criterion, teacher, teacher_digest, spec, data, device, events, world)
        if teacher is not None
        else ({}, {})
    )
    missing = [v for v in criterion.views if v != "gold" and v not in views]
    if missing:
        raise MgkdError(f"generation {spec.index}: the view(s) {', '.join(missing)} need a teacher")
    extra_params = [q for plugin in criterion.plugins for q in plugin.setup(student, teacher)]

    train = data.splits["train"]
    steps_per_epoch = len(batch_indices(train, spec.train.max_tokens, shuffle=False)) // world
    if steps_per_epoch == 0:
        raise MgkdError(f"generation {spec.index}: fewer training batches than the {world} data-parallel workers; "
                        "lower ray.workers or train.max_tokens")  # fmt: skip
    total_steps = spec.train.max_epochs * steps_per_epoch
    if spec.train.max_steps is not None:
        total_steps = min(total_steps, spec.train.max_steps)
    trainable = list(student.parameters()) + extra_params
    optimizer = torch.optim.AdamW(
        trainable, lr=spec.train.lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=spec.train.weight_decay
    )
    events(
        {
            "type": "start",
            "generation": spec.index,
            "total_steps": total_steps,
            "parameters": n_params,
            "pid": os.getpid(),
        }
    )

    unaligned = {v: _cycle_batches(d, spec.train.max_tokens, spec.seed) for v, d in views.items() if not d.aligned}
    noise_rng = torch.Generator().manual_seed(spec.seed + rank)
    best: dict[str, Any] = {"score": math.inf, "state": None, "epoch": 0, "metrics": {}}
    step, tokens_seen, t_start = 0, 0, time.perf_counter()
    # Sums and counts per logged value: a term silenced in some steps (exclusive phases) is averaged
    # over the steps that computed it.
    window = StepWindow()
    epoch = 0
    # Resume a killed generation from its last saved training state (same model and data only).
    state_id = identity(spec.to_dict(), data.data_hash)
    skip, drawn = 0, dict.fromkeys(unaligned, 0)
    saved = load_train_state(out_dir, state_id)
    restored = session.restored() if session is not None else None
    if saved is None and restored is not None:  # a restarted Ray Train attempt on a node without out_dir's state
        saved = load_train_state(restored, state_id)
    if saved is not None:
        student.load_state_dict(saved["student"])
        optimizer.load_state_dict(saved["optimizer"])
        for q, value in zip(extra_params, saved["extra"]):
            q.data.copy_(value)
        step, epoch, skip, tokens_seen = saved["step"], saved["epoch"], saved["batch_in_epoch"], saved["tokens"]
        best = saved["best"]
        for view, n in saved["drawn"].items():  # unaligned views: draw the same batches again
            for _ in range(n):
                next(unaligned[view])
            drawn[view] = n
        set_rng_state(saved["rng"], noise_rng)
        events({"type": "resume", "step": step, "epoch": epoch})
        if skip:
            epoch -= 1  # the loop below re-enters the unfinished epoch

    def save_state(batch_in_epoch: int) -> Path | None:
        """Worker 0 writes the training state (every worker holds the same weights and optimizer)."""
        if rank:
            return None
        return save_train_state(out_dir, {
            "identity": state_id, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
            "extra": [q.detach() for q in extra_params], "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "tokens": tokens_seen, "best": best, "drawn": drawn,
            "rng": rng_state(noise_rng),
        })  # fmt: skip

    def checkpoint(batch_in_epoch: int, epoch_metrics: dict[str, float] | None = None) -> None:
        """Save the state (unless training is over) and report it to the session, if any, with the epoch's
        validation metrics; every worker calls this at the same points."""
        path = save_state(batch_in_epoch) if step < total_steps else None
        if session is not None and (epoch_metrics is not None or not session.epoch_reports_only):
            session.report({"step": float(step), "epoch": float(epoch), **(epoch_metrics or {})}, path)

    student.train()
    # Ctrl-C (or Ray's cancel) lands as KeyboardInterrupt: the state after the last whole step is saved, so
    # `mgkd resume` loses nothing; one arriving during the optimizer step is held until the step is done.
    done_position = skip
    try:
        while step < total_steps:
            epoch += 1
            done_position = skip
            order = batch_indices(train, spec.train.max_tokens, shuffle=True, seed=epoch_seed(spec.seed, epoch))
            if world > 1:  # worker r takes batches r, r + world, ...: one global step = world batches
                order = order[rank::world][:steps_per_epoch]
            for position, idx in enumerate(order):
                if position < skip:
                    continue
                if step >= total_steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total_steps, spec.train.warmup_steps, spec.train.lr)
                criterion.set_progress(step / total_steps)
                outputs = {}
                ntok = 0
                for view in criterion.views:
                    if view == "gold":
                        batch: Batch = collate(train, idx)
                    elif views[view].aligned:
                        batch = collate(views[view].split, idx)
                    else:
                        batch = next(unaligned[view])
                        drawn[view] += 1
                    noise = views[view].noise if view in views else None
                    if noise is not None:
                        batch = noise(batch, noise_rng)
                    batch = batch.to(device)
                    cached = cache if view == "gold" else None  # the cache holds the gold targets only
                    outputs[view] = _forward(student, teacher, batch, *criterion.needs(view), cached)
                    ntok += batch.target_tokens
                loss, parts = criterion(None, views=outputs)
                stop = session is not None and session.stop_requested()
                optimizer.zero_grad(set_to_none=True)
                ntok, stop = backward(loss, parts, trainable, ntok, stop, world, spec, step)
                with interrupts_deferred():  # a Ctrl-C here lands once the weights are whole again
                    optimizer.step()
                    step += 1
                    done_position = position + 1
                tokens_seen += ntok
                window.add(loss, parts, ntok)
                if step % spec.train.log_every_steps == 0 or step == total_steps:
                    window.emit(events, step, epoch, optimizer.param_groups[0]["lr"])
                if stop and step < total_steps:  # the driver's Ctrl-C: every worker stops after this same step
                    raise KeyboardInterrupt
                every = spec.train.checkpoint_every_steps
                if every and step % every == 0 and step < total_steps and position + 1 < len(order):
                    checkpoint(position + 1)
            skip = 0
            last_epoch = step >= total_steps
            if epoch % spec.train.eval_every_epochs == 0 or last_epoch:
                m = {"valid_loss": validation_loss(student, data, spec.train.max_tokens, device)}
                if spec.eval.valid_bleu_sentences:
                    hyps, _ = decode_split(
                        student, data, "valid", spec, device, spec.eval.valid_bleu_sentences, beam_size=1
                    )
                    refs = data.splits["valid"].targets[: len(hyps)]
                    scores = score_translations(hyps, refs)
                    m["valid_bleu"], m["valid_chrf"] = scores["bleu"], scores["chrf"]
                score = m["valid_loss"] if spec.eval.select_by == "valid_loss" else -m["valid_bleu"]
                if score < best["score"]:
                    best = {"score": score, "epoch": epoch, "metrics": dict(m),
                            "state": {k: v.detach().clone() for k, v in student.state_dict().items()}}  # fmt: skip
                events({"type": "epoch", "step": step, "epoch": epoch, "metrics": m})
                epoch_metrics = {**m, **{f"best_{k}": v for k, v in best["metrics"].items()}}
            else:
                epoch_metrics = None
            if step < total_steps or (session is not None and epoch_metrics is not None):
                checkpoint(0, epoch_metrics)
    except KeyboardInterrupt:
        if step < total_steps:
            if done_position == 0:
                epoch -= 1  # nothing of this epoch is done: resume starts it afresh
            save_state(done_position)
            events({"type": "interrupted", "step": step, "epoch": epoch})
        raise
    train_time = time.perf_counter() - t_start
    if rank:
        return None  # worker 0 selects, saves and decodes

    # The selected (best on valid) weights become this generation's model.
    student.load_state_dict(best["state"])
    ckpt = out_dir / "checkpoint.pt"
    sha = save_checkpoint(ckpt, student, data.vocab_size, generation=spec.index, epoch=best["epoch"], step=step,
                          data_hash=data.data_hash, spec=spec.to_dict())  # fmt: skip

    hyps, sents_per_s = decode_split(student, data, "test", spec, device, events=events)
    test = data.splits["test"]
    scores = score_translations(hyps, test.targets)
    translations = out_dir / "test_translations.tsv"
    rows = ["id\tsource\treference\thypothesis"] + [
        "\t".join(x.replace("\t", " ") for x in row) for row in zip(test.ids, test.sources, test.targets, hyps)
    ]
    translations.write_text("\n".join(rows) + "\n", encoding="utf-8")

    if teacher is not None and parameter_hash(teacher) != teacher_hash:
        raise RuntimeError(f"generation {spec.index}: the teacher's parameters changed during training (bug)")
    clear_train_state(out_dir)  # the generation is complete: its checkpoint is what counts now

    metrics = {
        **view_metrics,
        **(cache.metrics() if cache else {}),
        **{f"best_{k}": v for k, v in best["metrics"].items()},
        "best_epoch": float(best["epoch"]),
        "steps": float(step),
        "epochs": float(epoch),
        "train_time_s": train_time,
        "train_tokens_per_s": tokens_seen / max(train_time, 1e-9),
        "test_bleu": scores["bleu"],
        "test_chrf": scores["chrf"],
        "decode_sentences_per_s": sents_per_s,
        "parameters": float(n_params),
    }
    # The first 50 test translations, for the MLflow record.
    samples = [
        {"source": s, "reference": r, "hypothesis": h}
        for s, r, h in zip(test.sources[:50], test.targets[:50], hyps[:50])
    ]
    artifacts = [str(d.artifact) for d in views.values() if d.artifact is not None]
    if cache is not None:
        artifacts.append(str(cache.manifest_path))
    return GenerationResult(
        spec.index,
        str(ckpt),
        sha,
        n_params,
        metrics,
        teacher_hash,
        str(translations),
        samples,
        artifacts,
        init_sha256=init_sha256,
    )


TeacherSignal = tuple[torch.nn.Module, torch.nn.Module, str, "TeacherCache | None"]


def _teacher_signal(spec: GenerationSpec, data: PreparedData, checkpoint: Any, sha256: Any, device: torch.device,
                    events: Events, world: int) -> TeacherSignal:  # fmt: skip
    """The frozen teacher on `device`, the model init copies from, its checksum, and with teacher_signal
    "cached" its top-k on disk (built once per teacher, data and k)."""
    if checkpoint is None:
        raise ValueError(f"generation {spec.index} needs its teacher's checkpoint")
    teacher, init_source, digest = load_teacher(checkpoint, sha256, spec.teacher_external)
    teacher.to(device)
    cache = None
    if spec.teacher_signal == "cached":
        cache = _first_on_worker_0(world, lambda: load_or_build_cache(
            teacher, digest or sha256_file(Path(str(checkpoint))), data, spec.cache_k, spec.train.max_tokens,
            device, events,
        ))  # fmt: skip
    return teacher, init_source, digest, cache


def _teacher_views(criterion: Criterion, teacher: torch.nn.Module, digest: str, spec: GenerationSpec,
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
            made = _first_on_worker_0(world, lambda plugin=plugin: plugin.build_view(ctx))
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
    teacher, _, digest, _ = _teacher_signal(spec, data, teacher_checkpoint, teacher_sha256, device, events, 1)
    _teacher_views(Criterion(spec.losses), teacher, digest, spec, data, device, events, 1)


def _no_events(_: dict[str, Any]) -> None:
    pass


def world_position() -> tuple[int, int]:
    """(rank, world size) of this worker in a torch.distributed group; (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _first_on_worker_0(world: int, build: Callable[[], Any]) -> Any:
    """Run `build` on worker 0, then on the others (which find what worker 0 stored): no two write at once."""
    if world == 1:
        return build()
    rank = torch.distributed.get_rank()
    out = build() if rank == 0 else None
    torch.distributed.barrier()
    return out if rank == 0 else build()


def backward(loss: torch.Tensor, parts: dict[str, torch.Tensor], trainable: list[torch.Tensor], tokens: int,
             stop: bool, world: int, spec: GenerationSpec, step: int) -> tuple[int, bool]:  # fmt: skip
    """The step's gradients, averaged over data-parallel workers, and clipped; a non-finite loss on any worker
    stops every worker with an error naming the terms. Returns (the step's tokens over all workers, whether
    any worker was asked to stop)."""
    finite = bool(torch.isfinite(loss))
    if world > 1:  # every worker learns of a non-finite loss or a stop anywhere, in the same all-reduce
        if finite:
            loss.backward()
        finite, tokens, stop = average_gradients(trainable, finite, tokens, world, stop)
    if not finite:
        bad = [n for n, v in parts.items() if not torch.isfinite(v)] or ["total"]
        raise MgkdError(
            f"generation {spec.index}: loss is not finite at step {step + 1} (term(s): {', '.join(bad)}); "
            "lower train.lr or check the loss weights"
        )
    if world == 1:
        loss.backward()
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


def _forward(student: torch.nn.Module, teacher: torch.nn.Module | None, batch: Batch, t_needs: TeacherNeeds,
             s_needs: TeacherNeeds, cache: TeacherCache | None = None) -> tuple[Any, Any, Batch]:  # fmt: skip
    """The student's output on a batch, and the teacher's (no grad) where a term on this view reads it:
    from `cache` when given (top-k only, no forward pass), else a forward pass."""
    hidden = t_needs.hidden or s_needs.hidden
    attention = t_needs.attention or s_needs.attention
    out = student(batch.src, batch.tgt_in, return_hidden=hidden, return_attention=attention)
    t_out = None
    if cache is not None and t_needs.any:
        t_out = cache.teacher_output(batch)
    elif teacher is not None and t_needs.any:
        with torch.no_grad():
            t_out = teacher(batch.src, batch.tgt_in, return_hidden=hidden, return_attention=attention)
    return out, t_out, batch


def _cycle_batches(view: ViewData, max_tokens: int, seed: int) -> Iterator[Batch]:
    """Endless shuffled token-budget batches of an unaligned view, `token_ratio` x the gold budget."""
    budget = max(1, int(round(max_tokens * view.token_ratio)))
    epoch = 0
    while True:
        epoch += 1
        for idx in batch_indices(view.split, budget, shuffle=True, seed=seed * 7919 + epoch):
            yield collate(view.split, idx)
