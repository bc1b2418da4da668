"""What every text task shares: deterministic splits by a hash of the example id, sentencepiece training, and
length-bucketed batches of at most `max_tokens`."""

from __future__ import annotations

import hashlib
import io
import random
from typing import Protocol, TypeVar

import sentencepiece as spm

from mgkd.config import SplitConfig, TokenizerConfig
from mgkd.errors import MgkdError
from mgkd.vocabulary import BOS, EOS, PAD, UNK

SPLITS = ("train", "valid", "test")


class HasId(Protocol):
    id: str


Example = TypeVar("Example", bound=HasId)


def _unit_hash(salt: str, example_id: str) -> float:
    digest = hashlib.sha256(f"{salt}\0{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_pairs(pairs: list[Example], cfg: SplitConfig, max_pairs: int | None = None,
                carve: tuple[str, ...] = ("valid", "test")) -> dict[str, list[Example]]:  # fmt: skip
    """Assign each pair to train/valid/test by a hash of its id alone.

    The same id lands in the same split whatever else is in the corpus; the
    valid/test caps keep the first pairs by hash and send the rest to train.
    Only the splits in `carve` are cut from the corpus (a fixed set replaces the others; they stay empty).
    """
    keyed = sorted(((_unit_hash(cfg.salt, p.id), p) for p in pairs), key=lambda x: x[0])
    if max_pairs is not None:
        keyed = keyed[:max_pairs]
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    caps = {"valid": cfg.max_valid, "test": cfg.max_test}
    for _, p in keyed:
        # Re-hash with another salt so max_pairs (which keeps low hashes) does not bias the split.
        u = _unit_hash(cfg.salt + ":split", p.id)
        test_fraction = cfg.test_fraction if "test" in carve else 0.0
        valid_fraction = cfg.valid_fraction if "valid" in carve else 0.0
        name = "test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"
        if name != "train" and caps[name] is not None and len(out[name]) >= caps[name]:
            name = "train"
        out[name].append(p)
    for name in ("train", *carve):
        if not out[name]:
            raise MgkdError(
                f"the {name} split is empty ({len(keyed)} pairs in all); use a larger corpus "
                "or raise split.valid_fraction / split.test_fraction"
            )
    return out


def train_sentencepiece(texts: list[str], cfg: TokenizerConfig, seed: int) -> bytes:
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=cfg.vocab_size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            num_threads=1,  # one thread: the same model on every run
            shuffle_input_sentence=False,
            minloglevel=2,
        )
    except RuntimeError as e:
        msg = str(e)
        if "Vocabulary size" in msg:
            raise MgkdError(
                f"tokenizer.vocab_size={cfg.vocab_size} is too large for this training text: {msg.strip()} "
                "Lower tokenizer.vocab_size."
            ) from None
        raise MgkdError(f"sentencepiece could not train on the corpus: {msg.strip()}") from None
    return model.getvalue()


def length_batches(keys: list, widths: list[int], max_tokens: int, shuffle: bool, seed: int) -> list[list[int]]:
    """Example indices in batches of width x size <= max_tokens, sorted by `keys` (ties in a seeded random
    order), the batch order shuffled by the same generator; every task's batching."""
    rng = random.Random(seed)
    order = list(range(len(keys)))
    if shuffle:
        rng.shuffle(order)
    order.sort(key=keys.__getitem__)
    batches: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for i in order:
        w = widths[i]
        if cur and max(width, w) * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur, width = [], 0
        cur.append(i)
        width = max(width, w)
    if cur:
        batches.append(cur)
    if shuffle:
        rng.shuffle(batches)
    return batches
