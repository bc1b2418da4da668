"""What tests/{faults,integration}/test_ray_train.py share: what more than one layer uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from mgkd.generations import build_schedule

from . import tiny_config


def _spec(tmp_path: Path, *extra: str):
    cfg = tiny_config(tmp_path, "generations.count=1", "train.checkpoint_every_steps=4", *extra)
    return cfg, build_schedule(cfg)[0]


@pytest.fixture(scope="module")
def classification_data(tmp_path_factory):
    from mgkd.tasks import prepare

    tmp = tmp_path_factory.mktemp("classification-data")
    cfg = _classification_config(tmp)
    return prepare(cfg)


def _classification_config(tmp_path: Path, *extra: str):
    from mgkd.config import build_config

    from .classification import TINY_CLASSIFICATION, sentiment_csv

    data = tmp_path / "reviews.csv"
    if not data.is_file():
        sentiment_csv(data)
    return build_config(preset="classification", overrides=[
        *TINY_CLASSIFICATION, f"classification.source={data}", f"output_dir={tmp_path / 'out'}",
        "generations.count=1", "train.checkpoint_every_steps=4", "train.log_every_steps=1", "train.max_epochs=2",
        *extra,
    ])  # fmt: skip
