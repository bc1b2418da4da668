"""`mgkd translate`, `mgkd predict`, `mgkd export`: a distilled model used, or exported, outside mgkd."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mgkd.cli.common import log_err, user_errors

# The options `mgkd translate` and `mgkd predict` share: which model, and where the input and output are.
InputArg = Annotated[Path | None, typer.Argument(help="Input file, one sentence per line (default or -: stdin).")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Write here (atomically) instead of stdout.")]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="models:/NAME/VERSION, a checkpoint file, or an exported CTranslate2 folder."),
]
RunOpt = Annotated[str | None, typer.Option("--run", help="Lineage run id (default: the output folder's last).")]
GenerationOpt = Annotated[
    int | None, typer.Option("--generation", "-g", help="Generation (default: the lineage's last finished).")
]
TrackingOpt = Annotated[
    str | None, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the run's store).")
]
OutputDirOpt = Annotated[Path, typer.Option(help="Output folder of a run (its last lineage).")]
TokenizerOpt = Annotated[
    Path | None, typer.Option(help="sentencepiece model of a checkpoint file (default: found beside it).")
]
ShaOpt = Annotated[
    str | None, typer.Option("--sha256", help="Expected sha256 of a checkpoint file (default: its lineage's record).")
]
MaxSrcOpt = Annotated[
    int | None, typer.Option(help="Input tokens kept per line (default: the model's limit); longer lines are cut.")
]
MaxTokensOpt = Annotated[int | None, typer.Option(help="Padded input tokens per batch (default 4096).")]


def translate(
    input_path: InputArg = None, output: OutputOpt = None, model: ModelOpt = None, run: RunOpt = None,
    generation: GenerationOpt = None, tracking_uri: TrackingOpt = None, output_dir: OutputDirOpt = Path("mgkd-runs"),
    tokenizer: TokenizerOpt = None, sha256: ShaOpt = None,
    beam_size: Annotated[int | None, typer.Option(help="Beam size (default: the generation's eval.beam_size).")] = None,
    max_len_a: Annotated[float | None, typer.Option(help="Output limit ceil(a * (source + 1) + b): a.")] = None,
    max_len_b: Annotated[int | None, typer.Option(help="Output limit: b.")] = None,
    max_len_src: MaxSrcOpt = None, max_tokens: MaxTokensOpt = None,
    engine: Annotated[str, typer.Option(help="torch (mgkd's decoder) or ctranslate2.")] = "torch",
    quantization: Annotated[
        str, typer.Option(help="With --engine ctranslate2: float32, int8 or int8_float32.")
    ] = "float32",
) -> None:  # fmt: skip
    """Translate a file or stdin with a generation of a lineage, a registered version, or a checkpoint."""
    from mgkd.deploy.commands import ModelChoice, infer

    with user_errors():
        choice = ModelChoice(model, run, generation, tracking_uri, output_dir, tokenizer, sha256)
        given = {"beam_size": beam_size, "max_len_a": max_len_a, "max_len_b": max_len_b, "max_tokens": max_tokens}
        infer("translation", input_path, output, choice, given, max_len_src, engine, quantization, "tsv", 512,
              log_err)  # fmt: skip


def predict(
    input_path: InputArg = None, output: OutputOpt = None, model: ModelOpt = None, run: RunOpt = None,
    generation: GenerationOpt = None, tracking_uri: TrackingOpt = None, output_dir: OutputDirOpt = Path("mgkd-runs"),
    tokenizer: TokenizerOpt = None, sha256: ShaOpt = None, max_len_src: MaxSrcOpt = None,
    max_tokens: MaxTokensOpt = None,
    output_format: Annotated[str, typer.Option("--format", help="tsv (label<TAB>probability) or jsonl.")] = "tsv",
) -> None:  # fmt: skip
    """Classify each line (a text, or text<TAB>pair) of a file or stdin: its label and probability."""
    from mgkd.deploy.commands import ModelChoice, infer

    with user_errors():
        choice = ModelChoice(model, run, generation, tracking_uri, output_dir, tokenizer, sha256)
        infer("classification", input_path, output, choice, {"max_tokens": max_tokens}, max_len_src, "torch",
              "float32", output_format, 512, log_err)  # fmt: skip


def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="The model folder to write.")],
    output_format: Annotated[str, typer.Option("--format", help="ctranslate2 (Transformer translation).")] = (
        "ctranslate2"
    ),
    quantization: Annotated[str, typer.Option(help="float32, int8 or int8_float32.")] = "float32",
    force: Annotated[bool, typer.Option("--force", help="Replace the folder if it exists.")] = False,
    model: ModelOpt = None, run: RunOpt = None, generation: GenerationOpt = None, tracking_uri: TrackingOpt = None,
    output_dir: OutputDirOpt = Path("mgkd-runs"), tokenizer: TokenizerOpt = None, sha256: ShaOpt = None,
) -> None:  # fmt: skip
    """Export a generation to an inference engine: a CTranslate2 folder (with its sentencepiece model)."""
    from mgkd.deploy.commands import ModelChoice
    from mgkd.deploy.commands import export as export_model

    with user_errors():
        choice = ModelChoice(model, run, generation, tracking_uri, output_dir, tokenizer, sha256)
        export_model(choice, output, output_format, quantization, force, log_err)
