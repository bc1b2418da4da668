"""CTranslate2 export of a Transformer generation, and a translation engine that runs the export.

The export is built with CTranslate2's model-spec API (`TransformerSpec`), weight by weight, from
mgkd's Transformer (models/transformer.py): pre-norm layers with a final layer norm on each side, one
embedding matrix shared by the encoder, the decoder and the output projection (no output bias),
embeddings scaled by sqrt(d_model), ReLU feed-forward layers, and mgkd's own sinusoidal position table
(sin on even, cos on odd dimensions: CTranslate2's built-in table orders them differently, so the table
is stored in the model). Self-attention's q/k/v and cross-attention's k/v are fused as CTranslate2
expects. The source gets EOS appended by CTranslate2 itself (`add_source_eos`), so plain ctranslate2
usage needs only the sentencepiece pieces of the text.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch

from mgkd.deploy.inference import DecodeOptions, TorchTranslator
from mgkd.errors import MgkdError
from mgkd.models.transformer import sinusoids

SUPPORTED_ARCHS = ("transformer",)
QUANTIZATIONS = ("float32", "int8", "int8_float32")
SETTINGS_FILE = "mgkd.json"

USAGE = """# {name}: an mgkd generation exported to CTranslate2 ({quantization})

    import ctranslate2, sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file="{name}/spm.model")
    translator = ctranslate2.Translator("{name}", device="cpu", compute_type="{compute}")
    pieces = sp.encode(["In the beginning God created the heavens and the earth."], out_type=str)
    result = translator.translate_batch(pieces, beam_size=1, max_decoding_length={max_len})
    print(sp.decode(result[0].hypotheses[0]))

Or with mgkd: `mgkd translate FILE --model {name}`.
"""


def _require_ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError:
        raise MgkdError("CTranslate2 is not installed: pip install 'mgkd[export]' (ctranslate2==4.8.5)") from None
    return ctranslate2


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def _linear(spec: Any, *layers: torch.nn.Linear) -> None:
    """One CTranslate2 linear from one or more (fused, stacked on the output dimension) torch linears."""
    spec.weight = np.concatenate([_np(layer.weight) for layer in layers], axis=0)
    spec.bias = np.concatenate([_np(layer.bias) for layer in layers], axis=0)


def _norm(spec: Any, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _np(norm.weight), _np(norm.bias)


def transformer_spec(model: torch.nn.Module, pieces: list[str]) -> Any:
    """The CTranslate2 `TransformerSpec` of an mgkd Transformer, with its vocabulary (one for both sides)."""
    _require_ctranslate2()
    from ctranslate2.specs import common_spec, transformer_spec

    cfg = model.cfg  # type: ignore[attr-defined]
    if cfg.arch not in SUPPORTED_ARCHS:
        raise MgkdError(
            f"CTranslate2 export supports the architectures {', '.join(SUPPORTED_ARCHS)}; this model is "
            f"{cfg.arch!r}, which CTranslate2 has no spec for. Its MLflow pyfunc model and `mgkd translate` "
            "work for every architecture"
        )
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.n_heads, pre_norm=True, activation=common_spec.Activation.RELU
    )
    embed = _np(model.embed.weight)  # the same array everywhere: CTranslate2 stores it once
    positions = sinusoids(cfg.max_positions, cfg.d_model).numpy()
    spec.encoder.embeddings[0].weight = embed
    spec.decoder.embeddings.weight = embed
    spec.decoder.projection.weight = embed
    for side in (spec.encoder, spec.decoder):
        side.position_encodings.encodings = positions
        side.scale_embeddings = True
    _norm(spec.encoder.layer_norm, model.encoder_norm)
    _norm(spec.decoder.layer_norm, model.decoder_norm)
    for s, layer in zip(spec.encoder.layer, model.encoder):
        _norm(s.self_attention.layer_norm, layer.norm1)
        _linear(s.self_attention.linear[0], layer.attn.q, layer.attn.k, layer.attn.v)
        _linear(s.self_attention.linear[1], layer.attn.o)
        _norm(s.ffn.layer_norm, layer.norm2)
        _linear(s.ffn.linear_0, layer.ff[0])
        _linear(s.ffn.linear_1, layer.ff[2])
    for s, layer in zip(spec.decoder.layer, model.decoder):
        sa, ca = layer.self_attn, layer.cross_attn
        _norm(s.self_attention.layer_norm, layer.norm1)
        _linear(s.self_attention.linear[0], sa.q, sa.k, sa.v)
        _linear(s.self_attention.linear[1], sa.o)
        _norm(s.attention.layer_norm, layer.norm2)
        _linear(s.attention.linear[0], ca.q)
        _linear(s.attention.linear[1], ca.k, ca.v)
        _linear(s.attention.linear[2], ca.o)
        _norm(s.ffn.layer_norm, layer.norm3)
        _linear(s.ffn.linear_0, layer.ff[0])
        _linear(s.ffn.linear_1, layer.ff[2])
    spec.config.layer_norm_epsilon = float(model.encoder_norm.eps)
    spec.config.add_source_eos = True  # mgkd's sources end with EOS
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    return spec


def export_checkpoint(model: torch.nn.Module, payload: dict[str, Any], tokenizer: Path, out: Path,
                      quantization: str = "float32", force: bool = False, source: str = "") -> Path:  # fmt: skip
    """Write the CTranslate2 model folder `out` (model, vocabulary, spm.model, mgkd.json, README.md).

    Raises:
        MgkdError: an unsupported architecture or quantization, or `out` exists (without `force`).
    """
    if quantization not in QUANTIZATIONS:
        raise MgkdError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    out = Path(out)
    if out.exists() and not force:
        raise MgkdError(f"{out} exists; choose another --output, or --force to replace it")
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    spec = transformer_spec(model, [sp.id_to_piece(i) for i in range(sp.get_piece_size())])
    spec.validate()
    spec.optimize(quantization=quantization)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        spec.save(str(tmp))
        shutil.copyfile(tokenizer, tmp / "spm.model")
        options = DecodeOptions.of_checkpoint(payload)
        settings = {"max_positions": int(model.cfg.max_positions), "quantization": quantization,  # type: ignore[attr-defined]
                    "source": source, "eval": {k: getattr(options, k) for k in
                                               ("beam_size", "length_penalty", "max_len_a", "max_len_b")}}  # fmt: skip
        (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")
        compute = "int8" if quantization.startswith("int8") else "float32"
        limit = settings["max_positions"]
        usage = USAGE.format(name=out.name, quantization=quantization, compute=compute, max_len=limit)
        (tmp / "README.md").write_text(usage, encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class CT2Translator(TorchTranslator):
    """`mgkd translate --engine ctranslate2`: the same batching and limits, CTranslate2 decodes."""

    engine = "ctranslate2"

    def __init__(self, folder: Path, tokenizer: spm.SentencePieceProcessor, options: DecodeOptions,
                 max_source_tokens: int | None, max_positions: int, threads: int | None = None) -> None:  # fmt: skip
        ct2 = _require_ctranslate2()
        self.sp, self.options, self.max_positions = tokenizer, options, max_positions
        self.max_source_tokens = min(max_source_tokens or max_positions - 1, max_positions - 1)
        self.translator = ct2.Translator(str(folder), device="cpu", compute_type="default", inter_threads=1,
                                         intra_threads=threads or torch.get_num_threads())  # fmt: skip

    @classmethod
    def from_folder(cls, folder: Path, given: dict[str, Any], max_source_tokens: int | None) -> CT2Translator:
        settings_file = Path(folder) / SETTINGS_FILE
        if not settings_file.is_file():
            raise MgkdError(f"{folder} is not an mgkd CTranslate2 export (no {SETTINGS_FILE}); see `mgkd export`")
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
        options = DecodeOptions(**{**settings["eval"], **{k: v for k, v in given.items() if v is not None}})
        sp = spm.SentencePieceProcessor(model_file=str(Path(folder) / "spm.model"))
        return cls(Path(folder), sp, options, max_source_tokens, int(settings["max_positions"]))

    def decode_batch(self, sources: list[np.ndarray]) -> list[list[int]]:
        limits = self.max_lens([len(s) for s in sources])
        pieces = [[self.sp.id_to_piece(int(i)) for i in s] for s in sources]
        o = self.options
        results = self.translator.translate_batch(
            pieces, beam_size=o.beam_size, length_penalty=o.length_penalty, max_decoding_length=max(limits),
            max_input_length=0,
        )  # fmt: skip
        # mgkd stops each sentence at its own limit (EOS counted); greedy search's prefix is the same.
        return [[self.sp.piece_to_id(p) for p in r.hypotheses[0]][: lim - 1] for r, lim in zip(results, limits)]
