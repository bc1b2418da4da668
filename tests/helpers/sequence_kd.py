"""What tests/{integration,unit}/test_sequence_kd.py share: what more than one layer uses."""

from __future__ import annotations

import pytest

import mgkd.generations.pseudo_targets as store


class CountingDecoder:
    """Wraps the store's decoder to count how many sentences it decodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls, self.sentences = 0, 0
        self.real = store.translate_n_best
        monkeypatch.setattr(store, "translate_n_best", self)

    def __call__(self, model, sources, *args, **kwargs):
        self.calls += 1
        self.sentences += len(sources)
        return self.real(model, sources, *args, **kwargs)
