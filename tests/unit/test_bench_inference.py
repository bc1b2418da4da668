"""bench/inference.py's parts on a tiny random Transformer: every variant decodes every sentence into its own
slot at both batch sizes, the exports are the sizes it reports, and the report judges the targets by them
(behaviour only: no timing is asserted)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import sentencepiece as spm
import torch

from mgkd.config import ModelConfig
from mgkd.generations.checkpoint import save_checkpoint
from mgkd.models import build_model

from ..helpers.bench import load_bench


@pytest.fixture(scope="module")
def bench():
    module = load_bench("inference")
    yield module
    del sys.modules[module.__name__]


@pytest.fixture(scope="module")
def measured(bench, tiny_data, tmp_path_factory, one_torch_thread):
    tmp = tmp_path_factory.mktemp("bench-inference")
    tokenizer = tmp / "spm.model"
    tokenizer.write_bytes(tiny_data.spm_model)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=32, n_heads=4, ff_dim=48, encoder_layers=2, decoder_layers=2),
                        sp.get_piece_size()).eval()  # fmt: skip
    with torch.no_grad():  # weights scaled up: every sentence says something else (random ones repeat a piece)
        for p in model.parameters():
            p.normal_(0, 0.3)
    checkpoint = tmp / "checkpoint.pt"
    save_checkpoint(checkpoint, model, sp.get_piece_size())
    test = tiny_data.splits["test"]
    sources = [np.asarray(ids, dtype=np.int64) for ids in sp.encode(list(test.sources[:16]))]
    short = {"meta": {"spec": {"eval": {"max_len_a": 0.5, "max_len_b": 4}}}}  # the checkpoint's limits, kept short
    runs = bench.variants(model, short, checkpoint, tokenizer, sp, tmp, threads=1)
    for bs in bench.BATCH_SIZES:
        bench.measure(runs, sources, bs)
    lines, figures = bench.report(runs, sources, list(test.targets[:16]), sp, tiny_data.scoring, ["header"])
    return {"runs": runs, "sources": sources, "model": model, "sp": sp, "checkpoint": checkpoint, "tmp": tmp,
            "lines": lines, "figures": figures}  # fmt: skip


def test_every_variant_decodes_every_sentence_into_its_own_slot(bench, measured):
    runs, sources = measured["runs"], measured["sources"]
    assert [v.name for v in runs] == ["torch greedy", "torch beam 4", "ct2 float32 greedy", "ct2 float32 beam 4",
                                      "ct2 int8 greedy", "ct2 int8 beam 4"]  # fmt: skip
    greedy = runs[0]
    one_by_one = [greedy.engine.decode_batch([s])[0] for s in sources]
    assert len({tuple(o) for o in one_by_one}) > len(sources) // 2  # varied outputs, so a mix-up would show
    for v in runs:
        for bs in bench.BATCH_SIZES:
            assert len(v.outputs[bs]) == len(sources) and all(v.outputs[bs]), (v.name, bs)
            assert v.times[bs] > 0 and v.cpu[bs] >= 0
    assert greedy.outputs[1] == one_by_one and greedy.outputs[32] == one_by_one
    assert runs[2].outputs[32] == one_by_one  # CTranslate2 float32 greedy gives mgkd's own ids


def test_sizes_are_the_checkpoint_and_the_files_ctranslate2_reads(bench, measured):
    runs, tmp = measured["runs"], measured["tmp"]
    assert runs[0].size_bytes == runs[1].size_bytes == measured["checkpoint"].stat().st_size
    for q, v in (("float32", runs[2]), ("int8", runs[4])):
        folder = tmp / f"ct2-{q}"
        model_bin = (folder / "model.bin").stat().st_size
        assert model_bin < v.size_bytes < model_bin + (folder / "spm.model").stat().st_size  # + the vocabulary only
    assert runs[4].size_bytes < runs[2].size_bytes  # int8 weights are smaller


def test_the_report_has_a_row_per_variant_and_judges_the_targets(bench, measured):
    lines, figures, runs = measured["lines"], measured["figures"], measured["runs"]
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| variant")]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == [v.name for v in runs]
    assert figures["size_ratio"] == pytest.approx(runs[0].size_bytes / runs[4].size_bytes)
    assert figures["speed_ratio"] == pytest.approx((runs[0].times[32]) / runs[4].times[32])
    target = next(line for line in lines if line.startswith("target "))
    assert f"{figures['speed_ratio']:.2f}x" in target and f"{figures['size_ratio']:.2f}x" in target
    assert ("not met" in target) == (figures["speed_ratio"] < 3 or figures["size_ratio"] < 3)
    agreement = next(line for line in lines if line.startswith("same token ids"))
    n = len(measured["sources"])
    assert f"ct2 float32 greedy {n}/{n}" in agreement and f"torch greedy batch 1 as batch 32: {n}/{n}" in agreement
