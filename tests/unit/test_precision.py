"""train.precision: fp32 is the arithmetic it always was; bf16/fp16 really run the forward passes under autocast
(forced on CPU here, where they are refused by default because they are ~100x slower); a device that cannot do
the precision is refused before training, naming the fix."""

from __future__ import annotations

import pytest
import torch

from mgkd.config import TrainConfig
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule, train_generation
from mgkd.generations.precision import Precision

from ..helpers import tiny_config

STEPS = ["generations.count=1", "train.max_steps=6", "train.max_epochs=1", "split.max_valid=8", "split.max_test=8"]


def _teacher_spec(tmp_path, *extra):
    return build_schedule(tiny_config(tmp_path, *STEPS, *extra))[0]


def test_precision_on_an_explicit_cpu_is_a_config_error_naming_the_fix():
    with pytest.raises(ValueError, match=r"precision: bf16 on train.device: cpu .*allow_slow_precision"):
        TrainConfig(device="cpu", precision="bf16")
    TrainConfig(device="cpu", precision="fp16", allow_slow_precision=True)  # forced: accepted
    TrainConfig(device="auto", precision="bf16")  # the device is known on the worker only


def test_a_device_that_cannot_is_refused_before_training(tmp_path, tiny_data):
    spec = _teacher_spec(tmp_path, "train.precision=fp16")  # device auto, on this CPU machine
    with pytest.raises(MgkdError, match=r"generation 0: train.precision fp16 on cpu: .* train.precision fp32"):
        train_generation(spec, tiny_data, tmp_path / "g")
    assert not (tmp_path / "g" / "checkpoint.pt").exists()


def test_fp32_is_unchanged_and_mixed_precision_really_runs(tmp_path, tiny_data):
    default = train_generation(_teacher_spec(tmp_path), tiny_data, tmp_path / "default")
    fp32 = train_generation(_teacher_spec(tmp_path, "train.precision=fp32"), tiny_data, tmp_path / "fp32")
    assert fp32.checkpoint_sha256 == default.checkpoint_sha256  # autocast disabled: the same arithmetic, bit for bit
    forced = ["train.allow_slow_precision=true"]
    bf16 = train_generation(_teacher_spec(tmp_path, "train.precision=bf16", *forced), tiny_data, tmp_path / "bf16")
    assert bf16.checkpoint_sha256 != fp32.checkpoint_sha256  # the forward passes ran in bf16
    assert bf16.metrics["steps"] == 6 and torch.isfinite(torch.tensor(bf16.metrics["best_valid_loss"]))
    ckpt = torch.load(bf16.checkpoint, map_location="cpu", weights_only=True)
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert weights and all(v.dtype == torch.float32 for v in weights)  # the weights themselves stay fp32


def test_fp16_scales_the_loss_and_keeps_the_scale_in_the_training_state(tmp_path):
    train = TrainConfig(precision="fp16", allow_slow_precision=True)
    p = Precision(train, torch.device("cpu"), 1)
    w = torch.nn.Parameter(torch.full((3,), 1e-3))  # small: its scaled fp16 gradient must not overflow
    opt = torch.optim.SGD([w], lr=0.1)
    loss = (w**2).sum()  # the scaler's arithmetic (autocast itself: the bf16 run above)
    p.scaled(loss).backward()
    scale = p.state_dict()["scale"]
    assert torch.allclose(w.grad, 2e-3 * scale * torch.ones(3), rtol=1e-3)  # scaled gradients
    p.unscale(opt)
    assert torch.allclose(w.grad, torch.full((3,), 2e-3), rtol=1e-3)  # their true size again, before clipping
    p.step(opt)
    assert torch.allclose(w.detach(), torch.full((3,), 8e-4), rtol=1e-3)
    again = Precision(train, torch.device("cpu"), 1)
    again.load_state_dict(p.state_dict())
    assert again.state_dict()["scale"] == p.state_dict()["scale"]
    assert Precision(TrainConfig(), torch.device("cpu"), 1).state_dict() is None  # fp32: nothing to keep
