"""Classification: every data source, bad rows named with their fix, metrics, the model, its losses and cut."""

from __future__ import annotations

import pytest

from mgkd.config import build_config
from mgkd.generations import build_schedule
from mgkd.tasks.classification import (
    batch_indices,
)

from ..helpers.classification import PRESET


class Stop(Exception):
    pass


def test_a_killed_student_resumes_to_the_same_checkpoint(tmp_path, one_torch_thread):
    from mgkd.generations import train_generation
    from mgkd.generations.train_state import STATE_FILE
    from mgkd.tasks import prepare

    from ..helpers.classification import TINY_CLASSIFICATION, sentiment_csv

    source = sentiment_csv(tmp_path / "reviews.csv", 360)
    cfg = build_config(PRESET, overrides=[*TINY_CLASSIFICATION, f"classification.source={source}",
                                          f"output_dir={tmp_path}", "generations.count=1",
                                          "train.max_epochs=1", "train.checkpoint_every_steps=4"])  # fmt: skip
    data = prepare(cfg)
    teacher_spec, spec = build_schedule(cfg)
    teacher = train_generation(teacher_spec, data, tmp_path / "g0")
    ckpt = (teacher.checkpoint, teacher.checkpoint_sha256)
    straight = train_generation(spec, data, tmp_path / "straight", *ckpt)

    def kill_at_step_10(event):
        if event["type"] == "step" and event["step"] >= 10:
            raise Stop

    with pytest.raises(Stop):
        train_generation(spec, data, tmp_path / "killed", *ckpt, events=kill_at_step_10)
    assert (tmp_path / "killed" / STATE_FILE).is_file()
    seen: list[dict] = []
    resumed = train_generation(spec, data, tmp_path / "killed", *ckpt, events=seen.append)
    # states are saved every 4 steps and at each epoch's end: resume starts at the last one before step 10
    per_epoch = len(batch_indices(data.splits["train"], cfg.train.max_tokens, shuffle=False))
    saved = {4, 8} | {per_epoch * k for k in (1, 2) if per_epoch * k < 10}
    assert [e["step"] for e in seen if e["type"] == "resume"] == [max(saved)]
    assert resumed.checkpoint_sha256 == straight.checkpoint_sha256  # bit for bit
    assert resumed.metrics["test_accuracy"] == straight.metrics["test_accuracy"]
    assert not (tmp_path / "killed" / STATE_FILE).exists()
