"""One generation, for every task: set-up, train loop, save/resume, evaluate and select, clean-up.

`train_generation` loads the frozen teacher (if any), builds a new student,
trains it on the weighted loss terms, keeps the checkpoint that is best on the
validation split (by `eval.select_by`, in the direction the task declares),
and gives the test split's outputs. It reports progress through `events` (a
callable taking dicts) and touches neither Ray nor MLflow: the orchestration
layer decides where it runs and what is recorded.

What differs between tasks is in their `TaskSteps` (each task folder's
steps.py, e.g. mgkd/tasks/translation/steps.py): the student's sizes (vocabulary, classes), the
validation metrics, the test-time outputs and what the checkpoint carries
besides the weights; the task's batches name what the model reads
(`model_inputs`), so one `forward_pair` serves every task and data view. An
external generation 0 is evaluated, not trained (external.py).

Data parallelism: when a torch.distributed process group is up (Ray Train sets
one up for its workers), every worker starts from worker 0's weights (broadcast
after set-up), takes every world-th batch of the epoch's order and of each side
stream, and the gradients are averaged with one all-reduce per step; worker 0
saves (with every worker's random generators), selects and tests. With one worker the run is the single-process one,
step for step. A `Session` (Ray Train or Tune) receives the epoch metrics and
the saved training states, and hands back a state after a restart.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mgkd.errors import MgkdError
from mgkd.generations.checkpoint import parameter_hash, save_checkpoint
from mgkd.generations.controls import data_order_digests, epoch_seed
from mgkd.generations.external import evaluate_external
from mgkd.generations.loop import (
    Events,
    GenerationResult,
    Session,
    StepWindow,
    backward,
    broadcast_from_worker_0,
    forward_pair,
    gather_to_worker_0,
    lr_at,
    no_events,
    replica_hash,
    resolve_device,
    seed_everything,
    world_position,
)
from mgkd.generations.precision import Precision
from mgkd.generations.spec import GenerationSpec
from mgkd.generations.teacher import build_student, teacher_signal, teacher_views
from mgkd.generations.train_state import (
    clear_train_state,
    identity,
    interrupts_deferred,
    load_train_state,
    restore_worker_rng,
    rng_state,
    save_train_state,
    worker_rng_states,
)
from mgkd.losses import Criterion
from mgkd.losses.base import ViewData
from mgkd.models import count_parameters
from mgkd.tasks import Task, selection_score, steps_of


def cycle_batches(
    task: Task, view: ViewData, max_tokens: int, seed: int, rank: int = 0, world: int = 1
) -> Iterator[Any]:
    """Endless shuffled token-budget batches of an unaligned view, `token_ratio` x the gold budget.

    The stream is the same on every data-parallel worker; worker `rank` takes its positions rank, rank + world,
    ... (counted across epochs, so a view of fewer batches than workers still feeds them all): the workers'
    batches are disjoint and together they are the stream. One worker takes all of it.
    """
    budget = max(1, int(round(max_tokens * view.token_ratio)))
    epoch, position = 0, 0
    while True:
        epoch += 1
        for idx in task.batch_indices(view.split, budget, shuffle=True, seed=seed * 7919 + epoch):
            if position % world == rank:
                yield task.collate(view.split, idx)
            position += 1


def batch_plan_split(task: Any, train: Any, spec: GenerationSpec, views: dict[str, Any],
                     build_views: Callable[[list[Any]], dict[str, Any]]) -> Any:  # fmt: skip
    """What the training batches are cut by: the gold split, or under train.batch_targets 'longest' (a task with
    `longest_targets`) each example's longest target among the gold and the aligned teacher-made views a step reads.
    A matched control reads no such view: it builds its generation's (`spec.plan_losses`, from the store) for
    their lengths only, so its batches are the generation's."""
    if spec.train.batch_targets != "longest" or not hasattr(task, "longest_targets"):
        return train
    if spec.plan_losses:
        views = build_views(spec.plan_losses)
    aligned = [v.split for v in views.values() if v.aligned]
    return task.longest_targets(train, aligned) if aligned else train


def train_generation(
    spec: GenerationSpec,
    data: Any,
    out_dir: Path,
    teacher_checkpoint: str | list[str] | None = None,
    teacher_sha256: str | list[str] | None = None,
    events: Events = lambda _: None,
    session: Session | None = None,
) -> GenerationResult | None:
    """Train generation `spec.index` on `data` (any registered task's) and return its selected checkpoint and
    metrics (None on workers > 0)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    rank, world = world_position()
    if rank:
        events = no_events
    if spec.external is not None:  # a trained model from elsewhere: loaded and evaluated, not trained
        return evaluate_external(spec, data, out_dir, events) if rank == 0 else None
    steps = steps_of(data)
    task = steps.task
    device = resolve_device(spec.train.device)
    precision = Precision(spec.train, device, spec.index)  # a device that cannot do it is refused here
    # Worker r > 0 draws its own dropout masks and noise; worker 0 draws what a single process would.
    seed_everything(spec.seed + rank)
    criterion = Criterion(spec.losses)
    foreign = [v for v in criterion.views if v not in task.views]
    if foreign:  # the schedule refuses such terms; a plugin from elsewhere might not say
        raise MgkdError(f"generation {spec.index}: task {task.name} has no data view {', '.join(foreign)} "
                        f"(its views: {', '.join(task.views)})")  # fmt: skip

    # --- set-up: teacher, student, teacher-made data, optimizer -------------------------------------------
    teacher = init_source = cache = None
    teacher_hash = None
    teacher_digest = ""
    if spec.has_teacher:
        teacher, init_source, teacher_digest, cache = teacher_signal(
            spec, data, teacher_checkpoint, teacher_sha256, device, events, world
        )
        teacher_hash = parameter_hash(teacher)
    sizes = steps.model_sizes(data)
    # The initial weights follow from the seed and the architecture alone, not from what building the teacher drew
    # (so the same student taught by a larger teacher, or by none, starts from the same weights).
    seed_everything(spec.seed + rank)
    student = build_student(spec, sizes["vocab_size"], init_source, sizes.get("num_classes")).to(device)
    init_sha256 = parameter_hash(student)  # recorded: a generation and its matched control must start equal
    n_params = count_parameters(student)
    views, view_metrics = (
        teacher_views(criterion, teacher, teacher_digest, spec, data, device, events, world)
        if teacher is not None
        else ({}, {})
    )
    missing = [v for v in criterion.views if v != "gold" and v not in views]
    if missing:
        raise MgkdError(f"generation {spec.index}: the view(s) {', '.join(missing)} need a teacher")
    extra_params = [q for plugin in criterion.plugins for q in plugin.setup(student, teacher)]

    train = data.splits["train"]
    plan = batch_plan_split(task, train, spec, views, lambda losses: teacher_views(
        Criterion(losses), teacher, teacher_digest, spec, data, device, events, world)[0])  # fmt: skip
    data_order = data_order_digests(data, spec, split=plan) if rank == 0 else []  # worker 0 reports it
    accum = spec.train.accumulate_batches
    steps_per_epoch = len(task.batch_indices(plan, spec.train.max_tokens, shuffle=False)) // (world * accum)
    if steps_per_epoch == 0:
        raise MgkdError(f"generation {spec.index}: fewer training batches than one step takes ({world} data-parallel "
                        f"worker(s) x train.accumulate_batches {accum}); lower ray.workers, accumulate_batches "
                        "or train.max_tokens")  # fmt: skip
    total_steps = spec.train.max_epochs * steps_per_epoch
    if spec.train.max_steps is not None:
        total_steps = min(total_steps, spec.train.max_steps)
    trainable = list(student.parameters()) + extra_params
    optimizer = torch.optim.AdamW(
        trainable, lr=spec.train.lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=spec.train.weight_decay
    )
    events({"type": "start", "generation": spec.index, "total_steps": total_steps, "parameters": n_params,
            "pid": os.getpid()})  # fmt: skip

    # Each worker draws its own share of a side stream (pseudo-labels, capped seq-KD), as of the gold batches.
    unaligned = {v: cycle_batches(task, d, spec.train.max_tokens, spec.seed, rank, world) for v, d in views.items()
                 if not d.aligned}  # fmt: skip
    noise_rng = torch.Generator().manual_seed(spec.seed + rank)
    best: dict[str, Any] = {"score": math.inf, "state": None, "epoch": 0, "metrics": {}}
    step, tokens_seen, t_start = 0, 0, time.perf_counter()
    # Sums and counts per logged value: a term silenced in some steps (exclusive phases) is averaged
    # over the steps that computed it.
    window = StepWindow()
    epoch = 0

    # --- resume: a killed generation continues from its last saved training state (same model and data) ---
    state_id = identity(spec.to_dict(), data.data_hash)
    skip, drawn = 0, dict.fromkeys(unaligned, 0)
    saved = load_train_state(out_dir, state_id)
    restored = session.restored() if session is not None else None
    if restored is not None:  # Ray Train's latest reported state: a restarted attempt's, or an earlier run's
        try:
            reported = load_train_state(restored, state_id)
        except MgkdError:
            if saved is None:
                raise
            reported = None
        if reported is not None and (saved is None or reported["step"] > saved["step"]):
            saved = reported  # the newer of the two (out_dir's is the driver's, e.g. saved at a Ctrl-C)
    if saved is not None:
        student.load_state_dict(saved["student"])
        optimizer.load_state_dict(saved["optimizer"])
        precision.load_state_dict(saved.get("scaler"))
        for q, value in zip(extra_params, saved["extra"]):
            q.data.copy_(value)
        step, epoch, skip, tokens_seen = saved["step"], saved["epoch"], saved["batch_in_epoch"], saved["tokens"]
        best = saved["best"]
        for view, n in saved["drawn"].items():  # unaligned views: draw the same batches again
            for _ in range(n):
                next(unaligned[view])
            drawn[view] = n
        inexact = restore_worker_rng(saved, rank, world, noise_rng)  # each worker its own generators
        if inexact:
            events({"type": "rng-fallback", "message": inexact})
        events({"type": "resume", "step": step, "epoch": epoch})
        if skip:
            epoch -= 1  # the loop below re-enters the unfinished epoch
    if world > 1:
        # Identical replicas: each worker built its student and the plugins' projections from its own seed (so
        # that its dropout masks and noise are its own); all of them now take worker 0's weights, and training
        # keeps them equal (the same averaged gradients, the same optimizer arithmetic). The hashes before and
        # after are reported, so a test can tell that the broadcast is what makes them equal.
        replica = [*student.parameters(), *student.buffers(), *extra_params]
        before = gather_to_worker_0(replica_hash(student, extra_params), world)
        broadcast_from_worker_0(replica)
        events({"type": "replicas", "stage": "set-up", "before": before,
                "after": gather_to_worker_0(replica_hash(student, extra_params), world)})  # fmt: skip

    def save_state(batch_in_epoch: int, together: bool = True, at_step_start: tuple | None = None) -> Path | None:
        """Worker 0 writes the training state (every worker holds the same weights and optimizer) with every
        worker's random generators; `together`: every worker calls this at this point (else worker 0 keeps
        its own generators only, and a resume says it cannot restore the others'). `at_step_start`: the
        generators and side-stream positions as the unfinished step found them (an interrupt inside a step
        saves those, not the draws the lost step already made, so the resumed step draws the same)."""
        own, drawn_then = at_step_start if at_step_start is not None else (rng_state(noise_rng), drawn)
        rngs = gather_to_worker_0(own, world) if together else [own]
        if rank:
            return None
        return save_train_state(out_dir, {
            "identity": state_id, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
            "extra": [q.detach() for q in extra_params], "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "tokens": tokens_seen, "best": best, "drawn": drawn_then,
            "scaler": precision.state_dict(),
            **worker_rng_states(rngs),
        })  # fmt: skip

    def checkpoint(batch_in_epoch: int, epoch_metrics: dict[str, float] | None = None) -> None:
        """Save the state (unless training is over) and report it to the session, if any, with the epoch's
        validation metrics; every worker calls this at the same points."""
        path = save_state(batch_in_epoch) if step < total_steps else None
        if session is not None and (epoch_metrics is not None or not session.epoch_reports_only):
            session.report({"step": float(step), "epoch": float(epoch), **(epoch_metrics or {})}, path)

    def forward_views(idx: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """One batch through the student (and the teacher where a term reads it) on every data view of the loss,
        under train.precision: (loss, its terms, target tokens)."""
        outputs, ntok = {}, 0
        with precision.autocast():
            for view in criterion.views:
                if view == "gold":
                    batch = task.collate(train, idx)
                elif views[view].aligned:
                    batch = task.collate(views[view].split, idx)
                else:
                    batch = next(unaligned[view])
                    drawn[view] += 1
                noise = views[view].noise if view in views else None
                if noise is not None:
                    batch = noise(batch, noise_rng)
                batch = batch.to(device, non_blocking=device.type == "cuda")
                cached = cache if view == "gold" else None  # the cache holds the gold targets only
                outputs[view] = forward_pair(student, teacher, batch, *criterion.needs(view), cached)
                ntok += task.batch_tokens(batch)
            loss, parts = criterion(None, views=outputs)
        return loss, parts, ntok

    # --- the train loop ---------------------------------------------------------------------------------
    student.train()
    # Ctrl-C (or Ray's cancel) lands as KeyboardInterrupt: the state after the last whole step is saved, so
    # `mgkd resume` loses nothing; one arriving during the optimizer step is held until the step is done.
    done_position = skip
    stopping_together = False  # the driver's stop, seen by every worker at the same step
    step_start: tuple | None = None  # set while a step is under way (see save_state)
    try:
        while step < total_steps:
            epoch += 1
            done_position = skip
            order = task.batch_indices(plan, spec.train.max_tokens, shuffle=True, seed=epoch_seed(spec.seed, epoch))
            if world > 1:  # worker r takes batches r, r + world, ...: one global step = world x accum batches
                order = order[rank::world]
            # one step = `accum` consecutive batches of this worker's share (so 1 worker accumulating 2 batches
            # takes the batches that 2 workers take, one each)
            order = [order[i : i + accum] for i in range(0, steps_per_epoch * accum, accum)]
            for position, micro in enumerate(order):
                if position < skip:
                    continue
                if step >= total_steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total_steps, spec.train.warmup_steps, spec.train.lr)
                criterion.set_progress(step / total_steps)
                # What an interrupt inside this step saves: the generators and side-stream positions before any
                # of the step's draws (dropout, noise, a side batch), so a resume redraws exactly them.
                step_start = (rng_state(noise_rng), dict(drawn))
                optimizer.zero_grad(set_to_none=True)
                # train.accumulate_batches: the step's gradient is the mean over its micro-batches (and workers)
                bad: dict[str, torch.Tensor] | None = None  # the terms of a non-finite earlier micro-batch
                loss_sum: torch.Tensor | None = None
                parts_sum: dict[str, torch.Tensor] = {}
                ntok = 0
                for j, idx in enumerate(micro):
                    loss, parts, n = forward_views(idx)
                    if accum > 1:
                        loss, parts = loss / accum, {k: v / accum for k, v in parts.items()}
                    ntok += n
                    loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
                    parts_sum = {k: v.detach() + parts_sum.get(k, 0) for k, v in parts.items()}
                    if j < len(micro) - 1:  # the last one goes through backward() with the all-reduce below
                        if torch.isfinite(loss):
                            precision.scaled(loss).backward()
                        else:
                            bad = bad or parts
                stop = session is not None and session.stop_requested()
                ntok, stop = backward(loss, bad or parts, trainable, ntok, stop, world, spec, step, precision,
                                      optimizer, earlier_finite=bad is None)  # fmt: skip
                with interrupts_deferred():  # a Ctrl-C here lands once the weights are whole again
                    precision.step(optimizer)  # fp16: skipped if the gradients overflowed
                    step += 1
                    done_position = position + 1
                    step_start = None  # the step is whole: the generators as they are now are its end
                tokens_seen += ntok
                window.add(loss_sum if accum > 1 else loss, parts_sum if accum > 1 else parts, ntok)
                if step % spec.train.log_every_steps == 0 or step == total_steps:
                    window.emit(events, step, epoch, optimizer.param_groups[0]["lr"])
                if stop and step < total_steps:  # the driver's Ctrl-C: every worker stops after this same step
                    stopping_together = True
                    raise KeyboardInterrupt
                every = spec.train.checkpoint_every_steps
                if every and step % every == 0 and step < total_steps and position + 1 < len(order):
                    checkpoint(position + 1)
            skip = 0
            epoch_metrics = None
            if epoch % spec.train.eval_every_epochs == 0 or step >= total_steps:
                # --- evaluate and select: the best weights on the validation split (never the test split)
                m = steps.validate(student, data, spec, device)
                score = selection_score(task, spec.eval.select_by, m)
                if score < best["score"]:
                    best = {"score": score, "epoch": epoch, "metrics": dict(m),
                            "state": {k: v.detach().clone() for k, v in student.state_dict().items()}}  # fmt: skip
                events({"type": "epoch", "step": step, "epoch": epoch, "metrics": m})
                epoch_metrics = {**m, **{f"best_{k}": v for k, v in best["metrics"].items()}}
            if step < total_steps or (session is not None and epoch_metrics is not None):
                checkpoint(0, epoch_metrics)
    except KeyboardInterrupt:
        if step < total_steps:
            if done_position == 0:
                epoch -= 1  # nothing of this epoch is done: resume starts it afresh
            save_state(done_position, together=stopping_together, at_step_start=step_start)
            events({"type": "interrupted", "step": step, "epoch": epoch})
        raise
    train_time = time.perf_counter() - t_start
    if world > 1:  # the replicas' invariant, reported: every worker ends with the same weights
        events({"type": "replicas", "stage": "end",
                "after": gather_to_worker_0(replica_hash(student, extra_params), world)})  # fmt: skip
    if rank:
        return None  # worker 0 selects, saves and tests

    # --- save the selected model, test it, clean up -----------------------------------------------------
    student.load_state_dict(best["state"])  # the selected (best on valid) weights are the generation's model
    ckpt = out_dir / "checkpoint.pt"
    sha = save_checkpoint(ckpt, student, data.vocab_size, generation=spec.index, epoch=best["epoch"], step=step,
                          data_hash=data.data_hash, spec=spec.to_dict(), **steps.checkpoint_meta(data))  # fmt: skip
    tested = steps.test(student, data, spec, device, out_dir, events)
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
        **tested.metrics,
        "parameters": float(n_params),
        "model_size_bytes": float(ckpt.stat().st_size),  # the checkpoint on disk, shown beside quality and speed
    }
    artifacts = [str(d.artifact) for d in views.values() if d.artifact is not None]
    if cache is not None:
        artifacts.append(str(cache.manifest_path))
    return GenerationResult(spec.index, str(ckpt), sha, n_params, metrics, teacher_hash, str(tested.path),
                            tested.samples, artifacts, init_sha256=init_sha256, data_order=data_order)  # fmt: skip
