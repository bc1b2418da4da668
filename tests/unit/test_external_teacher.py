"""An external generation 0: a Hugging Face seq2seq folder (here a tiny random Marian) teaching through its text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

pytest.importorskip("transformers")

from mgkd.config import build_config  # noqa: E402
from mgkd.errors import MgkdError  # noqa: E402
from mgkd.generations import build_schedule  # noqa: E402
from mgkd.generations.pseudo_targets import DecodeSettings, teacher_outputs  # noqa: E402
from mgkd.generations.teacher import load_teacher  # noqa: E402
from mgkd.models.external import HFTeacher, folder_manifest, folder_sha256  # noqa: E402

from ..helpers import tiny_config  # noqa: E402
from ..helpers.external_teacher import STUDENT, STUDENT_SEQ_KD, _external, _train_spm

# transformers' Marian tokenizer asks for sacremoses, which it does not need for this.
pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_tiny_t5(folder: Path, texts: list[str], seed: int = 0) -> Path:
    """A randomly initialised 1+1 layer d16 T5 model and its tokenizer (one sentencepiece vocabulary)."""
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    sp = spm.SentencePieceProcessor(model_proto=_train_spm(texts, 150))
    # T5's layout: <pad> 0 (also the decoder start), </s> 1, <unk> 2, then the pieces with their scores.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [
        (sp.id_to_piece(i), sp.get_score(i))
        for i in range(sp.get_piece_size())
        if not (sp.is_control(i) or sp.is_unknown(i))
    ]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- the model ---------------------------------------------------------------------------------------


def test_hf_teacher_translates_text_in_batches(marian, tiny_data):
    teacher = HFTeacher.load(marian, folder_sha256(marian))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.train().training  # frozen: it stays in eval mode
    assert teacher.sha256 == folder_sha256(marian)
    texts = tiny_data.splits["test"].sources[:10]
    batched = teacher.translate_texts(texts, beam_size=3, n_best=3, max_len_a=0.5, max_len_b=3, batch_size=4)
    single = [teacher.translate_texts([t], beam_size=3, n_best=3, max_len_a=0.5, max_len_b=3)[0] for t in texts]
    assert [[h for _, h in x] for x in batched] == [[h for _, h in x] for x in single]
    for nbest in batched:
        assert 1 <= len(nbest) <= 3 and all(isinstance(h, str) for _, h in nbest)
        assert [s for s, _ in nbest] == sorted((s for s, _ in nbest), reverse=True)  # best first
        assert len({h for _, h in nbest}) == len(nbest)  # distinct texts
    greedy = teacher.translate_texts(texts, max_len_a=0.0, max_len_b=4)
    assert all(len(x) == 1 and x[0][0] <= 0 for x in greedy)
    # the output limit is counted in the teacher's tokens, EOS included, and capped by max_new_tokens
    ids = teacher.tokenizer(texts[0])["input_ids"]
    assert teacher._limit(len(ids), 1.5, 10) == -(-3 * len(ids) // 2) + 10
    capped = HFTeacher.load(marian, max_new_tokens=2)
    assert capped._limit(len(ids), 1.5, 10) == 2 and capped.options["max_new_tokens"] == 2
    with pytest.raises(MgkdError, match="another vocabulary"):
        teacher(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))


def test_a_t5_folder_with_its_task_prefix(tmp_path, tiny_data):
    train = tiny_data.splits["train"]
    folder = make_tiny_t5(tmp_path / "t5-tiny", train.sources[:200] + train.targets[:200])
    prefix = "translate English to French: "
    cfg = tiny_config(tmp_path, _external(folder, f", source_prefix: '{prefix}'"), "generations.count=1", *STUDENT)
    specs = build_schedule(cfg)
    params = specs[0].as_params()
    assert params["model.arch"] == "hf:t5" and params["external.source_prefix"] == prefix
    assert (params["model.d_model"], params["model.encoder_layers"], params["model.decoder_layers"]) == (16, 1, 1)
    # generation 1 loads its teacher as the config says: with the prefix
    teacher, _, digest = load_teacher(str(folder), folder_sha256(folder), specs[1].teacher_external)
    assert isinstance(teacher, HFTeacher) and teacher.source_prefix == prefix and digest == folder_sha256(folder)
    texts = train.sources[:4]
    prefixed = teacher.translate_texts(texts, 2, 2, 0.0, 4)
    plain = HFTeacher.load(folder).translate_texts(texts, 2, 2, 0.0, 4)
    assert all(1 <= len(x) <= 2 for x in prefixed)
    assert [x[0][0] for x in prefixed] != [x[0][0] for x in plain]  # the prefix reached the model


def test_folder_checksum_follows_the_files(marian, tmp_path, tiny_data):
    copy = shutil.copytree(marian, tmp_path / "copy")
    manifest = folder_manifest(copy)
    assert manifest["sha256"] == folder_sha256(marian)  # the files decide, not where they are
    assert {f["path"] for f in manifest["files"]} >= {"config.json", "model.safetensors", "vocab.json"}
    by_path = {f["path"]: f for f in manifest["files"]}
    assert by_path["config.json"]["size"] == (copy / "config.json").stat().st_size
    (copy / ".cache").mkdir()
    (copy / ".cache" / "download.lock").write_text("x")  # a download tool's metadata is not the model
    assert folder_sha256(copy) == manifest["sha256"]

    teacher = HFTeacher.load(copy)
    examples = list(zip(tiny_data.splits["train"].ids[:8], tiny_data.splits["train"].sources[:8]))
    settings = DecodeSettings(max_len_a=0.0, max_len_b=3)
    first = teacher_outputs(teacher, manifest["sha256"], examples, tiny_data.tokenizer, settings, tmp_path / "store")
    config = json.loads((copy / "config.json").read_text())
    config["dropout"] = 0.2  # one value in one file
    (copy / "config.json").write_text(json.dumps(config))
    changed = folder_sha256(copy)
    assert changed != manifest["sha256"]
    with pytest.raises(MgkdError, match="changed since generation 0"):
        HFTeacher.load(copy, manifest["sha256"])
    # the pseudo-target store is keyed by that checksum: the changed model decodes anew
    again = teacher_outputs(HFTeacher.load(copy, changed), changed, examples, tiny_data.tokenizer, settings,
                            tmp_path / "store")  # fmt: skip
    assert not again.cached and again.path != first.path
    (copy / "extra.txt").write_text("")  # an added file counts too
    assert folder_sha256(copy) != changed


def test_the_store_keys_the_teachers_options(marian, tmp_path, tiny_data):
    examples = list(zip(tiny_data.splits["train"].ids[:6], tiny_data.splits["train"].sources[:6]))
    settings = DecodeSettings(max_len_a=0.0, max_len_b=3)
    sha = folder_sha256(marian)
    plain = teacher_outputs(HFTeacher.load(marian), sha, examples, None, settings, tmp_path)
    assert teacher_outputs(HFTeacher.load(marian), sha, examples, None, settings, tmp_path).cached
    prefixed = teacher_outputs(HFTeacher.load(marian, source_prefix="translate: "), sha, examples, None, settings,
                               tmp_path)  # fmt: skip
    assert not prefixed.cached and prefixed.path != plain.path
    assert json.loads(prefixed.manifest.read_text())["teacher_options"]["source_prefix"] == "translate: "


# --- config-time errors ----------------------------------------------------------------------------


def test_folders_that_are_not_seq2seq_models_are_refused(marian, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(marian / name, no_tokenizer / name)
    cases = [
        (tmp_path / "missing", "no such folder"),
        (empty, "no config.json"),
        (bert, "not a seq2seq model: model_type 'bert'"),
        (no_tokenizer, "no tokenizer"),
    ]
    for folder, what in cases:
        with pytest.raises(MgkdError, match="generations.teacher.external") as err:
            tiny_config(tmp_path, _external(folder))
        assert str(folder) in str(err.value) and what in str(err.value)
    with pytest.raises(MgkdError, match="kind"):
        tiny_config(tmp_path, f"generations.teacher.external={{path: '{marian}', kind: onnx}}")


@pytest.mark.parametrize(
    "overrides,match",
    [
        # the demo's student starts from a copy of its teacher and learns its logits (soft_label): both refused
        (
            [],
            "generation 1: the teacher is the external model .*: init 'teacher' .* set init: scratch .*; "
            "loss 'soft_label' needs the teacher's logits",
        ),
        ([*STUDENT, "generations.student.losses=[{name: internal}]"], "loss 'internal' needs the teacher's hidden"),
        ([STUDENT_SEQ_KD], "generation 1: .*init 'teacher'"),
        ([*STUDENT, "generations.per_generation.1.init=cut"], "generation 1: .*init 'cut'"),
        ([*STUDENT, "generations.per_generation.2.teacher_generations=[0, 1]"], "generation 2: .*an ensemble"),
        (["generations.teacher.model={d_model: 64}"], "drop generations.teacher.model"),
    ],
)
def test_students_of_an_external_teacher_are_checked(marian, tmp_path, overrides, match):
    with pytest.raises(MgkdError, match=match):
        build_schedule(tiny_config(tmp_path, _external(marian), "generations.count=2", *overrides))
    with pytest.raises(MgkdError, match="only generation 0 can be an external model"):
        tiny_config(tmp_path, f"generations.per_generation.1.external={{path: '{marian}'}}")


def test_a_config_file_may_name_the_folder_relative_to_itself(marian, tmp_path):
    shutil.copytree(marian, tmp_path / "models" / "tiny")
    config = tmp_path / "exp.yaml"
    config.write_text("generations:\n  teacher:\n    external:\n      path: models/tiny\n      num_beams: 2\n")
    cfg = build_config(config, overrides=STUDENT)
    ext = cfg.generations.teacher.external
    assert ext.path == (tmp_path / "models" / "tiny").resolve() and ext.num_beams == 2 and ext.kind == "hf"
    specs = build_schedule(cfg)
    assert specs[0].external == ext and specs[1].teacher_external == ext and specs[2].teacher_external is None
    params = specs[0].as_params()
    assert params["model.arch"] == "hf:marian" and params["external.path"] == str(ext.path)
    assert (params["model.d_model"], params["model.encoder_layers"], params["model.decoder_layers"]) == (16, 1, 1)
    assert not any(k.startswith(("train.", "loss.")) for k in params)
    assert json.dumps(specs[1].to_dict())  # plain values for spec.json and checkpoints
