"""Benchmark: how Ray Tune trials and Ray Train workers scale on this machine's cores.

    python bench/scaling.py            # 4 trials of 40 steps at 1, 2, 4 concurrent; Train 1 vs 2 workers, 60 steps
    python bench/scaling.py --quick    # 4 trials of 20 steps; Train 30 steps

Tune: one generation (the demo teacher's architecture, `train.max_steps`
steps, 50 test sentences) swept over 4 learning rates with a FIFO scheduler
(every trial does the same work) through mgkd's sweep (`run_sweep`: each trial
a Ray Train run), with 1, 2 and 4 trials at once; each trial gets cores /
concurrency CPUs (torch threads = max(1, its CPUs)). Reported: trials per hour
and the speed-up over one at a time.

Train: the same generation as one Ray Train run with 1 worker (all cores as
torch threads) vs 2 data-parallel workers (the cores split between them; the
gradients all-reduced over gloo each step). Reported: target tokens per second
of training (both workers' tokens) and the generation's wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mgkd.config import build_config  # noqa: E402
from mgkd.generations import build_schedule  # noqa: E402
from mgkd.orchestration.runners import RayRunner  # noqa: E402
from mgkd.orchestration.sweep import run_sweep  # noqa: E402
from mgkd.tasks.translation import TRANSLATION, prepare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--trial-steps", type=int, default=40)
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="20-step trials, 30-step Train runs")
    args = ap.parse_args()
    if args.quick:
        args.trial_steps, args.train_steps = 20, 30
    cores = os.cpu_count() or 2
    gpus = 1 if args.device == "cuda" else 0
    work = Path(tempfile.mkdtemp(prefix="mgkd-bench-scaling-"))
    base = [f"output_dir={work}", "split.max_test=50", "generations.count=1", "train.max_epochs=100",
            f"train.device={args.device}", "ray.max_failures=0"]  # fmt: skip
    cfg = build_config(preset="demo", overrides=base)
    data = prepare(cfg, lambda m: None)

    import ray

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    lrs = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008][: args.trials]
    tune_rows = []
    for concurrent in (1, 2, 4):
        cpus = cores / concurrent
        c = build_config(preset="demo", overrides=[
            *base, f"train.max_steps={args.trial_steps}", f"ray.cpus_per_generation={cpus}",
            f"ray.gpus_per_generation={gpus / concurrent}",
            f"generations.teacher.search={{space: {{train.lr: {{grid: {lrs}}}}}, num_samples: 1, "
            f"max_concurrent: {concurrent}, scheduler: fifo}}",
        ])  # fmt: skip
        spec = build_schedule(c)[0]
        runner = RayRunner(c.ray, data, work)
        t = time.perf_counter()
        out = run_sweep(
            runner, spec, work / "lineages" / f"c{concurrent}" / "gen-0", None, lambda e: None, task=TRANSLATION
        )
        wall = time.perf_counter() - t
        done = sum(tr.status == "completed" for tr in out.trials)
        tune_rows.append((concurrent, cpus, done, wall, done / wall * 3600))
        print(f"  tune {concurrent} at once: {wall:.1f} s", file=sys.stderr)

    train_rows = []
    for workers in (1, 2):
        c = build_config(preset="demo", overrides=[
            *base, f"train.max_steps={args.train_steps}", f"ray.workers={workers}", f"ray.cpus_per_generation={cores}",
            f"ray.gpus_per_generation={gpus}",
        ])  # fmt: skip
        spec = build_schedule(c)[0]
        runner = RayRunner(c.ray, data, work)
        t = time.perf_counter()
        result = runner.run(spec, work / "lineages" / f"w{workers}" / "gen-0", None, lambda e: None)
        wall = time.perf_counter() - t
        train_rows.append((workers, cores / workers, result.metrics["train_tokens_per_s"], wall,
                           result.metrics["steps"]))  # fmt: skip
        print(f"  train {workers} worker(s): {wall:.1f} s", file=sys.stderr)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    m = cfg.model
    print(f"generation: transformer d{m.d_model} {m.encoder_layers}+{m.decoder_layers}, max_tokens "
          f"{cfg.train.max_tokens}, built-in corpus (configs/demo.yaml); Tune: {args.trials} trials of "
          f"{args.trial_steps} steps (FIFO); Train: {args.train_steps} steps")  # fmt: skip
    print(f"machine: {platform.system()} {platform.machine()}, {cores} cores, torch {torch.__version__}, device "
          f"{args.device}, Ray {ray.__version__}; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print()
    print("| Ray Tune: trials at once | CPUs per trial | trials completed | wall s | trials/hour | speed-up vs 1 |")
    print("|---:|---:|---:|---:|---:|---:|")
    one = tune_rows[0][4]
    for concurrent, cpus, done, wall, per_hour in tune_rows:
        print(f"| {concurrent} | {cpus:g} | {done} | {wall:.1f} | {per_hour:.0f} | {per_hour / one:.2f} |")
    print()
    print("| Ray Train: workers | CPUs (threads) per worker | train tokens/s | generation wall s | steps |"
          " tokens/s vs 1 worker |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for workers, cpus, tps, wall, steps in train_rows:
        print(f"| {workers} | {cpus:g} | {tps:,.0f} | {wall:.1f} | {steps:.0f} | {tps / train_rows[0][2]:.2f} |")


if __name__ == "__main__":
    main()
