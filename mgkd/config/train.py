"""A generation's loss terms, budget and optimiser."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from mgkd.config.base import StrictModel


class LossTerm(StrictModel):
    """One weighted term of a generation's loss, by plugin name (see `mgkd losses`)."""

    name: str
    weight: float = Field(1.0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(StrictModel):
    """The budget and optimiser of one generation."""

    max_epochs: PositiveInt = 10
    # Stop after this many optimiser steps even if epochs remain (None: epochs only).
    max_steps: PositiveInt | None = None
    # Token budget of a batch: padded target tokens (and source tokens) per batch.
    max_tokens: PositiveInt = 4096
    # Whose target lengths cut the training batches (translation). gold: the references', so a student's batches
    # of teacher-made targets aligned with them (seq_kd on every training source) are cut by lengths they do not
    # have and pad past max_tokens (1.8-2.2x in the demo's students; bench/demo_time.py counts it). longest: the
    # longer of the reference and each such target, so every batch the step reads keeps to max_tokens (in about
    # as many batches an epoch). A matched control is cut the same way as its generation.
    batch_targets: Literal["gold", "longest"] = "gold"
    lr: PositiveFloat = 1e-3
    # Batches per optimizer step on each worker (gradient accumulation): a step's gradient is their mean, so
    # one worker accumulating N batches takes the step that N data-parallel workers take with one batch each.
    accumulate_batches: PositiveInt = 1
    warmup_steps: int = Field(200, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    clip_norm: PositiveFloat | None = 1.0
    # Validation (loss, and BLEU if eval.valid_bleu_sentences > 0) every N epochs.
    eval_every_epochs: PositiveInt = 1
    log_every_steps: PositiveInt = 25
    # Save the training state (student, optimizer, position, RNG) every N steps and at every epoch end,
    # so a killed generation resumes there (`mgkd resume`). None: epoch ends only.
    checkpoint_every_steps: PositiveInt | None = 100
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # CPU threads for torch inside a generation (None: the CPUs Ray gives it).
    threads: PositiveInt | None = None
    # Arithmetic of the forward passes and losses: fp32, or mixed precision (autocast) in bf16 or fp16 (fp16 with
    # a gradient scaler). Weights, optimizer and evaluation stay fp32. bf16/fp16 need a GPU that has them: on a
    # CPU they are ~100x slower than fp32 and refused unless allow_slow_precision (tests, experiments).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    allow_slow_precision: bool = False
    # fp32 matmuls and convolutions in TF32 on CUDA devices that have it (Ampere and later); off: exact fp32.
    tf32: bool = True

    @model_validator(mode="after")
    def _precision_on_cpu(self) -> TrainConfig:
        if self.device == "cpu" and self.precision != "fp32" and not self.allow_slow_precision:
            raise ValueError(
                f"train.precision: {self.precision} on train.device: cpu is ~100x slower than fp32 on a CPU; use "
                "precision fp32 on a CPU (bf16/fp16 are for GPUs), or set train.allow_slow_precision: true to force it"
            )
        return self
