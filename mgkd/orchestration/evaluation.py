"""Evaluate a recorded lineage again: chosen generations alone and as an ensemble (BAN-E).

Everything comes back from MLflow (any tracking URI): the lineage's resolved
config (to rebuild the same data and tokenizer, from its cache when present)
and each generation's checkpoint, verified against the checksum its run
recorded. The result is logged as an `evaluation` run under the lineage.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mgkd.config import ExperimentConfig, validate
from mgkd.errors import MgkdError
from mgkd.generations.checkpoint import load_checkpoint
from mgkd.lineage.tracking import TAG_KIND, TAG_LINEAGE, lineage_config, mlflow_client, read_lineage
from mgkd.models.decoding import translate
from mgkd.models.ensemble import EnsembleSeq2Seq
from mgkd.tasks.translation import prepare, score_translations


@dataclass
class EnsembleReport:
    lineage_id: str
    split: str
    rows: list[dict[str, Any]]  # one per member, then the ensemble
    run_id: str | None


def evaluate_ensemble(
    tracking_uri: str,
    lineage_id: str | None,
    experiment: str | None,
    generations: list[int] | None,
    split: str = "test",
    beam_size: int | None = None,
    output_dir: Path | None = None,
    log: bool = True,
) -> EnsembleReport:
    """BLEU/chrF of each chosen generation and of their ensemble on a split of the lineage's data."""
    info = read_lineage(tracking_uri, lineage_id, experiment)
    by_index = {g["generation"]: g for g in info["generations"] if g["status"] == "FINISHED"}
    chosen = sorted(generations) if generations else [k for k in sorted(by_index) if k > 0]
    missing = [k for k in chosen if k not in by_index]
    if missing:
        raise MgkdError(
            f"lineage {info['lineage_id']} has no finished generation(s) {missing}; it has {sorted(by_index)}"
        )
    if len(chosen) < 2:
        raise MgkdError(f"an ensemble needs at least two generations, got {chosen}; e.g. --ensemble 1,2,3")
    client = mlflow_client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="mgkd-eval-") as tmp:
        cfg: ExperimentConfig = validate(lineage_config(tracking_uri, info["lineage_id"]))
        if cfg.task != "translation":
            raise MgkdError(
                f"lineage {info['lineage_id']} is task {cfg.task!r}: `mgkd evaluate` ensembles translation lineages; "
                "its generations' test accuracy and macro-F1 are in `mgkd lineage`"
            )
        if output_dir is not None:
            cfg = cfg.model_copy(update={"output_dir": Path(output_dir)})
        if split not in ("valid", "test") and not split.startswith("test/"):
            raise MgkdError(f"--split must be valid, test or test/<name> (a named test set), got {split!r}")
        data = prepare(cfg)
        if split not in data.splits:
            named = [k for k in data.splits if k.startswith("test/")]
            raise MgkdError(f"the lineage has no test set {split!r}; its named sets: {', '.join(named) or 'none'}")
        members = []
        for k in chosen:
            g = by_index[k]
            if "external.path" in g["params"]:
                raise MgkdError(
                    f"generation {k} is the external model {g['params']['external.path']}: its vocabulary is not "
                    "the lineage's, so it cannot join an ensemble of log-probabilities; choose mgkd generations"
                )
            path = client.download_artifacts(g["run_id"], "checkpoint/checkpoint.pt", f"{tmp}/gen-{k}")
            model, _ = load_checkpoint(Path(path), g["checkpoint_sha256"])
            members.append(model)
    beam = beam_size or cfg.eval.beam_size
    s = data.splits[split]

    def score(model: torch.nn.Module) -> dict[str, float]:
        t0 = time.perf_counter()
        hyps = translate(model, s.src, data.tokenizer.decode, cfg.eval.max_len_a, cfg.eval.max_len_b,
                         cfg.eval.decode_batch_size, beam, cfg.eval.length_penalty)  # fmt: skip
        out = score_translations(hyps, s.targets, data.scoring)
        return {"bleu": out["bleu"], "chrf": out["chrf"], "sentences_per_s": len(hyps) / (time.perf_counter() - t0)}

    rows = [{"model": f"gen {k}", "generation": k, **score(m)} for k, m in zip(chosen, members)]
    rows.append({"model": "ensemble " + ",".join(map(str, chosen)), "generation": -1,
                 **score(EnsembleSeq2Seq(members))})  # fmt: skip
    run_id = _log(client, info, chosen, split, beam, rows) if log else None
    return EnsembleReport(info["lineage_id"], split, rows, run_id)


def _log(client: Any, info: dict[str, Any], chosen: list[int], split: str, beam: int,
         rows: list[dict[str, Any]]) -> str:  # fmt: skip
    """An `evaluation` run under the lineage: the members' and the ensemble's scores."""
    tags = {"mlflow.parentRunId": info["lineage_id"], TAG_KIND: "evaluation", TAG_LINEAGE: info["lineage_id"]}
    run = client.create_run(info["experiment_id"], run_name="ensemble-" + "-".join(map(str, chosen)), tags=tags)
    rid = run.info.run_id
    client.log_param(rid, "members", ",".join(map(str, chosen)))
    client.log_param(rid, "split", split)
    client.log_param(rid, "beam_size", beam)
    for r in rows:
        prefix = "ensemble" if r["generation"] < 0 else f"gen{r['generation']}"
        for key in ("bleu", "chrf"):
            client.log_metric(rid, f"{prefix}_{split}_{key}", r[key])
    client.set_terminated(rid, "FINISHED")
    return rid
