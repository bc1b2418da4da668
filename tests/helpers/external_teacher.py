"""What tests/{faults,integration,unit}/test_external_teacher.py share: what more than one layer uses."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from rich.console import Console

from mgkd.lineage.tracking import read_lineage
from mgkd.orchestration.controller import run_lineage

from . import tiny_config

STUDENT_SEQ_KD = (
    "generations.student.losses=[{name: seq_kd, weight: 0.5, params: {beam_size: 2, max_sentences: 200}},"
    " {name: label_smoothing, weight: 0.5}]"
)
# The demo preset's students start from a copy of their teacher; a student of an external one starts from scratch.
STUDENT = ["generations.student.init=scratch", STUDENT_SEQ_KD]


def _train_spm(texts: list[str], vocab_size: int) -> bytes:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, num_threads=1, minloglevel=2,
    )  # fmt: skip
    return buf.getvalue()


def make_tiny_marian(folder: Path, sources: list[str], targets: list[str], seed: int = 0) -> Path:
    """A randomly initialised 1+1 layer d16 Marian model and its tokenizer, saved as save_pretrained does."""
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    work = folder.parent / f".{folder.name}-spm"
    work.mkdir(exist_ok=True)
    # Marian's layout: </s> 0, <unk> 1, the pieces of both sentencepiece models, <pad> last (also the decoder start).
    vocab = {"</s>": 0, "<unk>": 1}
    for side, texts in (("source", sources), ("target", targets)):
        proto = _train_spm(texts, 120)
        (work / f"{side}.spm").write_bytes(proto)
        sp = spm.SentencePieceProcessor(model_proto=proto)
        for i in range(sp.get_piece_size()):
            if not (sp.is_control(i) or sp.is_unknown(i)):
                vocab.setdefault(sp.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (work / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = MarianTokenizer(
        source_spm=str(work / "source.spm"), target_spm=str(work / "target.spm"), vocab=str(work / "vocab.json")
    )
    config = MarianConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128,
        pad_token_id=vocab["<pad>"], decoder_start_token_id=vocab["<pad>"], eos_token_id=0, forced_eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    MarianMTModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.rmtree(work)
    return folder


@pytest.fixture(scope="module")
def marian(tmp_path_factory, tiny_data) -> Path:
    train = tiny_data.splits["train"]
    return make_tiny_marian(tmp_path_factory.mktemp("marian") / "opus-mt-tiny", train.sources[:300],
                            train.targets[:300])  # fmt: skip


def _external(folder: Path, extra: str = "") -> str:
    return f"generations.teacher.external={{path: '{folder}', kind: hf{extra}}}"


# --- a lineage: external teacher -> student -> student ----------------------------------------------


@pytest.fixture(scope="module")
def external_lineage(tmp_path_factory, marian):
    tmp = tmp_path_factory.mktemp("external-lineage")
    folder = shutil.copytree(marian, tmp / "teacher-model")  # its own copy: a test changes it
    cfg = tiny_config(
        tmp, "generations.count=2", "ray.enabled=false", _external(folder, ", num_beams: 2, max_new_tokens: 6"),
        *STUDENT,
    )  # fmt: skip
    outcome = run_lineage(cfg, Console(quiet=True))
    return cfg, folder, outcome, read_lineage(outcome.tracking_uri, outcome.lineage_id)
