"""Nothing crosses nodes by path (issue 19): checked bytes, a manifest that travels with the delivered outputs, and
`ray.resources_per_worker` validated and passed to placement. The two-node run is tests/integration/test_nodes.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from mgkd.config import RayConfig
from mgkd.errors import MgkdError
from mgkd.files import sha256_file
from mgkd.generations import GenerationResult
from mgkd.orchestration.placement import check_workers_fit, multi_node_warnings
from mgkd.orchestration.transfer import (
    MANIFEST,
    RESULT_FILE,
    copy_verified,
    pack_delivery,
    unpack_delivery,
    verified,
    write_manifest,
)

from .test_placement import node


def test_bytes_whose_sha256_differs_are_refused_with_a_clear_error():
    data = b"teacher checkpoint bytes"
    digest = hashlib.sha256(data).hexdigest()
    assert verified(data, digest, "teacher checkpoint checkpoint.pt") == data
    corrupted = data[:-1] + b"X"
    with pytest.raises(MgkdError) as e:
        verified(corrupted, digest, "teacher checkpoint checkpoint.pt")
    msg = str(e.value)
    assert "teacher checkpoint checkpoint.pt arrived with sha256" in msg and digest[:12] in msg
    assert "nothing was loaded" in msg


def test_a_manifest_round_trip_copies_every_file_and_refuses_a_changed_one(tmp_path):
    src = tmp_path / "src"
    (src / "test_sets").mkdir(parents=True)
    (src / "checkpoint.pt").write_bytes(b"\x00weights" * 100)
    (src / "test_sets" / "named.tsv").write_text("id\tsource\n")
    manifest = write_manifest(src, {"node_id": "n2"})
    assert set(manifest["files"]) == {"checkpoint.pt", "test_sets/named.tsv"} and manifest["node_id"] == "n2"

    copied = copy_verified(src, tmp_path / "dest")
    assert copied["files"] == manifest["files"]
    for rel, sha in manifest["files"].items():
        assert sha256_file(tmp_path / "dest" / rel) == sha
    assert json.loads((tmp_path / "dest" / MANIFEST).read_text())["node_id"] == "n2"

    (src / "checkpoint.pt").write_bytes(b"changed on the way")
    with pytest.raises(MgkdError, match="delivered file checkpoint.pt has sha256"):
        copy_verified(src, tmp_path / "again")
    assert not (tmp_path / "again" / "checkpoint.pt").exists()  # no partial or wrong file left behind
    (src / MANIFEST).unlink()
    with pytest.raises(MgkdError, match="no delivery.json"):
        copy_verified(src, tmp_path / "again")


def test_a_delivery_maps_the_results_paths_into_the_generations_folder(tmp_path):
    scratch, into, out = tmp_path / "scratch", tmp_path / "deliver", tmp_path / "gen-1"
    scratch.mkdir(), into.mkdir()
    (scratch / "checkpoint.pt").write_bytes(b"ckpt")
    (scratch / "test_translations.tsv").write_text("1\ta\tb\tc\n")
    (scratch / "train_state.pt").write_bytes(b"state")  # never delivered: the generation is complete
    outside = tmp_path / "cache" / "teacher_cache.json"  # an artifact in the data cache, outside the folder
    outside.parent.mkdir()
    outside.write_text("{}")
    ckpt = scratch / "checkpoint.pt"
    tsv = str(scratch / "test_translations.tsv")
    result = GenerationResult(
        1, str(ckpt), sha256_file(ckpt), 10, {"x": 1.0}, translations=tsv, artifacts=[str(outside)]
    )
    pack_delivery(result, scratch, into, {"node_id": "n2"})
    assert not (into / "train_state.pt").exists()

    got, manifest = unpack_delivery(into, out)
    assert got.checkpoint == str(out / "checkpoint.pt") and got.translations == str(out / "test_translations.tsv")
    assert got.artifacts == [str(outside)]  # the same file is here (one node): its path is kept
    assert sha256_file(Path(got.checkpoint)) == result.checkpoint_sha256
    assert json.loads((out / RESULT_FILE).read_text())["checkpoint"] == got.checkpoint
    assert manifest["node_id"] == "n2"
    outside.unlink()  # on another node the driver has no such file: it lands in the folder, under its own name
    got, _ = unpack_delivery(into, tmp_path / "elsewhere")
    assert got.artifacts == [str(tmp_path / "elsewhere" / "outside" / "0" / "teacher_cache.json")]


def test_resources_per_worker_are_validated_and_reach_placement():
    cfg = RayConfig(resources_per_worker={"node2": 1}, cpus_per_generation=1)
    assert cfg.resources_per_worker == {"node2": 1.0}
    for bad, words in [({"CPU": 1}, "ray.cpus_per_generation"), ({"node2": 0}, "must be > 0"),
                       ({" ": 1}, "needs a name")]:  # fmt: skip
        with pytest.raises(ValidationError, match=words):
            RayConfig(resources_per_worker=bad)
    with pytest.raises(ValidationError, match="needs ray.backend 'train'"):
        RayConfig(resources_per_worker={"node2": 1}, backend="task")
    with_node2 = {**node("10.0.0.2", 2), "Resources": {"CPU": 2.0, "node2": 1.0}}
    check_workers_fit(cfg, [node("10.0.0.1", 4), with_node2])
    with pytest.raises(MgkdError) as e:
        check_workers_fit(cfg, [node("10.0.0.1", 4)])
    assert "1 node2 per worker" in str(e.value) and "ray.resources_per_worker" in str(e.value)


def test_several_nodes_without_a_storage_path_are_warned_about():
    two = [node("10.0.0.1", 2), node("10.0.0.2", 2)]
    (warning,) = multi_node_warnings(RayConfig(), two)
    assert "2 alive nodes" in warning and "set ray.storage_path" in warning
    assert multi_node_warnings(RayConfig(storage_path="/shared/x"), two) == []
    assert multi_node_warnings(RayConfig(), [two[0], node("10.0.0.3", 2, alive=False)]) == []


def test_several_nodes_with_what_still_travels_by_path_are_warned_about():
    two = [node("10.0.0.1", 2), node("10.0.0.2", 2)]
    (task,) = multi_node_warnings(RayConfig(backend="task"), two)  # no storage_path warning: Ray Train unused
    assert "ray.backend 'task' generations read the teacher" in task and "a shared filesystem" in task
    storage, sweep = multi_node_warnings(RayConfig(), two, sweeps=True)
    assert "ray.storage_path is not set" in storage and "the trials of a Tune sweep" in sweep
    assert multi_node_warnings(RayConfig(storage_path="/shared/x"), two, sweeps=True)[0].startswith(
        "the Ray cluster has 2 alive nodes, and the trials of a Tune sweep"
    )
    assert multi_node_warnings(RayConfig(backend="task"), two[:1], sweeps=True) == []  # one node: nothing to say
