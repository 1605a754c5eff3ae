"""Bucketed weight files in shared memory: bucket bounds, manifest, optional checksums, pruning."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rollout import weight_transport
from rollout.weight_transport import is_policy_lm_weight, prune_versions, read_manifest, write_buckets


def _tensors():
    g = torch.Generator().manual_seed(0)
    return [(f"model.layers.{i}.w", torch.randn(64, 64, generator=g)) for i in range(6)]


def test_buckets_hold_every_tensor_within_the_size_bound(tmp_path):
    named = _tensors()
    manifest = write_buckets(named, tmp_path, version=3, bucket_bytes=2 * 64 * 64 * 4)
    assert manifest["version"] == 3 and len(manifest["files"]) == 3
    assert manifest["bytes"] == 6 * 64 * 64 * 4
    back = {}
    for f in manifest["files"]:
        assert f["bytes"] <= 2 * 64 * 64 * 4 and f["sha256"] is None
        back.update(load_file(f["path"]))
    assert all(torch.equal(back[n], t) for n, t in named)
    assert read_manifest(tmp_path / "v00000003") == manifest
    with pytest.raises(ValueError, match="without a checksum"):
        read_manifest(tmp_path / "v00000003", verify=True)


def test_checksums_catch_a_corrupt_bucket(tmp_path):
    manifest = write_buckets(_tensors(), tmp_path, version=1, checksum=True)
    read_manifest(tmp_path / "v00000001", verify=True)
    path = manifest["files"][0]["path"]
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        read_manifest(tmp_path / "v00000001", verify=True)


def test_prune_keeps_the_newest_versions(tmp_path):
    for v in range(4):
        write_buckets(_tensors()[:1], tmp_path, version=v)
    prune_versions(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v00000002", "v00000003"]


def test_heads_are_not_engine_weights():
    assert is_policy_lm_weight("model.language_model.layers.0.mlp.up_proj.weight")
    assert not is_policy_lm_weight("seg_projector.0.weight")


def test_weight_root_falls_back_when_shared_memory_is_not_writable(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(weight_transport.os, "access", lambda path, mode: False)
    assert weight_transport.default_shm_root(tmp_path / "run") == tmp_path / "run"
    assert weight_transport.default_shm_root() == tmp_path / "tmp"
    monkeypatch.setattr(weight_transport.os, "access", lambda path, mode: True)
    if Path("/dev/shm").is_dir():
        assert weight_transport.default_shm_root(tmp_path / "run") == Path("/dev/shm")


# ----------------------------------------------------------------------- across nodes (no Ray)
def _published(tmp_path, **kw):
    from rollout.weight_transport import publish

    manifest = write_buckets(_tensors(), tmp_path / "writer", version=5, bucket_bytes=2 * 64 * 64 * 4, **kw)
    update = publish(tmp_path / "writer", manifest, "node-a")
    assert update.version_dir == str(tmp_path / "writer" / "v00000005")
    return update


def test_fetched_buckets_staged_on_another_node_load_as_the_written_tensors(tmp_path):
    from rollout.weight_transport import stage_buckets

    update = _published(tmp_path).shared(put=lambda blob: blob.copy())  # a fake object store: a copy
    assert update.source_for("node-b") == "object_store" and update.source_for("node-a") == "shared_memory"
    staged = stage_buckets(update.manifest, update.buckets, tmp_path / "reader")
    manifest = read_manifest(staged)
    assert manifest["version"] == 5 and len(manifest["files"]) == 3
    assert all(Path(f["path"]).parent == staged for f in manifest["files"])
    back = {}
    for f in manifest["files"]:
        back.update(load_file(f["path"]))
    assert set(back) == {n for n, _ in _tensors()}
    assert all(torch.equal(back[n], t) for n, t in _tensors())


def test_object_store_mode_fetches_on_the_writers_node_too(tmp_path):
    update = _published(tmp_path)
    assert update.source_for("node-a") == "shared_memory"
    assert update.shared(put=bytes, fetch_everywhere=True).source_for("node-a") == "object_store"


def test_shared_memory_only_is_refused_clearly_on_another_node(tmp_path):
    with pytest.raises(RuntimeError, match="weight_transport=auto"):
        _published(tmp_path).source_for("node-b")


def test_a_truncated_missing_or_extra_bucket_is_refused_and_nothing_is_left(tmp_path):
    from rollout.weight_transport import stage_buckets

    update = _published(tmp_path).shared(put=bytes)
    cut = [update.buckets[0], update.buckets[1][:-10], update.buckets[2]]
    with pytest.raises(ValueError, match="arrived with .* bytes; the writer wrote"):
        stage_buckets(update.manifest, cut, tmp_path / "reader")
    with pytest.raises(ValueError, match="arrived with 2 buckets; its manifest lists 3"):
        stage_buckets(update.manifest, update.buckets[:2], tmp_path / "reader")
    with pytest.raises(ValueError, match="more buckets"):
        stage_buckets(update.manifest, update.buckets + [b"x"], tmp_path / "reader")
    assert list((tmp_path / "reader").iterdir()) == []


def test_checksummed_buckets_are_verified_after_staging(tmp_path):
    from rollout.weight_transport import stage_buckets

    update = _published(tmp_path, checksum=True).shared(put=bytes)
    flipped = bytearray(update.buckets[0])
    flipped[-1] ^= 0xFF  # same length, different bytes: only the checksum can tell
    with pytest.raises(ValueError, match="checksum mismatch"):
        stage_buckets(update.manifest, [bytes(flipped), *update.buckets[1:]], tmp_path / "reader")
    staged = stage_buckets(update.manifest, update.buckets, tmp_path / "reader")
    read_manifest(staged, verify=True)


def test_transport_choice():
    from rollout.weight_transport import needs_object_store

    assert not needs_object_store("auto", 1) and needs_object_store("auto", 2)
    assert needs_object_store("object_store", 1) and not needs_object_store("shared_memory", 3)
    with pytest.raises(ValueError, match="unknown weight transport"):
        needs_object_store("nccl", 2)
