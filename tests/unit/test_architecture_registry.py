"""Adding an architecture is one file: a throwaway one registered here reaches every reader of the declarations.

The schedule (task, config check, shrink), the internal-representation loss
(features, layer counts, widths), layer cutting and the lineage table read
`mgkd.models.registry`; nothing else names an architecture.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mgkd.config import LossTerm, ModelConfig, ShrinkConfig, build_config
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule
from mgkd.generations.spec import shrink_model
from mgkd.losses import create
from mgkd.models import architecture, architectures, build_model, task_architectures
from mgkd.models.cutting import cut_layers, plan_cut
from mgkd.models.registry import ENCODER_LAYERS, SEQ2SEQ_LAYERS, model_label, register, unregister
from mgkd.outputs import Seq2SeqOutput
from mgkd.tasks.translation import PAD, Batch

NAME = "tiny_test_arch"


def _check_tiny(cfg: ModelConfig) -> None:
    if cfg.d_model % 4:
        raise ValueError(f"{NAME} needs d_model divisible by 4 (got {cfg.d_model})")


class TinySeq2Seq(nn.Module):
    """An encoder of tanh(linear) layers, and a decoder that reads the mean encoder state: the least that trains."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model, padding_idx=PAD)
        self.encoder = nn.ModuleList(nn.Linear(cfg.d_model, cfg.d_model) for _ in range(cfg.encoder_layers))
        self.out = nn.Linear(cfg.d_model, vocab_size)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, return_hidden: bool = False,
                return_attention: bool = False) -> Seq2SeqOutput:  # fmt: skip
        x, hidden = self.embed(src), []
        for layer in self.encoder:
            x = torch.tanh(layer(x))
            hidden.append(x)
        logits = self.out(x.mean(1, keepdim=True).expand(-1, tgt_in.size(1), -1))
        return Seq2SeqOutput(logits, encoder_hidden=hidden if return_hidden else [])


@pytest.fixture
def tiny_arch():
    register(
        NAME,
        task="translation",
        description="a throwaway test architecture",
        exposes={"encoder_hidden"},
        layers=ENCODER_LAYERS,
        cuttable=True,
        check=_check_tiny,
    )(TinySeq2Seq)
    yield architecture(NAME)
    unregister(NAME)


def _cfg(d_model: int = 8, enc: int = 4) -> ModelConfig:
    return ModelConfig(arch=NAME, d_model=d_model, n_heads=1, encoder_layers=enc, decoder_layers=1, ff_dim=8,
                       dropout=0.0)  # fmt: skip


def test_the_registry_and_the_schedule_know_it(tiny_arch):
    assert architectures()[NAME] is tiny_arch and tiny_arch.cls is TinySeq2Seq
    assert NAME in task_architectures("translation") and NAME not in task_architectures("classification")
    assert tiny_arch.features == frozenset({("encoder", "hidden")})
    assert isinstance(build_model(_cfg(), vocab_size=11), TinySeq2Seq)
    assert model_label(NAME, _cfg().model_dump()) == f"{NAME} d8 4L"  # one stack: counted in layers
    sizes = {"d_model": 64, "encoder_layers": 3, "decoder_layers": 2}
    assert model_label("transformer", sizes) == "transformer d64 3+2"
    # The schedule accepts it for its task and runs its own config check on every generation.
    overrides = [f"model.arch={NAME}", "model.d_model=8", "model.n_heads=1"]
    specs = build_schedule(build_config(overrides=[*overrides, "generations.count=1"]))
    assert [s.model.arch for s in specs] == [NAME, NAME]
    with pytest.raises(MgkdError, match=rf"generations.teacher: {NAME} needs d_model divisible by 4 \(got 6\)"):
        build_schedule(build_config(overrides=[f"model.arch={NAME}", "model.d_model=6", "model.n_heads=1"]))
    with pytest.raises(MgkdError, match=f"arch '{NAME}' does not fit task 'classification'"):
        build_schedule(build_config(preset="classification", overrides=overrides))


def test_shrinking_makes_only_its_declared_stacks_fewer(tiny_arch):
    smaller = shrink_model(_cfg(enc=4), ShrinkConfig(dimension="layers", factor=0.5))
    assert (smaller.encoder_layers, smaller.decoder_layers) == (2, 1)  # the decoder count is no stack of it
    half = ShrinkConfig(dimension="layers", factor=0.5)
    seq2seq = shrink_model(ModelConfig(encoder_layers=4, decoder_layers=4), half)
    assert (seq2seq.encoder_layers, seq2seq.decoder_layers) == (2, 2)
    assert architecture("transformer").layers == SEQ2SEQ_LAYERS


def test_the_internal_loss_reads_its_features_and_layers(tiny_arch):
    student, teacher = _cfg(d_model=4, enc=2), _cfg(d_model=8, enc=4)
    uniform = create(LossTerm(name="internal", params={"uniform_features": ["hidden", "attention"]}))
    # Only what it exposes is mapped: encoder hidden states, student layer j -> teacher layer 2j.
    assert [(p.side, p.feature, p.student, p.teacher) for p in uniform.resolved_map(student, teacher)] == [
        ("encoder", "hidden", 1, 2), ("encoder", "hidden", 2, 4)]  # fmt: skip
    decoder = create(LossTerm(name="internal", params={"layer_map": [{"teacher": 1, "student": 1, "side": "decoder"}]}))
    with pytest.raises(MgkdError, match=rf"student's arch '{NAME}' does not expose decoder hidden .*encoder hidden"):
        decoder.check(student, teacher)
    too_deep = create(LossTerm(name="internal", params={"layer_map": [{"teacher": 5, "student": 1}]}))
    with pytest.raises(MgkdError, match=r"teacher layer 5 is outside the teacher's encoder \(layers 1..4\)"):
        too_deep.check(student, teacher)
    # The term itself: a projection from the student's width (4) to the teacher's (8), a finite distance.
    torch.manual_seed(0)
    s_model, t_model = build_model(student, 11), build_model(teacher, 11)
    params = uniform.setup(s_model, t_model)
    assert [tuple(p.shape) for p in params] == [(8, 4), (8, 4)]
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, PAD]])
    batch = Batch([0, 1], src, torch.tensor([[2, 5], [2, 6]]), torch.tensor([[5, 3], [6, 3]]))
    value = uniform(s_model(src, batch.tgt_in, return_hidden=True), t_model(src, batch.tgt_in, return_hidden=True),
                    batch)  # fmt: skip
    assert value.requires_grad and 0.0 < value.item() < 2.0  # 1 - cosine lies in [0, 2]; trains the student


def test_cutting_copies_the_layers_of_its_declared_stacks(tiny_arch):
    teacher_cfg, student_cfg = _cfg(enc=4), _cfg(enc=2)
    plan = plan_cut("spread", student_cfg, teacher_cfg)
    assert plan == {"encoder": [2, 4]}  # its one stack; no decoder entry
    torch.manual_seed(0)
    teacher, student = build_model(teacher_cfg, 11), build_model(student_cfg, 11)
    cut_layers(student, teacher, plan)
    for j, t in enumerate(plan["encoder"]):
        assert torch.equal(student.encoder[j].weight, teacher.encoder[t - 1].weight)
        assert student.encoder[j].weight.data_ptr() != teacher.encoder[t - 1].weight.data_ptr()
    assert torch.equal(student.embed.weight, teacher.embed.weight)
    # An architecture that does not declare itself cuttable is refused, naming those that are.
    with pytest.raises(MgkdError, match=rf"one arch \(.*{NAME}.*\); got teacher bigru"):
        plan_cut("first", ModelConfig(arch="bigru"), ModelConfig(arch="bigru"))


def test_a_declaration_must_name_known_output_fields():
    with pytest.raises(TypeError, match="unknown output field"):
        register("broken_arch", task="translation", description="-", exposes={"encoder_states"}, layers=())(TinySeq2Seq)
    assert "broken_arch" not in architectures()
