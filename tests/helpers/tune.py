"""What tests/{faults,integration,unit}/test_tune.py share: what more than one layer uses."""

from __future__ import annotations

SEARCH = (
    "generations.per_generation={1: {teacher_signal: cached, losses: ["
    "{name: label_smoothing, weight: 0.5, params: {smoothing: 0.1}}, "
    "{name: soft_label, weight: 0.5, params: {temperature: 2.0, top_k: 4}}], "
    "search: {space: {train.lr: {choice: [0.0001, 0.003, 0.01]}, loss.soft_label.temperature: {choice: [1.0, 4.0]}},"
    " num_samples: 3, scheduler: fifo}}}"
)
