"""Moving policy weights from a learner to rollout engines on the same host without per-tensor calls.

The learner writes its language-model weights (checkpoint-format names, exactly as in a saved HF
policy) into a few safetensors files of bounded size under a shared-memory directory; each engine
loads them through its worker extension. A manifest with a version and per-file checksums is written
last, so a reader never sees a half-written update.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

DEFAULT_BUCKET_BYTES = 256 * 1024 * 1024


def default_shm_root(fallback: str | os.PathLike | None = None) -> Path:
    """/dev/shm when it is writable (weight files then never touch a disk), else `fallback`
    (TMPDIR when not given)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(fallback) if fallback is not None else Path(os.environ.get("TMPDIR", "/tmp"))


def is_policy_lm_weight(name: str) -> bool:
    """Weights the inference engine holds: everything of the HF policy except our [SEG] heads."""
    return not name.startswith(("seg_projector.", "sam_prompt_encoder.", "sam_mask_decoder.", "heads."))


def write_buckets(named_tensors: Iterable, out_dir: str | Path, version: int,
                  bucket_bytes: int = DEFAULT_BUCKET_BYTES, checksum: bool = False) -> dict:
    """Write tensors into size-bounded safetensors files; returns the manifest dict.

    `checksum` adds a sha256 per file for `read_manifest(verify=True)`. Off by default: hashing
    was two thirds of the write time (benchmarks/results/weight_sync_*.json), and the manifest
    written last already keeps readers from seeing a partial update."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir) / f"v{version:08d}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    files, bucket, size, total = [], {}, 0, 0

    def flush():
        nonlocal bucket, size
        if not bucket:
            return
        path = out_dir / f"bucket_{len(files):04d}.safetensors"
        save_file(bucket, str(path))
        files.append({"path": str(path), "tensors": len(bucket), "bytes": size,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest() if checksum else None})
        bucket, size = {}, 0

    for name, tensor in named_tensors:
        t = tensor.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            flush()
        bucket[name] = t
        size += nbytes
        total += nbytes
    flush()
    manifest = {"version": int(version), "files": files, "bytes": total}
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, out_dir / "manifest.json")
    return manifest


def read_manifest(version_dir: str | Path, verify: bool = False) -> dict:
    path = Path(version_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    if verify:
        for f in manifest["files"]:
            if f.get("sha256") is None:
                raise ValueError(f"weight bucket {f['path']} was written without a checksum (checksum=False)")
            digest = hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()
            if digest != f["sha256"]:
                raise ValueError(f"weight bucket {f['path']} is corrupt (checksum mismatch)")
    return manifest


def prune_versions(root: str | Path, keep: int = 1) -> None:
    """Delete all but the newest `keep` version directories (shared memory is RAM)."""
    root = Path(root)
    if not root.is_dir():
        return
    versions = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("v"))
    for old in versions[:-keep] if keep else versions:
        shutil.rmtree(old, ignore_errors=True)
