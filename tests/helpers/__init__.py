"""Helpers the test layers share: the tiny experiment, the CLI in a child process, a local server's life.

Fixtures live in tests/conftest.py; these are plain functions and constants a test module imports.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mgkd.config import ExperimentConfig, build_config

# Seconds per generation on 2 CPUs: 800 real verse pairs, a 1+1 layer d32 model.
TINY = [
    "name=demo",  # the experiment the tests read back (their base preset, tests/conftest.py, is born_again_warm)
    "corpus.max_pairs=800",
    "tokenizer.vocab_size=400",
    "split.max_valid=40",
    "split.max_test=40",
    "model.d_model=32",
    "model.n_heads=2",
    "model.ff_dim=64",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "train.max_epochs=2",
    "train.max_tokens=2048",
    "train.warmup_steps=5",
    "train.log_every_steps=5",
    "train.threads=1",
    "generations.student.train={}",
    "ray.cpus_per_generation=1",
    "eval.max_len_b=5",
]


def mgkd_cli(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """`mgkd ARGS` in a child process, as a user runs it; stdout and stderr together. `env`: variables to set
    on top of this process's."""
    env = {**os.environ, **(env or {}), "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "160"}
    return subprocess.Popen([sys.executable, "-m", "mgkd.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)  # fmt: skip


def tiny_config(tmp_path: Path, *overrides: str) -> ExperimentConfig:
    return build_config(overrides=[*TINY, f"output_dir={tmp_path}", *overrides])


def teacher_then_student(cfg: ExperimentConfig, data, tmp_path: Path):
    """Train the config's generation 0 and 1 in this process: (teacher, student, the student's step metrics)."""
    from mgkd.generations import build_schedule, train_generation

    teacher_spec, student_spec = build_schedule(cfg)[:2]
    teacher = train_generation(teacher_spec, data, tmp_path / "g0")
    seen: list[dict] = []
    student = train_generation(student_spec, data, tmp_path / "g1", teacher.checkpoint, teacher.checkpoint_sha256,
                               seen.append)  # fmt: skip
    return teacher, student, [e["metrics"] for e in seen if e["type"] == "step"]


# No telemetry, and no job runner (7 huey consumer processes that mgkd never uses, busy on 2 shared cores).
QUIET_MLFLOW_SERVER = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer /health in {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
