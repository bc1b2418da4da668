"""Benchmark: achieved model FLOP/s of mgkd's training step vs this machine's fp32 matmul peak.

    python bench/train_flops.py                 # demo d128 2+2, d256 3+3, d512 6+6
    python bench/train_flops.py --threads 1     # the same on one thread (5.5 min on the busy shared 2 cores)
    python bench/train_flops.py --quick         # d128 2+2 and d256 3+3, 4 rounds (15 s on the 2 idle cores)
    python bench/train_flops.py --device cuda   # the same on a GPU (fp32, TF32 off)

The training step is the trainer's own (`mgkd.generations.recipe`): the
student built by `build_student`, `forward_pair`, the generation-0 criterion of
`configs/demo.yaml` (label_smoothing 0.1), AdamW with the trainer's arguments,
gradient clipping, on the demo's batches (max_tokens 4096, the trainer's
epoch-1 order) of the built-in corpus prepared by
`mgkd.tasks.translation.prepare`. The sizes differ only in the model config.

Model FLOPs are counted from the architecture (`step_flops`: matmul FLOPs only,
forward x 3 for forward + backward) on the padded shapes the step computes.
The peak is `torch.matmul` of two 2048 x 2048 fp32 matrices (8192 on CUDA) at
the same thread count. Each round measures the peak, then one step of every
size in rotating order, all on the same batch: the ratio achieved / peak is
taken per round (both under the same load), and the table gives medians over
the rounds. One profiled step per size (torch.profiler, after the timed
rounds) says where the step's time goes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mgkd.config import ModelConfig, build_config  # noqa: E402
from mgkd.generations import build_schedule  # noqa: E402
from mgkd.generations.loop import (  # noqa: E402
    forward_pair,  # noqa: E402
    lr_at,
    seed_everything,
)
from mgkd.generations.spec import GenerationSpec  # noqa: E402
from mgkd.generations.teacher import build_student  # noqa: E402
from mgkd.losses import Criterion  # noqa: E402
from mgkd.models import count_parameters  # noqa: E402
from mgkd.tasks.translation import PAD, Batch, batch_indices, collate, prepare  # noqa: E402

# name -> (d_model, n_heads, encoder_layers, decoder_layers, ff_dim); the first is the demo's model.
SIZES = {
    "d128 2+2 (demo)": (128, 4, 2, 2, 512),
    "d256 3+3": (256, 4, 3, 3, 1024),
    "d512 6+6 (base)": (512, 8, 6, 6, 2048),
}
QUICK_SIZES = ("d128 2+2 (demo)", "d256 3+3")


def step_flops(m: ModelConfig, vocab: int, batch: Batch) -> float:
    """Matmul FLOPs of one training step (forward + backward) of the Transformer on this padded batch.

    With B sentences, S source and T target positions (padded, as computed),
    Ns = B*S, Nt = B*T, d = d_model, f = ff_dim, V = vocabulary, and 2 FLOPs
    per multiply-add, the forward pass costs

        encoder layer:  8 Ns d^2 (q, k, v, o) + 4 B S^2 d (QK^T, AV) + 4 Ns d f (FFN)
        decoder layer:  8 Nt d^2 (self q, k, v, o) + 4 B T^2 d (self QK^T, AV over the full T x T, masked)
                        + 4 Nt d^2 (cross q, o) + 4 Ns d^2 (cross k, v of the memory, per layer)
                        + 4 B T S d (cross QK^T, AV) + 4 Nt d f (FFN)
        output layer:   2 Nt d V (tied embedding matrix)
        embedding:      0 (a lookup, no matmul)

    and the backward pass twice that (the gradient of each matmul with respect
    to both of its inputs), so a step is 3 x forward. Layer norms, softmax,
    dropout, residual adds, the loss and the optimizer are not counted: they are
    the memory-bound work this benchmark shows the cost of.
    """
    b, s = batch.src.shape
    t = batch.tgt_in.size(1)
    d, f = m.d_model, m.ff_dim
    ns, nt = b * s, b * t
    enc = 8 * ns * d * d + 4 * b * s * s * d + 4 * ns * d * f
    dec = 8 * nt * d * d + 4 * b * t * t * d + 4 * nt * d * d + 4 * ns * d * d + 4 * b * t * s * d + 4 * nt * d * f
    forward = m.encoder_layers * enc + m.decoder_layers * dec + 2 * nt * d * vocab
    return 3.0 * forward


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(n: int, device: torch.device, reps: int, m: int | None = None) -> tuple[float, float]:
    """Median FLOP/s of `reps` fp32 matmuls (m x n) @ (n x n), m defaults to n: by wall time and by CPU time."""
    a = torch.randn(m or n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    walls, cpus = [], []
    for _ in range(reps):
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        a @ b
        sync(device)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    flops = 2 * (m or n) * n * n
    return flops / statistics.median(walls), flops / max(1e-9, statistics.median(cpus))


class TrainStep:
    """One size's student, criterion and optimizer, stepped as the trainer's loop body does."""

    def __init__(self, spec: GenerationSpec, vocab: int, device: torch.device) -> None:
        seed_everything(spec.seed)
        self.spec, self.device = spec, device
        self.student = build_student(spec, vocab, None).to(device).train()
        self.criterion = Criterion(spec.losses)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=spec.train.lr, betas=(0.9, 0.98), eps=1e-9,
                                           weight_decay=spec.train.weight_decay)  # fmt: skip
        self.steps = 0

    def __call__(self, batch: Batch) -> tuple[float, float]:
        """Run one step on `batch` (moved to the device inside, as the trainer does); its wall and CPU seconds."""
        sync(self.device)
        t, c = time.perf_counter(), time.process_time()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.steps, 1000, self.spec.train.warmup_steps, self.spec.train.lr)
        b = batch.to(self.device)
        out = forward_pair(self.student, None, b, *self.criterion.needs("gold"))
        loss, _ = self.criterion(None, views={"gold": out})
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.profiler.record_function("optimizer + clip"):
            if self.spec.train.clip_norm:
                torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.spec.train.clip_norm)
            self.optimizer.step()
        float(loss.detach())  # the trainer reads the loss every step (a host sync on CUDA)
        sync(self.device)
        self.steps += 1
        return time.perf_counter() - t, time.process_time() - c


# Profiler op names -> the part of the step they are (ops under the optimizer/clip record_function go there).
CATEGORIES: list[tuple[str, Callable[[str], bool]]] = [
    # Attention runs as bmm too: in training (dropout on the attention weights) SDPA takes its math path on CPU.
    ("matmul", lambda n: n in {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}),
    ("dropout masks", lambda n: n == "aten::bernoulli_"),
    ("softmax, log-softmax", lambda n: "softmax" in n),
]
SHARES = ["matmul", "dropout masks", "softmax, log-softmax", "optimizer + clip", "other ops", "outside ops"]


def profile_step(step: TrainStep, batch: Batch) -> dict[str, float]:
    """Shares of one step's wall time by kind of op (self time), and outside any op (Python, dispatch)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if step.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        wall, _ = step(batch)
    seconds = dict.fromkeys(SHARES, 0.0)
    for ev in prof.events():
        us = ev.self_device_time_total if step.device.type == "cuda" else ev.self_cpu_time_total
        kind, parent = None, ev
        while parent is not None and kind is None:
            if parent.name == "optimizer + clip" or parent.name.startswith("Optimizer.step"):
                kind = "optimizer + clip"
            parent = parent.cpu_parent
        kind = kind or next((c for c, match in CATEGORIES if match(ev.name)), "other ops")
        seconds[kind] += us / 1e6
    seconds["outside ops"] = max(0.0, wall - sum(seconds.values()))
    return {k: v / wall for k, v in seconds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {' and '.join(QUICK_SIZES)}, 4 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7, quick 4)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--out", type=Path, default=ROOT / "mgkd-runs" / "bench-train-flops")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":  # fp32 means fp32: no TF32 in the peak or in the step
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    rounds = args.rounds or (4 if args.quick else 7)
    sizes = {k: v for k, v in SIZES.items() if not args.quick or k in QUICK_SIZES}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()

    base = build_config(ROOT / "configs" / "demo.yaml", overrides=[f"output_dir={args.out}", "generations.count=1"])
    data = prepare(base, lambda msg: print(f"  {msg}", flush=True))
    vocab = data.vocab_size
    train = data.splits["train"]
    steps: dict[str, TrainStep] = {}
    for name, (d, h, le, ld, f) in sizes.items():
        cfg = build_config(ROOT / "configs" / "demo.yaml", overrides=[
            f"output_dir={args.out}", "generations.count=1", f"model.d_model={d}", f"model.n_heads={h}",
            f"model.encoder_layers={le}", f"model.decoder_layers={ld}", f"model.ff_dim={f}",
        ])  # fmt: skip
        steps[name] = TrainStep(build_schedule(cfg)[0], vocab, device)
    spec0 = next(iter(steps.values())).spec
    order = batch_indices(train, spec0.train.max_tokens, shuffle=True, seed=spec0.seed * 100_003 + 1)
    warmup = 2
    batches = [collate(train, order[i % len(order)]) for i in range(warmup + rounds + 1)]

    peak_n = 8192 if device.type == "cuda" else 2048
    for _ in range(2):  # wake the cores (frequency, thread pool) before anything is timed
        matmul_rate(peak_n, device, 3)
    for step in steps.values():
        for i in range(warmup):
            step(batches[i])

    peaks: list[float] = []
    ratios: dict[str, list[float]] = {name: [] for name in steps}
    cpu_ratios: dict[str, list[float]] = {name: [] for name in steps}
    times: dict[str, list[float]] = {name: [] for name in steps}
    rates: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(rounds):
        batch = batches[warmup + r]
        peak, cpu_peak = matmul_rate(peak_n, device, 3)
        peaks.append(peak)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = steps[name](batch)
            flops = step_flops(steps[name].spec.model, vocab, batch)
            times[name].append(wall)
            rates[name].append(flops / wall)
            ratios[name].append(flops / wall / peak)
            cpu_ratios[name].append(flops / max(1e-9, cpu) / cpu_peak)
        print(f"  round {r + 1}/{rounds}: peak {peak / 1e9:.0f} GFLOP/s, "
              + ", ".join(f"{n.split(' (')[0]} {ratios[n][-1]:.2f}" for n in names), flush=True)  # fmt: skip
    profiles = {name: profile_step(step, batches[-1]) for name, step in steps.items()}
    # The models' own matmul shapes (a 4096-token batch times a d x d weight), measured now for comparison.
    shapes = sorted({v[0] for v in sizes.values()})
    shape_rates = {d: matmul_rate(d, device, 9, m=4096)[0] for d in shapes}
    peak_after = matmul_rate(peak_n, device, 3)[0]

    peak = statistics.median(peaks)
    tokens = [b.target_tokens for b in batches[warmup : warmup + rounds]]
    padded = sum(b.tgt_in.numel() + b.src.numel() for b in batches[warmup : warmup + rounds])
    real = sum(int((b.tgt_out != PAD).sum()) + int((b.src != PAD).sum()) for b in batches[warmup : warmup + rounds])
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    lines = [
        f"training efficiency: model FLOP/s of one training step vs fp32 matmul peak ({time.strftime('%Y-%m-%d')})",
        "step: mgkd's trainer step (build_student, forward_pair, label_smoothing 0.1, AdamW, "
        f"clip {spec0.train.clip_norm}) "
        f"on the demo's batches: built-in corpus, vocabulary {vocab}, max_tokens {spec0.train.max_tokens}; "
        f"{rounds} rounds, the same batch for every size in a round: median {statistics.median(tokens):,.0f} target "
        f"tokens per batch, {real / padded:.0%} of the computed positions are real tokens",
        f"peak: torch.matmul {peak_n}x{peak_n} fp32, median {peak / 1e9:.0f} GFLOP/s over the rounds "
        f"(min {min(peaks) / 1e9:.0f}, max {max(peaks) / 1e9:.0f}; {peak_after / 1e9:.0f} after the profiles)",
        f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} torch threads, device {device}{gpu}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after",
        "",
        "| model | params | median step ms | target tok/s | model GFLOP/step | achieved GFLOP/s | achieved / peak "
        "| same, by CPU time | " + " | ".join(SHARES) + " |",
        "|---|" + "---:|" * (7 + len(SHARES)),
    ]
    for name, step in steps.items():
        p = profiles[name]
        flops = statistics.median(step_flops(step.spec.model, vocab, b) for b in batches[warmup : warmup + rounds])
        lines.append(
            f"| {name} | {count_parameters(step.student) / 1e6:.2f}M | {statistics.median(times[name]) * 1000:.0f} "
            f"| {sum(tokens) / sum(times[name]):,.0f} | {flops / 1e9:.1f} | {statistics.median(rates[name]) / 1e9:.1f} "
            f"| **{statistics.median(ratios[name]):.2f}** | {statistics.median(cpu_ratios[name]):.2f} | "
            + " | ".join(f"{p[k]:.0%}" for k in SHARES)
            + " |"
        )
    best = max(statistics.median(r) for r in ratios.values())
    best_cpu = max(statistics.median(r) for r in cpu_ratios.values())
    lines += [
        "",
        "achieved / peak: per round (model FLOPs / step wall time) / that round's peak, median over rounds; "
        "by CPU time: the same with the process's CPU seconds for both (time other jobs on a shared machine take "
        "does not count); "
        "matmul ... outside ops: shares of one profiled step's wall time (torch.profiler, self time per op; "
        "optimizer + clip: all ops under clip_grad_norm_ and AdamW.step; outside ops: Python and dispatch)",
        "matmul at the models' own shapes, 4096 x d @ d x d: "
        + ", ".join(f"d{d}: {rate / 1e9:.0f} GFLOP/s ({rate / peak:.2f} of peak)" for d, rate in shape_rates.items()),
        f"target achieved / peak >= 0.5: {'met' if best >= 0.5 else 'not met'} by wall time (best {best:.2f}), "
        f"{'met' if best_cpu >= 0.5 else 'not met'} by CPU time (best {best_cpu:.2f})",
        f"bench wall time: {time.perf_counter() - t0:.0f}s",
    ]
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
