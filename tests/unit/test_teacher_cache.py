"""The cached teacher signal: same loss as online top-k, built once, invalidated when anything changes."""

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mgkd.config import LossTerm
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule, teacher_cache
from mgkd.generations.checkpoint import save_checkpoint
from mgkd.generations.teacher_cache import load_or_build_cache
from mgkd.losses import LossPlugin, TeacherNeeds, create, register
from mgkd.models import build_model
from mgkd.tasks.translation import PAD, SplitData, batch_indices, collate

from ..helpers import tiny_config
from ..helpers.teacher_cache import CACHED, LOSSES_TOP_K

CPU = torch.device("cpu")


@register
class HiddenReader(LossPlugin):
    """Test plugin: reads the teacher's hidden states (which a top-k cache does not keep)."""

    name = "test_cache_hidden_reader"
    description = "reads teacher hidden states"
    teacher_needs = TeacherNeeds(hidden=True)

    def __call__(self, student, teacher, batch):
        return student.logits.sum() * 0.0


@register
class UnlabeledTopK(LossPlugin):
    """Test plugin: reads the teacher's top-k on the unlabeled view (the cache covers gold only)."""

    name = "test_cache_unlabeled_top_k"
    description = "top-k on the unlabeled view"
    teacher_needs = TeacherNeeds(top_k=4)
    view = "unlabeled"

    def __call__(self, student, teacher, batch):
        return student.logits.sum() * 0.0


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the tiny generations use (train.threads=1): on 2 shared cores it is faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def data(tiny_data, tmp_path):
    """The tiny data with its own cache folder, so each test starts without teacher caches."""
    return replace(tiny_data, cache_dir=tmp_path / "cache")


@pytest.fixture
def teacher(data, tmp_path):
    """A (random, frozen) teacher of the tiny model and its checkpoint's sha256."""
    torch.manual_seed(0)
    model = build_model(tiny_config(tmp_path).model, data.vocab_size)
    sha = save_checkpoint(tmp_path / "teacher.pt", model, data.vocab_size)
    return model.eval().requires_grad_(False), sha


def _subset(split: SplitData, n: int) -> SplitData:
    digest = hashlib.sha256("".join(f"{i}\t{s}\t{t}\n" for i, s, t in zip(split.ids[:n], split.sources[:n],
                                    split.targets[:n])).encode()).hexdigest()  # fmt: skip
    return SplitData(split.ids[:n], split.sources[:n], split.targets[:n], split.src[:n], split.tgt[:n], digest)


# -- the signal --------------------------------------------------------------------------


def test_soft_label_on_the_cached_top_k_equals_online_top_k(data, teacher):
    model, sha = teacher
    cache = load_or_build_cache(model, sha, data, 8, 2048, CPU)
    torch.manual_seed(1)
    student = build_model(model.cfg, data.vocab_size)
    plugin = create(LossTerm(name="soft_label", params={"temperature": 2.0, "top_k": 8}))
    train = data.splits["train"]
    padded = 0
    for idx in batch_indices(train, 2048, shuffle=True, seed=7)[:6]:  # the trainer's shuffled batches
        batch = collate(train, idx)
        mask = batch.tgt_out.ne(PAD)
        padded += int((~mask).sum())
        s_out = student(batch.src, batch.tgt_in)
        online = model(batch.src, batch.tgt_in)
        cached = cache.teacher_output(batch)
        assert cached.topk_logprobs.shape == (*batch.tgt_out.shape, 8) and cached.topk_logprobs.dtype == torch.float32
        assert cached.topk_indices.dtype == torch.long and not cached.topk_logprobs[~mask].any()
        values, ids = F.log_softmax(online.logits, -1).topk(8, -1)
        assert torch.equal(cached.topk_indices[mask], ids[mask])
        torch.testing.assert_close(cached.topk_logprobs[mask], values[mask], rtol=1e-3, atol=1e-3)
        want, got = plugin(s_out, online, batch), plugin(s_out, cached, batch)
        assert got.item() == pytest.approx(want.item(), rel=1e-3)
        # gradients reach the student the same way
        (g_want,) = torch.autograd.grad(want, s_out.logits, retain_graph=True)
        (g_got,) = torch.autograd.grad(got, s_out.logits)
        torch.testing.assert_close(g_got, g_want, rtol=1e-2, atol=1e-6)
    assert padded > 0  # the batches had padding, and it was masked


def test_cache_is_built_once_then_memory_mapped(data, teacher, monkeypatch):
    model, sha = teacher
    events = []
    first = load_or_build_cache(model, sha, data, 8, 2048, CPU, events.append)
    assert not first.hit and first.metrics()["teacher_cache_hit"] == 0.0
    progress = [e for e in events if e["type"] == "decode"]
    assert progress[-1] == {"type": "decode", "split": "teacher-cache", "done": len(data.splits["train"]),
                            "total": len(data.splits["train"])}  # fmt: skip

    def no_forward(*args, **kwargs):
        raise AssertionError("the teacher ran although its cache exists")

    monkeypatch.setattr(model, "forward", no_forward)
    second = load_or_build_cache(model, sha, data, 8, 2048, CPU)
    assert second.hit and second.folder == first.folder and second.metrics()["teacher_cache_hit"] == 1.0
    assert all(isinstance(a, np.memmap) for a in (second.offsets, second.logprobs, second.indices))
    assert second.folder.parent == data.cache_dir / "teacher"

    train = data.splits["train"]
    m = json.loads(second.manifest_path.read_text())
    tokens = sum(len(t) + 1 for t in train.tgt)
    assert m["teacher_sha256"] == sha and m["data_hash"] == data.data_hash and m["split_digest"] == train.digest
    assert (m["k"], m["examples"], m["tokens"], m["vocab_size"]) == (8, len(train), tokens, data.vocab_size)
    assert (m["logprob_dtype"], m["index_dtype"]) == ("float16", "int16")  # vocabulary 400 < 32768
    assert second.logprobs.dtype == np.float16 and second.indices.dtype == np.int16
    assert second.logprobs.shape == second.indices.shape == (tokens, 8)
    assert np.array_equal(np.diff(second.offsets), [len(t) + 1 for t in train.tgt])  # target tokens + EOS
    assert set(m["files"]) == {"offsets", "logprobs", "indices"} and m["created"]
    assert m["bytes"] == sum(f["bytes"] for f in m["files"].values())
    assert 32 <= second.metrics()["teacher_cache_bytes_per_token"] < 34  # 8 x (2 + 2) bytes + offsets and headers
    assert (np.diff(second.logprobs.astype(np.float32), axis=1) <= 0).all()  # best first, so top_k < k slices


# -- invalidation ------------------------------------------------------------------------


def test_another_teacher_or_other_data_or_larger_k_gets_its_own_cache(data, teacher):
    model, sha = teacher
    base = load_or_build_cache(model, sha, data, 8, 2048, CPU)
    other_teacher = load_or_build_cache(model, "f" * 64, data, 8, 2048, CPU)
    assert not other_teacher.hit and other_teacher.folder != base.folder
    assert other_teacher.manifest["teacher_sha256"] == "f" * 64

    smaller = replace(data, splits={**data.splits, "train": _subset(data.splits["train"], 300)})
    other_data = load_or_build_cache(model, sha, smaller, 8, 2048, CPU)
    assert not other_data.hit and other_data.folder != base.folder and other_data.manifest["examples"] == 300

    larger_k = load_or_build_cache(model, sha, data, 16, 2048, CPU)
    assert not larger_k.hit and larger_k.k == 16 and larger_k.logprobs.shape[1] == 16
    # the first cache is still there and still valid
    assert load_or_build_cache(model, sha, data, 8, 2048, CPU).hit


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest"])
def test_a_damaged_cache_is_detected_and_rebuilt(data, teacher, damage, caplog):
    model, sha = teacher
    built = load_or_build_cache(model, sha, data, 8, 2048, CPU)
    original = np.array(built.logprobs)
    folder = built.folder
    del built
    if damage == "flip":
        path = folder / "logprobs.npy"
        raw = bytearray(path.read_bytes())
        raw[-100:-90] = bytes(b ^ 0xFF for b in raw[-100:-90])
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path = folder / "indices.npy"
        path.write_bytes(path.read_bytes()[:-64])
    else:  # the manifest says it was made from another teacher
        path = folder / "manifest.json"
        m = json.loads(path.read_text())
        m["teacher_sha256"] = "0" * 64
        path.write_text(json.dumps(m))
    with caplog.at_level("WARNING", logger=teacher_cache.__name__):
        again = load_or_build_cache(model, sha, data, 8, 2048, CPU)
    assert not again.hit and again.folder == folder
    assert "rebuilding" in caplog.text and ("sha256" in caplog.text or "teacher_sha256" in caplog.text)
    assert np.array_equal(np.asarray(again.logprobs), original)
    assert load_or_build_cache(model, sha, data, 8, 2048, CPU).hit


def test_a_crash_while_writing_leaves_no_usable_cache(data, teacher, monkeypatch):
    model, sha = teacher
    real_sync = teacher_cache._sync_file
    synced = []

    def crash_after_first_file(path):
        synced.append(path)
        if len(synced) == 2:
            raise RuntimeError("simulated crash")
        real_sync(path)

    monkeypatch.setattr(teacher_cache, "_sync_file", crash_after_first_file)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_or_build_cache(model, sha, data, 8, 2048, CPU)
    root = data.cache_dir / "teacher"
    assert synced[0].name == "offsets.npy"
    assert not list(root.glob("*/manifest.json")) and not [p for p in root.iterdir() if not p.name.startswith(".")]

    # a hard crash (no clean-up at all) leaves a hidden temporary folder, which is never read
    synced.clear()
    monkeypatch.setattr(teacher_cache, "_discard", lambda path: None)
    with pytest.raises(RuntimeError):
        load_or_build_cache(model, sha, data, 8, 2048, CPU)
    leftovers = [p for p in root.iterdir() if p.name.startswith(".")]
    assert leftovers and not list(root.glob("*/manifest.json"))
    monkeypatch.setattr(teacher_cache, "_sync_file", real_sync)
    rebuilt = load_or_build_cache(model, sha, data, 8, 2048, CPU)
    assert not rebuilt.hit and (rebuilt.folder / "manifest.json").is_file()


def test_k_must_fit_the_vocabulary(data, teacher):
    model, sha = teacher
    with pytest.raises(MgkdError, match="between 1 and the vocabulary size"):
        load_or_build_cache(model, sha, data, data.vocab_size + 1, 2048, CPU)


# -- config ------------------------------------------------------------------------------


def _schedule(tmp_path, *overrides):
    return build_schedule(tiny_config(tmp_path, "generations.count=2", *overrides))


def test_cached_signal_config(tmp_path):
    specs = _schedule(tmp_path, CACHED, f"generations.student.losses={LOSSES_TOP_K}")
    assert [s.teacher_signal for s in specs] == ["online", "cached", "cached"]
    assert specs[1].cache_k == 8 and specs[1].as_params()["teacher_cache_k"] == 8
    specs = _schedule(tmp_path, "generations.student.teacher_signal=cached", "generations.student.teacher_cache_k=16",
                      f"generations.student.losses={LOSSES_TOP_K}")  # fmt: skip
    assert specs[2].cache_k == 16 and specs[2].to_dict()["teacher_cache_k"] == 16
    # one generation only
    specs = _schedule(tmp_path, f"generations.student.losses={LOSSES_TOP_K}",
                      "generations.per_generation={2: {teacher_signal: cached}}")  # fmt: skip
    assert [s.teacher_signal for s in specs] == ["online", "online", "cached"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        # the demo's soft_label reads full logits
        (["generations.student.teacher_signal=cached"],
         r"generation 1: .*loss 'soft_label' needs its logits; set params.top_k \(e.g. 8\) on 'soft_label'"),
        (["generations.student.teacher_signal=cached", "generations.student.teacher_cache_k=4",
          f"generations.student.losses={LOSSES_TOP_K}"],
         r"teacher_cache_k=4 is smaller than top_k=8 of loss 'soft_label'"),
        (["generations.teacher.teacher_signal=cached"], r"generations.teacher: .*generation 0 has none"),
        (["generations.student.teacher_signal=cached", "generations.student.losses=[{name: label_smoothing}]"],
         r"no loss term reads the teacher.*use teacher_signal: online"),
        (["generations.student.teacher_signal=cached",
          "generations.student.losses=[{name: soft_label, params: {top_k: 8}}, {name: test_cache_hidden_reader}]"],
         r"loss 'test_cache_hidden_reader' needs its hidden; remove that term or use teacher_signal: online"),
        (["generations.student.teacher_signal=cached",
          "generations.student.losses=[{name: soft_label, params: {top_k: 8}}, {name: test_cache_unlabeled_top_k}]"],
         r"loss 'test_cache_unlabeled_top_k' reads the teacher on the 'unlabeled' view.*gold"),
    ],
)  # fmt: skip
def test_cached_signal_config_errors(tmp_path, overrides, message):
    with pytest.raises(MgkdError, match=message):
        _schedule(tmp_path, *overrides)


def test_unknown_teacher_signal_names_the_field(tmp_path):
    with pytest.raises(MgkdError, match=r"generations.student.teacher_signal"):
        _schedule(tmp_path, "generations.student.teacher_signal=disk")
