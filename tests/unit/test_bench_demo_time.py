"""bench/demo_time.py's padding count: padded over real target positions of a batch plan, and what a plan made on
the longer of the gold and seq-KD targets saves when the two disagree."""

from __future__ import annotations

import numpy as np
import pytest

from mgkd.tasks.translation import SplitData

from ..helpers.bench import load_bench


@pytest.fixture(scope="module")
def demo_time():
    return load_bench("demo_time")


def test_padding_counts_each_batch_as_wide_as_its_longest_target_and_eos(demo_time):
    # batch [0, 1]: width 3 + 1 = 4, two rows, 8 positions for 4 + 2 real; batch [2]: 6 for 6
    assert demo_time.padding_ratio([[0, 1], [2]], [3, 1, 5]) == pytest.approx(14 / 12)
    assert demo_time.padding_ratio([[0], [1], [2]], [3, 1, 5]) == 1.0


def test_a_plan_on_the_gold_lengths_pads_targets_it_does_not_see_and_one_on_the_longer_does_not(demo_time):
    n = 200
    src, gold = [6] * n, [6] * n
    pseudo = [2 if i % 2 else 12 for i in range(n)]  # the teacher's outputs: short and long, alike in gold length
    ids = [str(i) for i in range(n)]

    def split(tgt):
        return SplitData(ids, ids, ids, [np.ones(k, np.int32) for k in src], [np.ones(k, np.int32) for k in tgt])

    pad = demo_time.target_padding(split(gold), split(pseudo), max_tokens=130, seed=3)
    assert pad.gold == 1.0  # the plan was made for these
    # every gold batch mixes 2s and 12s: width 13 for a mean of 8 real positions
    assert pad.seq_kd == pytest.approx(13 / 8, rel=0.05)
    assert pad.seq_kd_planned_on_longer < 1.1
    # each plan keeps within the budget on the lengths it was made on (width x rows <= max_tokens)
    assert pad.batches == n // (130 // 7) + (n % (130 // 7) > 0)
    assert pad.batches_planned_on_longer > pad.batches  # the 12s take more room
