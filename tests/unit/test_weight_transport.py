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
