"""A generation's arithmetic: fp32, or mixed precision (autocast in bf16 or fp16, with a gradient scaler for fp16).

Weights, gradients and the optimizer stay fp32 (torch.amp's recipe); only the forward passes and the losses run
under autocast. A device that cannot do the precision is refused before the first step: bf16 on a CUDA device
without bf16, and bf16/fp16 on a CPU (about 100x slower there than fp32) unless `train.allow_slow_precision`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from mgkd.config import TrainConfig
from mgkd.errors import MgkdError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """What a training step needs of its precision: the autocast context, the loss scaling and the optimizer
    step (the scaler skips a step whose gradients overflowed, and adapts its scale)."""

    def __init__(self, train: TrainConfig, device: torch.device, generation: int) -> None:
        self.name = train.precision
        self.device = device
        if device.type == "cuda":
            if train.precision == "bf16" and not torch.cuda.is_bf16_supported():
                name = torch.cuda.get_device_name(device)
                raise MgkdError(f"generation {generation}: train.precision bf16 but {name} has no bf16; use fp16 "
                                "(with loss scaling) or fp32")  # fmt: skip
            # TF32 for fp32 matmuls where the device has it (Ampere, compute capability 8, and later)
            tf32 = train.tf32 and torch.cuda.get_device_capability(device)[0] >= 8
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        elif train.precision != "fp32" and not train.allow_slow_precision:
            raise MgkdError(
                f"generation {generation}: train.precision {train.precision} on {device.type}: this device would "
                "run it ~100x slower than fp32; use train.precision fp32 here (bf16/fp16 are for GPUs), or set "
                "train.allow_slow_precision: true to force it"
            )
        self.dtype = DTYPES.get(train.precision)
        self.scaler = torch.amp.GradScaler(device.type) if train.precision == "fp16" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            yield

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """What backward() runs on: the loss, times the scale under fp16."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """The gradients back to their true size (before clipping), under fp16."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skipped when the unscaled gradients hold an inf or NaN
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
