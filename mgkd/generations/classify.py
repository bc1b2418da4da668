"""Train one classification generation: plain PyTorch, with or without Ray around it.

The classification counterpart of `training.train_generation` (which hands
classification data here): the same teacher loading and freezing, student
init (scratch, teacher copy, layer cut), weighted loss terms from the
registry, warm-up + cosine schedule, resumable training state, selection on
the validation split and a self-describing checkpoint. What differs is the
data (one label per example, no teacher-made views or cache) and the
evaluation: accuracy, macro-F1 (and MCC) instead of decoding and BLEU.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mgkd.errors import MgkdError
from mgkd.generations.checkpoint import parameter_hash, save_checkpoint
from mgkd.generations.controls import epoch_seed
from mgkd.generations.spec import GenerationSpec
from mgkd.generations.train_state import (
    clear_train_state,
    identity,
    interrupts_deferred,
    load_train_state,
    rng_state,
    save_train_state,
    set_rng_state,
)
from mgkd.generations.training import (
    Events,
    GenerationResult,
    StepWindow,
    backward,
    load_teacher,
    lr_at,
    resolve_device,
    seed_everything,
    world_position,
)
from mgkd.losses import Criterion
from mgkd.models import build_model, count_parameters
from mgkd.models.cutting import cut_layers
from mgkd.tasks.classification import (
    ClassificationData,
    batch_indices,
    classification_scores,
    collate,
    iterate_batches,
)

# What each eval.select_by picks the checkpoint by (lower is better).
SELECT = {
    "valid_loss": lambda m: m["valid_loss"],
    "valid_accuracy": lambda m: -m["valid_accuracy"],
    "valid_macro_f1": lambda m: -m["valid_macro_f1"],
}


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, data: ClassificationData, split: str, max_tokens: int,
                   device: torch.device) -> tuple[dict[str, float], np.ndarray]:  # fmt: skip
    """Mean cross-entropy, accuracy, macro-F1 (and the configured extras) on a split, and its predictions."""
    was = model.training
    model.eval()
    s = data.splits[split]
    pred = np.zeros(len(s), dtype=np.int64)
    total = 0.0
    for batch in iterate_batches(s, max_tokens, shuffle=False):
        b = batch.to(device)
        logits = model(b.src, b.segments).logits.float()
        total += float(F.cross_entropy(logits, b.labels, reduction="sum"))
        pred[b.indices] = logits.argmax(-1).cpu().numpy()
    model.train(was)
    scores = classification_scores(s.labels, pred, data.num_classes, data.extra_metrics)
    return {"loss": total / max(1, len(s)), **scores}, pred


def train_classifier_generation(
    spec: GenerationSpec,
    data: ClassificationData,
    out_dir: Path,
    teacher_checkpoint: str | list[str] | None = None,
    teacher_sha256: str | list[str] | None = None,
    events: Events = lambda _: None,
    session: Any = None,
) -> GenerationResult | None:
    """Train classifier generation `spec.index`; return its selected checkpoint and metrics (None on workers
    > 0). Under Ray Train (`session`, a training.Session) it runs as translation's loop does: data-parallel
    workers split each step's batches and average gradients in one all-reduce, states and epoch metrics are
    reported (a restarted attempt resumes from the last one, a Tune trial's epochs drive the scheduler)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.train.device)
    rank, world = world_position()
    seed_everything(spec.seed + rank)  # worker r > 0 draws its own dropout masks; worker 0 a single process's
    criterion = Criterion(spec.losses)
    if criterion.views != ["gold"]:  # the schedule refuses such terms; a plugin from elsewhere might not say
        raise MgkdError(f"generation {spec.index}: classification trains on the labeled examples only (view gold)")

    teacher = init_source = None
    teacher_hash = None
    if spec.has_teacher:
        if teacher_checkpoint is None:
            raise ValueError(f"generation {spec.index} needs its teacher's checkpoint")
        teacher, init_source, _ = load_teacher(teacher_checkpoint, teacher_sha256)
        teacher.to(device)
        teacher_hash = parameter_hash(teacher)

    # A new object; init teacher/cut copy the teacher's tensors (load_state_dict and cut_layers copy).
    student = build_model(spec.model, data.vocab_size, data.num_classes)
    if spec.init == "teacher" and init_source is not None:
        student.load_state_dict(init_source.state_dict())
    elif spec.init == "cut" and init_source is not None:
        cut_layers(student, init_source, spec.cut_layers or {})
    student.to(device)
    init_sha256 = parameter_hash(student)  # recorded: a generation and its matched control must start equal
    n_params = count_parameters(student)
    extra_params = [q for plugin in criterion.plugins for q in plugin.setup(student, teacher)]
    t_needs, s_needs = criterion.needs("gold")
    hidden, attention = t_needs.hidden or s_needs.hidden, t_needs.attention or s_needs.attention

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
    events({"type": "start", "generation": spec.index, "total_steps": total_steps, "parameters": n_params,
            "pid": os.getpid()})  # fmt: skip

    select = SELECT[spec.eval.select_by]
    best: dict[str, Any] = {"score": math.inf, "state": None, "epoch": 0, "metrics": {}}
    step, epoch, skip, tokens_seen, t_start = 0, 0, 0, 0, time.perf_counter()
    window = StepWindow()
    noise_rng = torch.Generator().manual_seed(spec.seed)  # no noise here; kept so the state format is shared
    state_id = identity(spec.to_dict(), data.data_hash)
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
        set_rng_state(saved["rng"], noise_rng)
        events({"type": "resume", "step": step, "epoch": epoch})
        if skip:
            epoch -= 1  # the loop re-enters the unfinished epoch

    def save_state(batch_in_epoch: int) -> Path | None:
        """Worker 0 writes the training state (every worker holds the same weights and optimizer)."""
        if rank:
            return None
        return save_train_state(out_dir, {
            "identity": state_id, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
            "extra": [q.detach() for q in extra_params], "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "tokens": tokens_seen, "best": best, "drawn": {},
            "rng": rng_state(noise_rng),
        })  # fmt: skip

    def checkpoint(batch_in_epoch: int, epoch_metrics: dict[str, float] | None = None) -> None:
        """Save the state (unless training is over) and report it to the session, if any, with the epoch's
        validation metrics."""
        path = save_state(batch_in_epoch) if step < total_steps else None
        if session is not None and (epoch_metrics is not None or not session.epoch_reports_only):
            session.report({"step": float(step), "epoch": float(epoch), **(epoch_metrics or {})}, path)

    student.train()
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
                batch = collate(train, idx).to(device)
                out = student(batch.src, batch.segments, return_hidden=hidden, return_attention=attention)
                t_out = None
                if teacher is not None and t_needs.any:
                    with torch.no_grad():
                        t_out = teacher(batch.src, batch.segments, return_hidden=hidden, return_attention=attention)
                loss, parts = criterion(out, t_out, batch)
                stop = session is not None and session.stop_requested()
                optimizer.zero_grad(set_to_none=True)
                ntok, stop = backward(loss, parts, trainable, batch.tokens, stop, world, spec, step)
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
            epoch_metrics = None
            if epoch % spec.train.eval_every_epochs == 0 or step >= total_steps:
                scores, _ = evaluate_split(student, data, "valid", spec.train.max_tokens, device)
                m = {f"valid_{k}": v for k, v in scores.items()}
                score = select(m)
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
                epoch -= 1
            save_state(done_position)
            events({"type": "interrupted", "step": step, "epoch": epoch})
        raise
    train_time = time.perf_counter() - t_start
    if rank:
        return None  # worker 0 selects, saves and tests

    student.load_state_dict(best["state"])  # the selected (best on valid) weights are the generation's model
    ckpt = out_dir / "checkpoint.pt"
    sha = save_checkpoint(ckpt, student, data.vocab_size, generation=spec.index, epoch=best["epoch"], step=step,
                          data_hash=data.data_hash, spec=spec.to_dict(), labels=data.label_names)  # fmt: skip

    t0 = time.perf_counter()
    test_scores, pred = evaluate_split(student, data, "test", spec.train.max_tokens, device)
    test = data.splits["test"]
    examples_per_s = len(test) / max(1e-9, time.perf_counter() - t0)
    names = data.label_names
    predictions = out_dir / "test_predictions.tsv"
    clean = lambda x: (x or "").replace("\t", " ").replace("\n", " ")  # noqa: E731
    rows = ["id\ttext\ttext_pair\tlabel\tprediction"] + [
        "\t".join((i, clean(a), clean(b), names[g], names[p]))
        for i, a, b, g, p in zip(test.ids, test.texts, test.pairs, test.labels, pred)
    ]
    predictions.write_text("\n".join(rows) + "\n", encoding="utf-8")

    if teacher is not None and parameter_hash(teacher) != teacher_hash:
        raise RuntimeError(f"generation {spec.index}: the teacher's parameters changed during training (bug)")
    clear_train_state(out_dir)

    metrics = {
        **{f"best_{k}": v for k, v in best["metrics"].items()},
        "best_epoch": float(best["epoch"]),
        "steps": float(step),
        "epochs": float(epoch),
        "train_time_s": train_time,
        "train_tokens_per_s": tokens_seen / max(train_time, 1e-9),
        **{f"test_{k}": v for k, v in test_scores.items() if k != "loss"},
        "test_loss": test_scores["loss"],
        "eval_examples_per_s": examples_per_s,
        "parameters": float(n_params),
    }
    samples = [
        {"source": a if b is None else f"{a} ||| {b}", "reference": names[g], "hypothesis": names[p]}
        for a, b, g, p in list(zip(test.texts, test.pairs, test.labels, pred))[:50]
    ]
    return GenerationResult(spec.index, str(ckpt), sha, n_params, metrics, teacher_hash, str(predictions), samples,
                            init_sha256=init_sha256)  # fmt: skip
