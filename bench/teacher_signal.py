"""Benchmark: a student's training epoch with the teacher online vs cached (`teacher_signal: cached`).

    python bench/teacher_signal.py            # the demo's data and model, one epoch of 4000 training examples
    python bench/teacher_signal.py --quick    # 1000 examples
    python bench/teacher_signal.py --examples 0 --threads 1   # the whole train split, one torch thread
    python bench/teacher_signal.py --student-model d_model=64 encoder_layers=1   # a smaller student (init scratch)
    python bench/teacher_signal.py --teacher-model d_model=256 ff_dim=1024 encoder_layers=3 decoder_layers=3
                                              # a larger teacher than the demo student (init scratch)

The demo's Transformer (d128, 2+2 layers, vocabulary 4000 on the built-in
corpus; `configs/born_again_warm.yaml`: a copy of the teacher) distilled with label_smoothing + soft_label
(T=2, top_k=8), 0.5 each, over one epoch of the trainer's batches
(max_tokens 4096, its epoch-1 shuffle). Two students with the same initial
weights train side by side in one process: at every step the online student
and the cached student each take the same batch, in alternating order, through
the trainer's own `forward_pair` (teacher forward under no_grad, or the
memory-mapped cache) and optimizer step. Interleaving step by step gives both
the same share of a busy machine. The teacher has the demo's architecture with
random weights: its cost per token, which is all that is timed here, does not
depend on what it has learned. The cache is built by the trainer's
`load_or_build_cache` (timed: the one-off build, then a load on a hit).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mgkd.config import build_config  # noqa: E402
from mgkd.generations import build_schedule  # noqa: E402
from mgkd.generations.loop import forward_pair, seed_everything  # noqa: E402
from mgkd.generations.teacher import build_student  # noqa: E402
from mgkd.generations.teacher_cache import load_or_build_cache  # noqa: E402
from mgkd.losses import Criterion  # noqa: E402
from mgkd.models import build_model  # noqa: E402
from mgkd.tasks.translation import PreparedData, SplitData, batch_indices, collate, prepare  # noqa: E402

LOSSES = "[{name: label_smoothing, weight: 0.5, params: {smoothing: 0.1}}, {name: soft_label, weight: 0.5, params: {temperature: 2.0, top_k: 8}}]"  # noqa: E501


def subset(split: SplitData, n: int | None) -> SplitData:
    """The first n examples, with their own digest (so the cache key sees the change)."""
    if n is None or n >= len(split):
        return split
    h = hashlib.sha256()
    for i, s, t in zip(split.ids[:n], split.sources[:n], split.targets[:n]):
        h.update(f"{i}\t{s}\t{t}\n".encode())
    return SplitData(split.ids[:n], split.sources[:n], split.targets[:n], split.src[:n], split.tgt[:n], h.hexdigest())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1000 training examples instead of 4000")
    ap.add_argument("--examples", type=int, default=None, help="the first N training examples (0: all)")
    ap.add_argument(
        "--student-model",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="change the student's model config (the teacher stays the demo's), e.g. decoder_layers=1",
    )
    ap.add_argument(
        "--teacher-model",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="change the teacher's model config (the student then starts from scratch), e.g. d_model=256 "
        "ff_dim=1024 encoder_layers=3 decoder_layers=3",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--out", type=Path, default=ROOT / "mgkd-runs" / "bench-teacher-signal")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()

    cfg = build_config(ROOT / "configs" / "born_again_warm.yaml", overrides=[
        f"output_dir={args.out}", "generations.count=1", f"generations.student.losses={LOSSES}",
        "generations.student.teacher_signal=cached", "generations.student.teacher_cache_k=8",
        *([f"generations.student.model={{{', '.join(kv.replace('=', ': ') for kv in args.student_model)}}}",
           "generations.student.init=scratch"] if args.student_model else []),
        *(["generations.student.init=scratch"] if args.teacher_model else []),
    ])  # fmt: skip
    teacher_model = cfg.model.model_copy(update={k: int(v) for k, v in (kv.split("=") for kv in args.teacher_model)})
    full = prepare(cfg, lambda msg: print(f"  {msg}", flush=True))
    n = args.examples if args.examples is not None else 1000 if args.quick else 4000
    train = subset(full.splits["train"], n or None)
    cache_root = Path(tempfile.mkdtemp(prefix="teacher-cache-", dir=args.out))  # a fresh cache: the build is timed
    data = PreparedData(full.spm_model, full.data_hash, {**full.splits, "train": train}, cache_root)
    spec = build_schedule(cfg)[1]
    device = torch.device("cpu")

    torch.manual_seed(0)
    teacher = build_model(teacher_model, data.vocab_size).eval().requires_grad_(False)
    fake_sha = hashlib.sha256(b"bench teacher, random weights").hexdigest()
    t, c = time.perf_counter(), time.process_time()
    cache = load_or_build_cache(teacher, fake_sha, data, spec.cache_k, spec.train.max_tokens, device)
    build_s, build_cpu = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    hit = load_or_build_cache(teacher, fake_sha, data, spec.cache_k, spec.train.max_tokens, device)
    load_s, load_cpu = time.perf_counter() - t, time.process_time() - c
    assert hit.hit and not cache.hit

    # Two students, one per signal, from the same initial weights, each with its own optimizer.
    runs = {}
    for mode in ("online", "cached"):
        seed_everything(spec.seed)
        student = build_student(spec, data.vocab_size, teacher)
        student.train()
        opt = torch.optim.AdamW(student.parameters(), lr=spec.train.lr, betas=(0.9, 0.98), eps=1e-9)
        runs[mode] = {"student": student, "opt": opt, "criterion": Criterion(spec.losses), "steps": [],
                      "wall": 0.0, "cpu": 0.0}  # fmt: skip
    batches = batch_indices(train, spec.train.max_tokens, shuffle=True, seed=spec.seed * 100_003 + 1)
    tokens = 0
    print(f"  set-up {time.perf_counter() - t0:.0f}s; {len(train)} examples, {len(batches)} steps", flush=True)
    for step, idx in enumerate(batches):
        order = ("online", "cached") if step % 2 == 0 else ("cached", "online")
        for mode in order:
            r = runs[mode]
            wall, cpu = time.perf_counter(), time.process_time()
            batch = collate(train, idx)
            crit = r["criterion"]
            out = forward_pair(r["student"], teacher, batch, *crit.needs("gold"), cache if mode == "cached" else None)
            loss, parts = crit(None, views={"gold": out})
            r["opt"].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(r["student"].parameters(), spec.train.clip_norm or 1.0)
            r["opt"].step()
            r["steps"].append(time.perf_counter() - wall)
            r["wall"] += r["steps"][-1]
            r["cpu"] += time.process_time() - cpu
            r.setdefault("first_soft_label", float(parts["soft_label"].detach()))  # same weights: same value
        tokens += batch.target_tokens
        if (step + 1) % 20 == 0:
            print(f"  step {step + 1}/{len(batches)}: online {runs['online']['wall']:.0f}s, "
                  f"cached {runs['cached']['wall']:.0f}s", flush=True)  # fmt: skip

    on, ca = runs["online"], runs["cached"]
    # Each step's two halves ran back to back: the median of their ratios shrugs off bursts of load.
    step_ratio = statistics.median(c / o for c, o in zip(ca["steps"], on["steps"]))

    def row(label: str, wall: float, cpu: float, steps: list[float] | None = None, soft: float | None = None) -> str:
        median = f"{statistics.median(steps) * 1000:.0f}" if steps else ""
        s = f"{soft:.4f}" if soft is not None else ""
        return (f"| {label} | {wall:.1f} | {cpu:.1f} | {median} | {tokens / wall:,.0f} | {wall / on['wall']:.2f} | "
                f"{cpu / on['cpu']:.2f} | {s} |")  # fmt: skip

    m, sm = teacher_model, spec.model
    student = f"{sm.arch} d{sm.d_model} {sm.encoder_layers}+{sm.decoder_layers} ff{sm.ff_dim}"
    teacher_desc = f"{m.arch} d{m.d_model} {m.encoder_layers}+{m.decoder_layers} ff{m.ff_dim}"
    per_token = cache.metrics()["teacher_cache_bytes_per_token"]
    lines = [
        f"teacher signal: one student epoch, online vs cached ({time.strftime('%Y-%m-%d')})",
        f"teacher: {teacher_desc}; student: {student} (init {spec.init}); vocabulary {data.vocab_size}; "
        f"losses: label_smoothing 0.5 + soft_label(T=2, top_k=8) 0.5; seed {spec.seed}",
        f"data: built-in corpus (configs/demo.yaml), train {len(train)} of {len(full.splits['train'])} examples, "
        f"{tokens:,} target tokens; 1 epoch = {len(batches)} steps at max_tokens {spec.train.max_tokens}",
        f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, device cpu; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after",
        "",
        "| teacher_signal | epoch wall s | epoch CPU s (all threads) | median step ms | target tok/s "
        "| wall / online | CPU / online | soft_label, step 1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        row("online", on["wall"], on["cpu"], on["steps"], on["first_soft_label"]),
        row("cached, excluding the one-off build", ca["wall"], ca["cpu"], ca["steps"], ca["first_soft_label"]),
        row("cached, including the one-off build", ca["wall"] + build_s, ca["cpu"] + build_cpu),
        row("cached, cache hit (including load + sha256 check)", ca["wall"] + load_s, ca["cpu"] + load_cpu),
        "",
        f"cache: k=8, float16 log-probs + {cache.manifest['index_dtype']} ids = {per_token:.2f} bytes per target "
        f"token, {cache.manifest['bytes'] / 2**20:.1f} MiB; one-off build {build_s:.1f}s; load + verify on a hit "
        f"{load_s:.2f}s",
        f"ratio cached/online (epoch wall, excluding the build): {ca['wall'] / on['wall']:.2f} (target <= 0.6); "
        f"median of the per-step ratios: {step_ratio:.2f}; including the build: "
        f"{(ca['wall'] + build_s) / on['wall']:.2f}",
        "over E epochs (or E Tune trials of the generation): (E x cached + build) / (E x online) = "
        + ", ".join(f"{e}: {(e * ca['wall'] + build_s) / (e * on['wall']):.2f}" for e in (1, 2, 3, 5)),
        f"bench wall time: {time.perf_counter() - t0:.0f}s",
    ]
    print("\n" + "\n".join(lines))
    shutil.rmtree(cache_root, ignore_errors=True)


if __name__ == "__main__":
    main()
