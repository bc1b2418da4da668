"""Generation 0 from elsewhere: load an external model, evaluate it, and hand it on as the first teacher.

Nothing is trained. The model is loaded from its folder (offline), decodes the
test split, and is scored like any generation (sacrebleu BLEU/chrF on its
detokenized outputs, decode speed, parameters). Its result names the folder as
the checkpoint and the folder's checksum as the checkpoint sha256, so the
lineage records it, and its students find it, like any generation; a manifest
of the folder's files stands in for the checkpoint artifact (the model is not
copied into MLflow).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mgkd.files import write_atomic
from mgkd.generations.loop import Events, GenerationResult, resolve_device
from mgkd.generations.spec import GenerationSpec
from mgkd.models import count_parameters
from mgkd.models.external import HFTeacher, folder_manifest
from mgkd.tasks.translation import PreparedData
from mgkd.tasks.translation.eval_sets import score_test_sets
from mgkd.tasks.translation.steps import translation_samples


def evaluate_external(spec: GenerationSpec, data: PreparedData, out_dir: Path,
                      events: Events = lambda _: None) -> GenerationResult:  # fmt: skip
    """Generation 0's record for the external model `spec.external`: test metrics, folder checksum, manifest."""
    ext = spec.external
    if ext is None:
        raise ValueError(f"generation {spec.index} is not external")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = folder_manifest(ext.path)
    teacher = HFTeacher.load(ext.path, manifest["sha256"], ext.source_prefix, ext.max_new_tokens)
    teacher.to(resolve_device(spec.train.device))
    load_s = time.perf_counter() - t0

    test = data.splits["test"]

    def decode(split: str) -> tuple[list[str], float]:
        sources, done = data.splits[split].sources, [0]

        def on_batch(k: int) -> None:
            done[0] += k
            events({"type": "decode", "split": split, "done": done[0], "total": len(sources)})

        t0 = time.perf_counter()
        nbest = teacher.translate_texts(
            sources, ext.num_beams or spec.eval.beam_size, 1, spec.eval.max_len_a, spec.eval.max_len_b,
            spec.eval.length_penalty, spec.eval.decode_batch_size, on_batch,
        )  # fmt: skip
        return [h[0][1] if h else "" for h in nbest], len(sources) / max(time.perf_counter() - t0, 1e-9)

    # The test split and every named test set, scored like any generation's.
    held_out = score_test_sets(data, decode, out_dir)
    hyps, translations = held_out.hypotheses, held_out.translations
    manifest_file = out_dir / "manifest.json"
    write_atomic(manifest_file, json.dumps(manifest, indent=1).encode("utf-8"))

    n_params = count_parameters(teacher)
    metrics = {
        **held_out.metrics,
        "decode_sentences_per_s": held_out.sentences_per_s,
        "parameters": float(n_params),
        "model_size_bytes": float(sum(f["size"] for f in manifest["files"])),  # the model folder on disk
        "load_time_s": load_s,
        # Nothing trained: the lineage table and plot read these like any generation's.
        "steps": 0.0,
        "epochs": 0.0,
        "train_time_s": 0.0,
    }
    return GenerationResult(spec.index, str(ext.path), manifest["sha256"], n_params, metrics,
                            translations=str(translations), samples=translation_samples(test, hyps),
                            manifest=str(manifest_file))  # fmt: skip
