"""`mgkd translate` and `mgkd predict`: resolve the model, build the engine, stream the input through it."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm

from mgkd.deploy.inference import DecodeOptions, build_engine
from mgkd.deploy.source import resolve
from mgkd.deploy.streaming import atomic_output, format_prediction, open_input, read_lines, run_stream
from mgkd.errors import MgkdError


@dataclass
class ModelChoice:
    """The options that name a model (see `source.resolve`)."""

    model: str | None = None
    run: str | None = None
    generation: int | None = None
    tracking_uri: str | None = None
    output_dir: Path = Path("mgkd-runs")
    tokenizer: Path | None = None
    sha256: str | None = None


def infer(
    task: str,
    input_path: Path | None,
    output: Path | None,
    choice: ModelChoice,
    given: dict[str, Any],
    max_source_tokens: int | None,
    engine: str,
    quantization: str,
    fmt: str,
    chunk_lines: int,
    log: Any,
) -> None:
    """Translate (task "translation") or classify every line of the input; write one result per line.

    Args:
        given: decoding options the user set (beam_size, max_len_a, max_len_b, length_penalty, max_tokens).
        log: prints a message on stderr (progress, warnings, the summary).
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr is for our progress
    if fmt not in ("tsv", "jsonl"):
        raise MgkdError(f"--format must be tsv or jsonl, got {fmt!r}")
    if engine not in ("torch", "ctranslate2"):
        raise MgkdError(f"--engine must be torch or ctranslate2, got {engine!r}")
    if output is not None and input_path is not None and output.resolve() == input_path.resolve():
        raise MgkdError(f"--output {output} is the input file; choose another name")
    with tempfile.TemporaryDirectory(prefix="mgkd-infer-") as tmp:
        runner, what = _engine(task, choice, given, max_source_tokens, engine, quantization, Path(tmp))
        log(f"{what}: {runner.task} with {runner.engine}")
        if runner.task != task:
            other = "translate" if runner.task == "translation" else "predict"
            raise MgkdError(f"{what} is a {runner.task} model; use `mgkd {other}`")
        render = (lambda text: text) if task == "translation" else (lambda o: format_prediction(*o, fmt))
        tty = sys.stderr.isatty()

        def progress(done: int, seconds: float) -> None:
            if tty:
                print(f"\r{done} lines, {done / max(seconds, 1e-9):.1f}/s", end="", file=sys.stderr, flush=True)

        with open_input(input_path) as (stream, name), atomic_output(output) as out:
            summary = run_stream(runner, read_lines(stream, name), out, chunk_lines, render, progress)
        if tty:
            print(file=sys.stderr)
    if summary.truncated:
        log(
            f"[yellow]warning:[/] {summary.truncated} of {summary.lines} lines were longer than the model's "
            f"limit of {_limit(runner)} tokens and were truncated"
        )
    done = "translated" if task == "translation" else "classified"
    log(
        f"{done} {summary.lines} lines in {summary.seconds:.1f}s ({summary.per_second:.1f}/s)"
        + (f" -> {output}" if output else "")
    )


def _limit(runner: Any) -> int:
    return getattr(runner, "max_source_tokens", None) or runner.max_length


def _engine(
    task: str,
    choice: ModelChoice,
    given: dict[str, Any],
    max_source_tokens: int | None,
    engine: str,
    quantization: str,
    workdir: Path,
) -> tuple[Any, str]:
    """The engine over the chosen model, and a description of the model for messages."""
    if choice.model and Path(choice.model, "model.bin").is_file():  # an exported CTranslate2 folder
        from mgkd.deploy.ctranslate2 import CT2Translator

        return CT2Translator.from_folder(Path(choice.model), given, max_source_tokens), f"CTranslate2 {choice.model}"
    bundle = resolve(
        choice.model,
        choice.run,
        choice.generation,
        choice.tracking_uri,
        choice.output_dir,
        choice.tokenizer,
        choice.sha256,
        workdir,
    )
    if bundle.sha256 is None:
        print(f"warning: {bundle.description} has no recorded sha256 (give --sha256 to verify it)", file=sys.stderr)
    model, payload = bundle.load()
    sp = spm.SentencePieceProcessor(model_file=str(bundle.tokenizer))
    if sp.get_piece_size() != payload["vocab_size"]:
        raise MgkdError(
            f"the tokenizer {bundle.tokenizer} has {sp.get_piece_size()} pieces, the model "
            f"{payload['vocab_size']}; give the lineage's spm.model with --tokenizer"
        )
    options = DecodeOptions.of_checkpoint(payload, **given)
    if engine == "ctranslate2":
        from mgkd.deploy.ctranslate2 import CT2Translator, export_checkpoint

        folder = export_checkpoint(model, payload, bundle.tokenizer, workdir / "ct2", quantization)
        return CT2Translator(folder, sp, options, max_source_tokens, int(model.cfg.max_positions)), bundle.description
    return build_engine(model, payload, sp, options, bundle.settings, max_source_tokens), bundle.description


def export(choice: ModelChoice, output: Path, fmt: str, quantization: str, force: bool, log: Any) -> None:
    """`mgkd export`: write the chosen generation as a CTranslate2 model folder."""
    if fmt != "ctranslate2":
        raise MgkdError(f"--format {fmt!r}: the export format is ctranslate2 (the MLflow pyfunc model of each "
                        "generation is logged by `mgkd run` already)")  # fmt: skip
    from mgkd.deploy.ctranslate2 import export_checkpoint

    with tempfile.TemporaryDirectory(prefix="mgkd-export-") as tmp:
        bundle = resolve(choice.model, choice.run, choice.generation, choice.tracking_uri, choice.output_dir,
                         choice.tokenizer, choice.sha256, Path(tmp))  # fmt: skip
        model, payload = bundle.load()
        folder = export_checkpoint(model, payload, bundle.tokenizer, output, quantization, force, bundle.description)
        size = (folder / "model.bin").stat().st_size
        log(f"exported {bundle.description} to {folder} (CTranslate2 {quantization}: model.bin {size / 1e6:.2f} MB; "
            f"the checkpoint {bundle.checkpoint.stat().st_size / 1e6:.2f} MB)\n"
            f"  translate: mgkd translate FILE --model {folder}   (plain ctranslate2: {folder}/README.md)")  # fmt: skip
