"""A distilled model leaves mgkd: `mgkd translate`/`predict` from every model source, the MLflow pyfunc
model (loaded and served by a real `mlflow models serve`), and the bad inputs a user can give."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mgkd.cli import app
from mgkd.lineage.tracking import TAG_MODEL, mlflow_client, read_lineage
from mgkd.orchestration.controller import run_lineage

from ..helpers import QUIET_MLFLOW_SERVER, free_port, stop, tiny_config

# lr 0.01 for 4 epochs: the tiny models say different things per sentence and per generation (at the
# conftest defaults every output is one repeated piece, which would make equal outputs prove little).
LIVELY = ["ray.enabled=false", "generations.count=1", "train.lr=0.01", "train.max_epochs=4"]


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy")
    outcome = run_lineage(tiny_config(out, *LIVELY), Console(quiet=True))
    info = read_lineage(outcome.tracking_uri, outcome.lineage_id)
    lineage_dir = out / "lineages" / outcome.lineage_id
    recorded = {}
    for k in (0, 1):
        with open(lineage_dir / f"gen-{k}" / "test_translations.tsv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        recorded[k] = [r["hypothesis"] for r in rows]
    sources = [r["source"] for r in rows]
    inp = out / "test.en"
    inp.write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    name = mlflow_client(outcome.tracking_uri).get_run(info["generations"][1]["run_id"]).data.tags[TAG_MODEL]
    return {"out": out, "uri": outcome.tracking_uri, "id": outcome.lineage_id, "dir": lineage_dir, "input": inp,
            "sources": sources, "recorded": recorded, "name": name}  # fmt: skip


def translate(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, ["translate", *args], input=stdin)


def test_the_tiny_models_translate_differently(lineage):
    rec = lineage["recorded"]
    assert rec[0] != rec[1] and len(set(rec[1])) > 5  # else the equalities below would prove little


def test_translate_each_source_gives_the_generations_own_test_translations(lineage):
    out, inp, rec = str(lineage["out"]), str(lineage["input"]), lineage["recorded"]
    default = translate(inp, "--output-dir", out)  # the last run's last generation
    assert default.exit_code == 0, default.output
    assert default.stdout.splitlines() == rec[1]
    assert f"translated {len(lineage['sources'])} lines" in default.stderr
    by_run = translate(inp, "--output-dir", out, "--run", lineage["id"], "--generation", "0")
    assert by_run.stdout.splitlines() == rec[0]
    # MLflow numbers versions from 1: version 1 is the teacher (generation 0), version 2 generation 1.
    for version, k in ((1, 0), (2, 1)):
        reg = translate(inp, "--tracking-uri", lineage["uri"], "--model", f"models:/{lineage['name']}/{version}")
        assert reg.exit_code == 0, reg.output
        assert reg.stdout.splitlines() == rec[k]
    path = translate(inp, "--model", str(lineage["dir"] / "gen-1" / "checkpoint.pt"))
    assert path.exit_code == 0, path.output
    assert path.stdout.splitlines() == rec[1]
    assert "warning" not in path.stderr  # its sha256 was found in the lineage's record and verified


def test_stdin_to_output_file_in_many_batches(lineage, tmp_path):
    target = tmp_path / "test.fr"
    text = lineage["input"].read_text(encoding="utf-8")
    r = translate("-", "--output-dir", str(lineage["out"]), "--max-tokens", "64", "-o", str(target), stdin=text)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert target.read_text(encoding="utf-8").splitlines() == lineage["recorded"][1]
    assert [p.name for p in tmp_path.iterdir()] == ["test.fr"]  # no temporary file left beside it


def test_pyfunc_model_of_the_registry_equals_mgkd_translate(lineage):
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(lineage["uri"])
    mlflow.set_registry_uri(lineage["uri"])
    try:
        model = mlflow.pyfunc.load_model(f"models:/{lineage['name']}/2")
        got = model.predict(pd.DataFrame({"text": lineage["sources"]}))
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert list(got) == lineage["recorded"][1]
    version = mlflow_client(lineage["uri"]).get_model_version(lineage["name"], "2")
    assert "/models/m-" in version.source and version.source.endswith("/artifacts")  # the logged model's files


def test_mlflow_models_serve_answers_invocations_like_mgkd_translate(lineage, tmp_path):
    port = free_port()
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    # The serving command starts `uvicorn` by name: the environment's bin folder is on PATH, as when activated.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, **QUIET_MLFLOW_SERVER, "MLFLOW_TRACKING_URI": lineage["uri"], "PATH": path}
    cmd = [mlflow_bin, "models", "serve", "-m", f"models:/{lineage['name']}/2", "--env-manager", "local",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping"
                time.sleep(0.5)
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[s] for s in lineage["sources"]]}})
        req = urllib.request.Request(url + "/invocations", body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
    finally:
        stop(proc)
        log.close()
    assert answer["predictions"] == lineage["recorded"][1]


# -- what a user can get wrong: a clear message, exit 2, nothing written to --output ------------------------


@pytest.mark.parametrize(
    "case",
    ["unknown run", "unknown generation", "unknown registered model", "sha256 mismatch", "empty input", "not utf-8"],
)
def test_bad_input_exits_2_and_leaves_output_untouched(lineage, tmp_path, case):
    out, inp = str(lineage["out"]), str(lineage["input"])
    args = [inp, "--output-dir", out]
    expect = {"unknown run": "no lineage run 'deadbeef'", "unknown generation": "no finished generation 7",
              "unknown registered model": "no registered model version models:/nope/1",
              "sha256 mismatch": "does not match the recorded", "empty input": "is empty",
              "not utf-8": "line 3 is not UTF-8"}[case]  # fmt: skip
    if case == "unknown run":
        args += ["--run", "deadbeef"]
    elif case == "unknown generation":
        args += ["--generation", "7"]
    elif case == "unknown registered model":
        args += ["--model", "models:/nope/1"]
    elif case == "sha256 mismatch":
        good = lineage["dir"] / "gen-1" / "checkpoint.pt"
        bad = tmp_path / "checkpoint.pt"
        data = bytearray(good.read_bytes())
        data[-100] ^= 0xFF
        bad.write_bytes(bytes(data))
        sha = read_lineage(lineage["uri"], lineage["id"])["generations"][1]["checkpoint_sha256"]
        spm = next(lineage["out"].glob("cache/*/spm.model"))
        args = [inp, "--model", str(bad), "--sha256", sha, "--tokenizer", str(spm)]
    elif case == "empty input":
        (tmp_path / "empty.txt").write_bytes(b"")
        args[0] = str(tmp_path / "empty.txt")
    else:
        (tmp_path / "latin1.txt").write_bytes("one\ntwo\nd\xe9j\xe0 vu\n".encode("latin-1"))
        args[0] = str(tmp_path / "latin1.txt")
    target = tmp_path / "kept.txt"
    target.write_text("before\n", encoding="utf-8")
    r = translate(*args, "--output", str(target))
    assert r.exit_code == 2, r.output
    assert expect in " ".join(r.stderr.split()), r.stderr
    assert target.read_text(encoding="utf-8") == "before\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_a_line_longer_than_the_limit_is_truncated_and_counted(lineage, tmp_path):
    src = tmp_path / "long.en"
    src.write_text("God.\n" + " ".join(["and the earth"] * 20) + "\n", encoding="utf-8")
    r = translate(str(src), "--output-dir", str(lineage["out"]), "--max-len-src", "8")
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 2
    assert "1 of 2 lines were longer than the model's limit of 8 tokens" in " ".join(r.stderr.split())


def test_predict_gives_each_lines_label_and_probability(lineage, tmp_path):
    """A classification checkpoint (random weights, the lineage's tokenizer): labels as its own forward pass."""
    import sentencepiece as spm
    import torch

    from mgkd.config import ModelConfig
    from mgkd.generations.checkpoint import save_checkpoint
    from mgkd.models import build_model

    tok = next(lineage["out"].glob("cache/*/spm.model"))
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    torch.manual_seed(0)
    cfg = ModelConfig(arch="transformer_classifier", d_model=32, n_heads=2, ff_dim=64, encoder_layers=1)
    model = build_model(cfg, sp.get_piece_size(), 3).eval()
    labels = ["negative", "neutral", "positive"]
    ckpt = tmp_path / "clf.pt"
    sha = save_checkpoint(ckpt, model, sp.get_piece_size(), labels=labels)
    texts = lineage["sources"][:6] + ["a pair of texts\tand its second half"]
    (tmp_path / "in.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "in.txt"), "--model", str(ckpt), "--tokenizer", str(tok),
                                 "--sha256", sha, "--format", "jsonl"])  # fmt: skip
    assert r.exit_code == 0, r.output
    got = [json.loads(line) for line in r.stdout.splitlines()]
    from mgkd.tasks.classification import encode_example

    for text, row in zip(texts, got):
        a, _, b = text.partition("\t")
        ids, start = encode_example(sp.encode(a), sp.encode(b) if b else None, 64)
        seg = torch.zeros(1, len(ids), dtype=torch.long)
        seg[0, start:] = 1
        with torch.no_grad():
            p = model(torch.tensor(ids[None].astype("int64")), seg).logits.softmax(-1)[0]
        assert row["label"] == labels[int(p.argmax())] and abs(row["probability"] - float(p.max())) < 1e-5
    tsv = CliRunner().invoke(app, ["predict", str(tmp_path / "in.txt"), "--model", str(ckpt), "--tokenizer",
                                   str(tok), "--sha256", sha])  # fmt: skip
    assert [line.split("\t")[0] for line in tsv.stdout.splitlines()] == [row["label"] for row in got]
    wrong = CliRunner().invoke(app, ["translate", str(tmp_path / "in.txt"), "--model", str(ckpt), "--tokenizer",
                                     str(tok), "--sha256", sha])  # fmt: skip
    assert wrong.exit_code == 2 and "use `mgkd predict`" in wrong.stderr


# -- CTranslate2 export --------------------------------------------------------------------------------


def _ids(sp, texts):
    import numpy as np

    return [np.asarray(sp.encode(t), dtype=np.int64) for t in texts]


def test_ctranslate2_float32_greedy_ids_equal_mgkds_own(lineage, tmp_path):
    """A trained 1+1 model and a random 2+2 one (weights scaled up so every position says something else):
    CTranslate2's greedy token ids are mgkd's, exactly."""
    import sentencepiece as spm
    import torch

    from mgkd.config import ModelConfig
    from mgkd.deploy.ctranslate2 import CT2Translator, export_checkpoint
    from mgkd.deploy.inference import DecodeOptions, TorchTranslator
    from mgkd.generations.checkpoint import load_checkpoint
    from mgkd.models import build_model

    tok = next(lineage["out"].glob("cache/*/spm.model"))
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    trained, payload = load_checkpoint(lineage["dir"] / "gen-1" / "checkpoint.pt")
    torch.manual_seed(0)
    deep = build_model(ModelConfig(d_model=32, n_heads=4, ff_dim=48, encoder_layers=2, decoder_layers=2),
                       sp.get_piece_size())  # fmt: skip
    with torch.no_grad():
        for p in deep.parameters():
            p.normal_(0, 0.3)
    options = DecodeOptions(max_len_a=1.2, max_len_b=6)
    ids = _ids(sp, lineage["sources"])
    for name, model, meta in (("trained", trained, payload), ("deep", deep, {})):
        model.eval()
        folder = export_checkpoint(model, meta, tok, tmp_path / name, "float32")
        ours = TorchTranslator(model, sp, options).decode_batch(ids)
        theirs = CT2Translator(folder, sp, options, None, model.cfg.max_positions).decode_batch(ids)
        assert len({tuple(o) for o in ours}) > len(ours) // 2, name  # varied outputs, not one repeated answer
        assert theirs == ours, name


def test_export_cli_int8_loads_translates_and_is_smaller(lineage, tmp_path):
    import ctranslate2
    import sentencepiece as spm

    out = str(lineage["out"])
    for q in ("float32", "int8"):
        r = CliRunner().invoke(app, ["export", "--output-dir", out, "-o", str(tmp_path / q), "--quantization", q])
        assert r.exit_code == 0, r.output
    assert (tmp_path / "int8" / "model.bin").stat().st_size < (tmp_path / "float32" / "model.bin").stat().st_size
    again = CliRunner().invoke(app, ["export", "--output-dir", out, "-o", str(tmp_path / "int8")])
    assert again.exit_code == 2 and "exists" in again.stderr
    r = translate(str(lineage["input"]), "--model", str(tmp_path / "int8"))
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == len(lineage["sources"]) and any(r.stdout.split())
    # The folder's README command, with plain ctranslate2: the float32 export says what mgkd says.
    folder = tmp_path / "float32"
    sp = spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    translator = ctranslate2.Translator(str(folder), device="cpu", compute_type="float32")
    pieces = sp.encode(lineage["sources"][:5], out_type=str)
    result = translator.translate_batch(pieces, beam_size=1, max_decoding_length=512)
    plain = [sp.decode(r.hypotheses[0]) for r in result]
    long_enough = [i for i, h in enumerate(lineage["recorded"][1][:5]) if h == plain[i]]
    # mgkd stops at max_len_a * n + max_len_b tokens; where that limit did not cut, the texts are the same.
    assert long_enough, (plain, lineage["recorded"][1][:5])
    engine = translate(str(lineage["input"]), "--output-dir", out, "--engine", "ctranslate2")
    assert engine.exit_code == 0, engine.output
    assert engine.stdout.splitlines() == lineage["recorded"][1]


def test_bigru_export_is_refused_naming_what_is_supported(lineage, tmp_path):
    from mgkd.config import ModelConfig
    from mgkd.deploy.ctranslate2 import export_checkpoint
    from mgkd.errors import MgkdError
    from mgkd.models import build_model

    tok = next(lineage["out"].glob("cache/*/spm.model"))
    bigru = build_model(ModelConfig(arch="bigru", d_model=32, encoder_layers=1, decoder_layers=1), 400)
    with pytest.raises(MgkdError, match="supports the architectures transformer; this model is 'bigru'"):
        export_checkpoint(bigru, {}, tok, tmp_path / "bigru", "int8")
    assert not (tmp_path / "bigru").exists()


def test_logging_the_model_leaves_its_run_running(lineage):
    """FINISHED is the controller's commit point of a generation (resume reuses a finished one as it is): logging
    the pyfunc model must not end the run, or a kill before the registry version leaves a finished generation
    without one (seen as a missing version after `mgkd resume`, in the SIGKILL fault test)."""
    from mgkd.deploy.pyfunc import log_generation_model

    client = mlflow_client(lineage["uri"])
    gen1 = read_lineage(lineage["uri"], lineage["id"])["generations"][1]
    run = client.create_run(client.get_run(gen1["run_id"]).info.experiment_id, run_name="log-model-only")
    tokenizer = next(lineage["out"].glob("cache/**/spm.model"))
    checkpoint = lineage["dir"] / "gen-1" / "checkpoint.pt"
    model_id, location = log_generation_model(
        lineage["uri"], run.info.run_id, checkpoint, tokenizer, gen1["checkpoint_sha256"], "translation"
    )
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    assert client.get_logged_model(model_id).source_run_id == run.info.run_id and location
