"""The internal-representation plugin: distances by hand, projections, maps, errors, schedules, gradients."""

import math

import pytest
import torch

from mgkd.config import LossTerm, ModelConfig
from mgkd.errors import MgkdError
from mgkd.generations import build_schedule, train_generation
from mgkd.generations.checkpoint import parameter_hash
from mgkd.generations.loop import forward_pair
from mgkd.losses import Criterion, create
from mgkd.losses.distances import attention_kl, hidden_cosine, hidden_mse
from mgkd.losses.internal import InternalRepresentation
from mgkd.losses.layer_map import LayerPair, uniform_layers
from mgkd.models import build_model
from mgkd.models.transformer import Seq2SeqOutput
from mgkd.tasks.translation import PAD, Batch

from ..helpers import teacher_then_student, tiny_config


def _cfg(d_model: int = 32, enc: int = 2, dec: int = 2, heads: int = 2, **kw) -> ModelConfig:
    return ModelConfig(d_model=d_model, n_heads=heads, encoder_layers=enc, decoder_layers=dec, ff_dim=64, dropout=0.0,
                       **kw)  # fmt: skip


def _plugin(**params) -> InternalRepresentation:
    plugin = create(LossTerm(name="internal", params=params))
    assert isinstance(plugin, InternalRepresentation)
    return plugin


def _batch(src: list[list[int]], tgt: list[list[int]] | None = None) -> Batch:
    s = torch.tensor(src)
    t = s if tgt is None else torch.tensor(tgt)
    return Batch(list(range(len(src))), s, t, t)


# -- the distances, by hand ------------------------------------------------------


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_hidden_cosine_by_hand_ignores_padding():
    # two sentences: 1 real position + 2 pads, and 3 real positions -> the mean is over the 4 real positions
    s = torch.tensor([[[1.0, 0.0], [7.0, 7.0], [3.0, -2.0]], [[1.0, 1.0], [2.0, 0.0], [0.0, -1.0]]])
    t = torch.tensor([[[0.0, 1.0], [1.0, 9.0], [0.0, 5.0]], [[2.0, 2.0], [1.0, 1.0], [0.0, 1.0]]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    real = [(0, 0), (1, 0), (1, 1), (1, 2)]
    expected = sum(1 - _cos(s[b, i].tolist(), t[b, i].tolist()) for b, i in real) / 4  # 1, 0, 1-1/sqrt2, 2 -> /4
    assert expected == pytest.approx((1 + 0 + (1 - 1 / math.sqrt(2)) + 2) / 4)
    assert hidden_cosine(s, t, mask).item() == pytest.approx(expected, rel=1e-6)
    s2, t2 = s.clone(), t.clone()
    s2[0, 1:] = torch.randn(2, 2) * 100
    t2[0, 1:] = torch.randn(2, 2) * 100
    assert hidden_cosine(s2, t2, mask).item() == pytest.approx(expected, rel=1e-6)


def test_hidden_mse_by_hand_ignores_padding():
    s = torch.tensor([[[1.0, 2.0], [5.0, 5.0]], [[0.0, 0.0], [1.0, -1.0]]])
    t = torch.tensor([[[0.0, 0.0], [-9.0, 9.0]], [[3.0, 4.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False], [True, True]])
    # per position: mean over the 2 dimensions of the squared error; then mean over the 3 real positions
    expected = ((1 + 4) / 2 + (9 + 16) / 2 + (0 + 4) / 2) / 3
    assert hidden_mse(s, t, mask).item() == pytest.approx(expected, rel=1e-6)
    s[0, 1] = 1e3
    assert hidden_mse(s, t, mask).item() == pytest.approx(expected, rel=1e-6)


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_attention_kl_by_hand_with_padding_queries_and_keys():
    # B=1, H=2, 2 queries (the second is padding), 3 keys (the third is padding: probability 0 in both)
    t = torch.tensor([[[[0.5, 0.5, 0.0], [0.9, 0.1, 0.0]], [[0.2, 0.8, 0.0], [0.3, 0.7, 0.0]]]])
    s = torch.tensor([[[[0.25, 0.75, 0.0], [0.1, 0.9, 0.0]], [[0.5, 0.5, 0.0], [0.6, 0.4, 0.0]]]])
    mask = torch.tensor([[True, False]])
    expected = (_kl([0.5, 0.5], [0.25, 0.75]) + _kl([0.2, 0.8], [0.5, 0.5])) / 2  # mean over heads, query 1 only
    assert expected == pytest.approx((0.5 * math.log(2) + 0.5 * math.log(2 / 3) + 0.2 * math.log(0.4)
                                      + 0.8 * math.log(1.6)) / 2)  # fmt: skip
    assert attention_kl(s, t, mask).item() == pytest.approx(expected, rel=1e-6)
    assert attention_kl(t, t, mask).item() == pytest.approx(0.0, abs=1e-7)


def test_attention_kl_with_different_head_counts_averages_heads_first():
    t = torch.tensor([[[[0.5, 0.5]], [[0.1, 0.9]]]])  # 2 heads -> mean [0.3, 0.7]
    s = torch.tensor([[[[0.6, 0.4]]]])  # 1 head
    expected = _kl([0.3, 0.7], [0.6, 0.4])
    assert attention_kl(s, t, torch.tensor([[True]])).item() == pytest.approx(expected, rel=1e-6)


def test_term_is_the_weight_normalised_mean_of_its_pairs():
    plugin = _plugin(layer_map=[{"teacher": 1, "student": 1, "loss": "mse", "weight": 1.0},
                                {"teacher": 2, "student": 1, "side": "decoder", "weight": 3.0}])  # fmt: skip
    plugin.bind(_cfg(d_model=4, heads=1, enc=1, dec=1), _cfg(d_model=4, heads=1, enc=1, dec=2))
    assert len(plugin.projections) == 0  # equal widths: identity
    torch.manual_seed(0)
    batch = _batch([[5, 6, PAD]], [[7, 8, 9, PAD]])
    s_enc, t_enc = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    s_dec, t_dec1, t_dec2 = torch.randn(1, 4, 4), torch.randn(1, 4, 4), torch.randn(1, 4, 4)
    student = Seq2SeqOutput(torch.zeros(1, 4, 10), encoder_hidden=[s_enc], decoder_hidden=[s_dec])
    teacher = Seq2SeqOutput(torch.zeros(1, 4, 10), encoder_hidden=[t_enc], decoder_hidden=[t_dec1, t_dec2])
    enc = hidden_mse(s_enc, t_enc, batch.src.ne(PAD))
    dec = hidden_cosine(s_dec, t_dec2, batch.tgt_out.ne(PAD))  # decoder positions from the target mask
    assert plugin(student, teacher, batch).item() == pytest.approx(((enc + 3 * dec) / 4).item(), rel=1e-6)
    assert set(plugin.last_pair_losses) == {"encoder_hidden_t1_s1", "decoder_hidden_t2_s1"}


# -- projections -----------------------------------------------------------------


def test_projection_when_widths_differ_and_none_when_equal():
    plugin = _plugin(uniform_features=["hidden", "attention"])
    params = plugin.bind(_cfg(d_model=16, enc=1, dec=1), _cfg(d_model=32, enc=2, dec=2))
    hidden = [p for p in plugin.pairs if p.feature == "hidden"]
    assert len(hidden) == 2 and set(plugin.projections) == {p.key for p in hidden}  # none for attention
    for proj in plugin.projections.values():
        assert proj.weight.shape == (32, 16)
        assert proj(torch.randn(3, 5, 16)).shape == (3, 5, 32)
    assert {id(p) for p in params} == {id(p) for p in plugin.projections.parameters()}
    assert _plugin().bind(_cfg(d_model=32), _cfg(d_model=32)) == []

    # setup on real models returns the same kind of parameters, on the student's device
    student, teacher = build_model(_cfg(d_model=16, enc=1, dec=1), 20), build_model(_cfg(d_model=32), 20)
    params = _plugin().setup(student, teacher)
    assert [tuple(p.shape) for p in params] == [(32, 16), (32, 16)]


# -- maps, needs, errors ---------------------------------------------------------


def test_uniform_map():
    assert uniform_layers(2, 6) == [(1, 3), (2, 6)]
    assert uniform_layers(2, 5) == [(1, 3), (2, 5)]  # 2.5 rounds up
    assert uniform_layers(3, 1) == [(1, 1), (2, 1), (3, 1)]  # a deeper student: never layer 0
    plugin = _plugin()
    pairs = plugin.resolved_map(_cfg(enc=2, dec=1), _cfg(enc=6, dec=3))
    assert [(p.side, p.teacher, p.student, p.feature, p.loss) for p in pairs] == [
        ("encoder", 3, 1, "hidden", "cosine"),
        ("encoder", 6, 2, "hidden", "cosine"),
        ("decoder", 3, 1, "hidden", "cosine"),
    ]
    assert plugin.teacher_needs.hidden and not plugin.teacher_needs.attention
    with_attn = _plugin(uniform_features=["hidden", "attention"])
    assert with_attn.student_needs.attention and with_attn.teacher_needs.hidden
    pairs = with_attn.resolved_map(_cfg(enc=1, dec=1), _cfg(enc=2, dec=2))
    assert [(p.side, p.feature, p.loss) for p in pairs] == [
        ("encoder", "hidden", "cosine"), ("encoder", "attention", "kl"),
        ("decoder", "hidden", "cosine"), ("decoder", "attention", "kl"),
    ]  # fmt: skip
    assert len(with_attn.phases(pairs)) == 2  # a layer's hidden and attention train in one phase


def test_explicit_map_defaults_and_needs():
    plugin = _plugin(layer_map=[{"teacher": 2, "student": 1, "feature": "attention", "side": "decoder"},
                                {"teacher": 1, "student": 1}])  # fmt: skip
    assert plugin.teacher_needs.attention and plugin.teacher_needs.hidden
    pairs = plugin.resolved_map(_cfg(enc=1, dec=1), _cfg())
    assert pairs == [LayerPair("encoder", "hidden", 1, 1, "cosine", 1.0),
                     LayerPair("decoder", "attention", 2, 1, "kl", 1.0)]  # fmt: skip
    only_attn = _plugin(layer_map=[{"teacher": 1, "student": 1, "feature": "attention"}])
    assert only_attn.student_needs.attention and not only_attn.student_needs.hidden
    plugin.check(_cfg(enc=1, dec=1), _cfg())  # fits: no error


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"teacher": 7, "student": 1}, r"teacher layer 7 is outside the teacher's encoder \(layers 1\.\.6\)"),
        (
            {"teacher": 1, "student": 3, "side": "decoder"},
            r"student layer 3 is outside the student's decoder \(layers 1\.\.1\)",
        ),  # noqa: E501
        ({"teacher": 0, "student": 1}, r"teacher layer 0 is outside"),
    ],
)
def test_out_of_range_layers_name_the_pair_side_and_range(entry, message):
    plugin = _plugin(layer_map=[entry])
    with pytest.raises(MgkdError, match=message) as e:
        plugin.check(_cfg(enc=2, dec=1), _cfg(enc=6, dec=2))
    assert str(e.value).startswith("loss 'internal':") and "resolved map:" in str(e.value)


@pytest.mark.parametrize(
    "params, message",
    [
        (
            {"layer_map": [{"teacher": 1, "student": 1, "feature": "logits"}]},
            r"unknown feature 'logits'; choose one of: hidden, attention",
        ),  # noqa: E501
        (
            {"layer_map": [{"teacher": 1, "student": 1, "feature": "attention", "loss": "cosine"}]},
            r"wrong loss 'cosine' for feature 'attention'; attention is compared with kl",
        ),  # noqa: E501
        (
            {"layer_map": [{"teacher": 1, "student": 1, "loss": "kl"}]},
            r"wrong loss 'kl' for feature 'hidden'.*cosine or mse",
        ),  # noqa: E501
        ({"layer_map": [{"teacher": 1, "student": 1, "loss": "l1"}]}, r"unknown loss 'l1'"),
        ({"layer_map": [{"layer_T": 1, "student": 1}]}, r"unknown key\(s\) layer_T; valid keys: teacher, student"),
        ({"layer_map": [{"teacher": 1}]}, r"needs `student`"),
        ({"layer_map": [{"teacher": 1, "student": 1, "side": "middle"}]}, r"unknown side 'middle'"),
        ({"layer_map": [{"teacher": 1, "student": 1, "weight": 0}]}, r"weight must be a number > 0"),
        ({"layer_map": "even"}, r"layer_map must be 'uniform' or a list"),
        ({"schedule": "greedy"}, r"unknown schedule 'greedy'; choose one of: joint, progressive, stacked"),
        ({"internal_share": 0}, r"internal_share must be in \(0, 1\]"),
        ({"uniform_features": ["logits"]}, r"uniform_features must list some of: hidden, attention"),
        ({"shares": 1}, r"no parameter\(s\) shares"),
    ],
)
def test_bad_parameters_are_config_errors(params, message):
    with pytest.raises(MgkdError, match=message):
        _plugin(**params)


def test_no_teacher_and_archs_without_the_feature():
    with pytest.raises(MgkdError, match="needs a teacher"):
        _plugin().check(_cfg(), None)
    # The BiGRU declares hidden states on both sides and no per-layer attention (mgkd.models.registry).
    gru = _cfg(arch="bigru", enc=1, dec=1)
    with pytest.raises(MgkdError, match=r"student's arch 'bigru' does not expose decoder attention .*"
                       r"encoder hidden, decoder hidden"):  # fmt: skip
        _plugin(layer_map=[{"teacher": 1, "student": 1, "side": "decoder", "feature": "attention"}]).check(gru, _cfg())
    with pytest.raises(MgkdError, match=r"does not expose encoder attention"):
        _plugin(layer_map=[{"teacher": 1, "student": 1, "feature": "attention"}]).check(gru, _cfg())
    uniform = _plugin(uniform_features=["hidden", "attention"])
    assert [(p.side, p.feature) for p in uniform.resolved_map(gru, _cfg())] == [("encoder", "hidden"),
                                                                                ("decoder", "hidden")]  # fmt: skip
    with pytest.raises(MgkdError, match="uniform map of attention is empty"):
        _plugin(uniform_features=["attention"]).check(gru, _cfg())
    with pytest.raises(MgkdError, match="loss 'internal': the student: unknown model arch 'lstm'; known"):
        _plugin().check(_cfg(arch="lstm"), _cfg())


def test_bad_map_stops_build_schedule_naming_the_plugin(tmp_path):
    bad = "generations.student.losses=[{name: internal, params: {layer_map: [{teacher: 3, student: 1}]}}]"
    with pytest.raises(MgkdError, match=r"generation 1: loss 'internal': .*teacher layer 3 is outside the teacher's "
                       r"encoder \(layers 1\.\.1\)"):  # fmt: skip
        build_schedule(tiny_config(tmp_path, "generations.count=1", bad))
    typo = (
        "generations.student.losses=[{name: internal, params: {layer_map: [{teacher: 1, student: 1, feature: attn}]}}]"  # noqa: E501
    )
    with pytest.raises(MgkdError, match=r"generation 1: loss 'internal': .*unknown feature 'attn'"):
        build_schedule(tiny_config(tmp_path, "generations.count=1", typo))
    with pytest.raises(MgkdError, match=r"generations.teacher: .*internal need a teacher"):
        build_schedule(tiny_config(tmp_path, "generations.count=1", "generations.teacher.losses=[{name: internal}]"))
    ok = "generations.student.losses=[{name: label_smoothing}, {name: internal, params: {schedule: stacked}}]"
    assert [t.name for t in build_schedule(tiny_config(tmp_path, "generations.count=1", ok))[1].losses] == [
        "label_smoothing", "internal"
    ]  # fmt: skip


# -- schedules -------------------------------------------------------------------


def _two_pairs(schedule: str) -> InternalRepresentation:
    plugin = _plugin(schedule=schedule, internal_share=0.5)
    plugin.bind(_cfg(enc=2, dec=1), _cfg(enc=2, dec=1), "cpu")
    plugin.pairs = [p for p in plugin.pairs if p.side == "encoder"]  # (1 -> 1), (2 -> 2)
    return plugin


def test_progressive_schedule():
    plugin = _two_pairs("progressive")
    for progress, students, exclusive, scale in [(0.0, [1], True, 1.0), (0.1, [1], True, 1.0),
                                                 (0.3, [2], True, 1.0), (0.7, [1, 2], False, 0.0)]:  # fmt: skip
        plugin.set_progress(progress)
        assert [p.student for p in plugin.active_pairs()] == students, progress
        assert plugin.exclusive() is exclusive and plugin.scale() == scale


def test_stacked_and_joint_schedules():
    stacked = _two_pairs("stacked")
    stacked.set_progress(0.1)
    assert [p.student for p in stacked.active_pairs()] == [1] and stacked.exclusive()
    stacked.set_progress(0.3)
    assert [p.student for p in stacked.active_pairs()] == [1, 2] and stacked.exclusive()
    stacked.set_progress(0.6)
    assert stacked.scale() == 0.0 and not stacked.exclusive()
    joint = _two_pairs("joint")
    for progress in (0.0, 0.3, 0.9):
        joint.set_progress(progress)
        assert len(joint.active_pairs()) == 2 and joint.scale() == 1.0 and not joint.exclusive()


def test_criterion_silences_the_other_terms_during_the_layer_phases():
    crit = Criterion([LossTerm(name="label_smoothing", weight=0.5),
                      LossTerm(name="internal", weight=0.5, params={"schedule": "progressive"})])  # fmt: skip
    crit.plugins[1].bind(_cfg(enc=1, dec=1), _cfg(enc=1, dec=1))
    crit.set_progress(0.2)
    assert crit.weights() == {"label_smoothing": 0.0, "internal": 0.5}
    crit.set_progress(0.6)
    assert crit.weights() == {"label_smoothing": 0.5, "internal": 0.0}


def test_after_its_phases_the_term_is_logged_without_gradient():
    plugin = _plugin(schedule="progressive", layer_map=[{"teacher": 1, "student": 1}])
    plugin.bind(_cfg(d_model=4, heads=1), _cfg(d_model=4, heads=1))
    s = torch.randn(1, 2, 4, requires_grad=True)
    out = Seq2SeqOutput(torch.zeros(1, 2, 3), encoder_hidden=[s])
    teacher = Seq2SeqOutput(torch.zeros(1, 2, 3), encoder_hidden=[torch.randn(1, 2, 4)])
    plugin.set_progress(0.2)
    assert plugin(out, teacher, _batch([[4, 5]])).requires_grad
    plugin.set_progress(0.8)
    value = plugin(out, teacher, _batch([[4, 5]]))
    assert not value.requires_grad and value.item() > 0


# -- gradients -------------------------------------------------------------------


def test_one_step_moves_the_mapped_student_layers_and_projection_never_the_teacher():
    torch.manual_seed(0)
    teacher = build_model(_cfg(d_model=32, enc=2, dec=2), 30).eval()
    teacher.requires_grad_(False)
    student = build_model(_cfg(d_model=16, enc=2, dec=1), 30)
    crit = Criterion([LossTerm(name="internal", params={"layer_map": [
        {"teacher": 2, "student": 1, "loss": "mse"},
        {"teacher": 1, "student": 1, "feature": "attention"},
    ]})])  # fmt: skip
    extra = crit.plugins[0].setup(student, teacher)
    assert len(extra) == 1  # one hidden pair of different widths -> one projection
    optimizer = torch.optim.SGD(list(student.parameters()) + extra, lr=0.5)
    before_teacher = parameter_hash(teacher)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    proj_before = extra[0].detach().clone()

    batch = _batch([[5, 6, 7, 3], [8, 9, 3, PAD]], [[2, 5, 6], [2, 7, PAD]])
    outputs = {"gold": forward_pair(student, teacher, batch, *crit.needs("gold"))}
    assert outputs["gold"][0].encoder_attention and outputs["gold"][1].encoder_hidden
    loss, parts = crit(None, views=outputs)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    assert set(parts) == {"internal"} and loss.item() > 0
    moved = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("encoder.0.") for n in moved) and "embed.weight" in moved
    # above the highest mapped student layer (encoder 1): no gradient at all
    for name, p in student.named_parameters():
        if name.startswith(("encoder.1.", "encoder_norm", "decoder")):
            assert p.grad is None, name
            assert name not in moved
    assert not torch.equal(extra[0], proj_before)
    assert parameter_hash(teacher) == before_teacher
    assert all(p.grad is None for p in teacher.parameters())


# -- one generation through the trainer ---------------------------------------------


def test_a_generation_trains_with_internal_from_a_wider_deeper_teacher(tmp_path, tiny_data):
    cfg = tiny_config(
        tmp_path,
        "generations.count=1",
        "model.encoder_layers=2",
        "model.decoder_layers=2",
        "train.max_steps=6",
        "generations.student.init=scratch",
        "generations.student.model={d_model: 16, n_heads: 1, ff_dim: 32, encoder_layers: 1, decoder_layers: 1}",
        "generations.student.losses=[{name: label_smoothing, weight: 0.5}, {name: internal, weight: 0.5, "
        "params: {schedule: progressive, uniform_features: [hidden, attention]}}]",
    )
    specs = build_schedule(cfg)
    g0 = train_generation(specs[0], tiny_data, tmp_path / "g0")
    events: list[dict] = []
    g1 = train_generation(specs[1], tiny_data, tmp_path / "g1", g0.checkpoint, g0.checkpoint_sha256, events.append)
    steps = [e["metrics"] for e in events if e["type"] == "step"]
    assert steps and all(math.isfinite(m["loss.internal"]) for m in steps)
    assert any("loss.label_smoothing" in m for m in steps)  # the output loss trains after the layer phases
    assert g1.metrics["steps"] == 6 and g1.parameters < g0.parameters
    assert g1.teacher_hash is not None


def test_bigru_student_matches_the_transformer_encoder_through_a_projection(tmp_path, tiny_data):
    """A BiGRU student (one exposed state per side) learns a Transformer teacher's top encoder layer."""
    cfg = tiny_config(
        tmp_path, "generations.count=1", "model.encoder_layers=2", "model.decoder_layers=2",
        "train.max_steps=3", 'generations.student.model={"arch": "bigru", "d_model": 48}',
        "generations.student.init=scratch",
        'generations.student.losses=[{"name": "label_smoothing"}, {"name": "internal", "params": {"layer_map": '
        '[{"teacher": 2, "student": 1, "side": "encoder"}]}}]',
    )  # fmt: skip
    _, student, steps = teacher_then_student(cfg, tiny_data, tmp_path)
    assert steps and all(math.isfinite(m["loss.internal"]) for m in steps)
    assert student.metrics["steps"] == 3
    bad = tiny_config(
        tmp_path, "generations.count=1",
        'generations.student.model={"arch": "bigru", "d_model": 48}', "generations.student.init=scratch",
        'generations.student.losses=[{"name": "internal", "params": {"layer_map": '
        '[{"teacher": 1, "student": 1, "feature": "attention", "side": "encoder"}]}}]',
    )  # fmt: skip
    with pytest.raises(MgkdError, match="internal"):
        build_schedule(bad)
