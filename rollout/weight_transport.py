"""Moving policy weights from a learner to rollout engines without per-tensor calls.

The learner writes its language-model weights (checkpoint-format names, exactly as in a saved HF
policy) into a few safetensors files of bounded size under a shared-memory directory; each engine
loads them through its worker extension. A manifest with a version and per-file checksums is written
last, so a reader never sees a half-written update.

Shared memory is host-local. When engines run on other nodes (the KubeRay layout puts the learner
and the rollout workers in different pods), the writer also puts each file's bytes into Ray's object
store (`WeightUpdate.shared`); a reader on another node fetches them, writes them into its own
shared memory (`stage_buckets`) and loads from there. Ray pulls an object to a node once, so the
workers of one node share one transfer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, get_args

from configs.schema import WeightTransport

WEIGHT_TRANSPORTS = get_args(WeightTransport)

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


def version_folder(root: str | Path, version: int) -> Path:
    """Where version `version` of the weights lives under `root`."""
    return Path(root) / f"v{int(version):08d}"


def _write_manifest(version_dir: Path, manifest: dict) -> None:
    """Written last and renamed into place, so a reader never sees a half-written version."""
    tmp = version_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, version_dir / "manifest.json")


def write_buckets(named_tensors: Iterable, out_dir: str | Path, version: int,
                  bucket_bytes: int = DEFAULT_BUCKET_BYTES, checksum: bool = False) -> dict:
    """Write tensors into size-bounded safetensors files; returns the manifest dict.

    `checksum` adds a sha256 per file for `read_manifest(verify=True)`. Off by default: hashing
    was two thirds of the write time (benchmarks/results/weight_sync_*.json), and the manifest
    written last already keeps readers from seeing a partial update."""
    from safetensors.torch import save_file

    out_dir = version_folder(out_dir, version)
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
        files.append({"path": str(path), "tensors": len(bucket), "bytes": size, "file_bytes": path.stat().st_size,
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
    _write_manifest(out_dir, manifest)
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


# ------------------------------------------------------------------------------ across nodes
@dataclass
class WeightUpdate:
    """One published version of the engine weights.

    `version_dir` is readable only on `node_id` (the writer's node). When `buckets` is set it holds
    the same files' bytes as Ray object refs, in manifest order, for readers elsewhere;
    `fetch_everywhere` makes readers on the writer's node fetch them too (`object_store` mode:
    exercises the cross-node path on one machine)."""

    version: int
    version_dir: str
    node_id: str
    manifest: dict
    buckets: list | None = None
    fetch_everywhere: bool = False

    def source_for(self, node_id: str) -> str:
        """How a reader on `node_id` gets the files: "shared_memory" (read `version_dir`) or
        "object_store" (fetch `buckets` and stage them locally)."""
        if self.buckets is not None and (self.fetch_everywhere or node_id != self.node_id):
            return "object_store"
        if node_id != self.node_id:
            raise RuntimeError(
                f"weights v{self.version} were written to shared memory on node {self.node_id[:12]}, but this "
                f"rollout worker runs on node {node_id[:12]} and cannot read them; set "
                "rollout.weight_transport=auto (or object_store) so they also travel through Ray's object store")
        return "shared_memory"

    def shared(self, put: Callable, fetch_everywhere: bool = False) -> "WeightUpdate":
        """A copy whose `buckets` hold `put(bytes)` of every file (`put` is `ray.put` in the actors)."""
        return replace(self, buckets=[put(blob) for blob in bucket_blobs(self.manifest)],
                       fetch_everywhere=fetch_everywhere)


def publish(root: str | Path, manifest: dict, node_id: str) -> WeightUpdate:
    """The update for the version `write_buckets(..., root, ...)` wrote on this node and returned
    `manifest` of."""
    return WeightUpdate(int(manifest["version"]), str(version_folder(root, manifest["version"])), node_id, manifest)


def needs_object_store(mode: str, alive_nodes: int) -> bool:
    """Whether the weights must also go through the object store. `auto` decides by the cluster, not
    by where the workers run now: a worker Ray restarts may come back on another node."""
    if mode not in WEIGHT_TRANSPORTS:
        raise ValueError(f"unknown weight transport {mode!r}; expected one of {WEIGHT_TRANSPORTS}")
    return mode == "object_store" or (mode == "auto" and alive_nodes > 1)


def share_if_needed(update: WeightUpdate, mode: str, share: Callable[[WeightUpdate, bool], WeightUpdate]) -> WeightUpdate:
    """`update`, with its buckets also in Ray's object store when `mode` and the cluster call for it.
    `share(update, fetch_everywhere)` does the putting: in the process that can read the files."""
    import ray

    if update.buckets is None and needs_object_store(mode, sum(n["Alive"] for n in ray.nodes())):
        return share(update, mode == "object_store")
    return update


def bucket_blobs(manifest: dict) -> Iterator:
    """Each bucket file's bytes as a read-only uint8 array over a memory map of the file: `ray.put`
    then copies the shared-memory pages straight into the object store (reading the file into a
    fresh array first cost more than the put itself)."""
    import mmap

    import numpy as np

    for f in manifest["files"]:
        with open(f["path"], "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                yield np.empty(0, dtype=np.uint8)
                continue
            mapped = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)  # stays valid after the close
        yield np.frombuffer(mapped, dtype=np.uint8)


def fetch_and_stage(update: WeightUpdate, dest_root: str | Path) -> Path:
    """Pull `update`'s buckets from Ray's object store one at a time and stage them under
    `dest_root`; returns the version folder (the reader deletes it once the weights are loaded)."""
    import ray

    return stage_buckets(update.manifest, (ray.get(ref) for ref in update.buckets), dest_root)


def stage_buckets(manifest: dict, blobs: Iterable, dest_root: str | Path) -> Path:
    """Write fetched bucket bytes under `dest_root` as a version folder `read_manifest` accepts;
    returns the folder. Refuses a transfer with a missing, extra or truncated bucket."""
    files = manifest["files"]
    version_dir = version_folder(dest_root, manifest["version"])
    if version_dir.exists():
        shutil.rmtree(version_dir)
    version_dir.mkdir(parents=True)
    try:
        local = [_stage_one(f, blob, version_dir, manifest["version"]) for f, blob in _pairs(files, blobs, manifest)]
        _write_manifest(version_dir, {**manifest, "files": local})
        if any(f.get("sha256") for f in local):
            read_manifest(version_dir, verify=True)
    except BaseException:
        shutil.rmtree(version_dir, ignore_errors=True)  # never leave a half-staged version behind
        raise
    return version_dir


def _pairs(files: list, blobs: Iterable, manifest: dict) -> Iterator:
    count = 0
    for blob in blobs:
        if count == len(files):
            raise ValueError(f"weight update v{manifest['version']} arrived with more buckets than the "
                             f"{len(files)} its manifest lists")
        yield files[count], blob
        count += 1
    if count != len(files):
        raise ValueError(f"weight update v{manifest['version']} arrived with {count} buckets; "
                         f"its manifest lists {len(files)}")


def _stage_one(f: dict, blob, version_dir: Path, version) -> dict:
    data = memoryview(blob).cast("B")
    expected = f.get("file_bytes")
    if expected is not None and data.nbytes != expected:
        raise ValueError(f"weight bucket {Path(f['path']).name} of v{version} arrived with "
                         f"{data.nbytes} bytes; the writer wrote {expected}")
    path = version_dir / Path(f["path"]).name
    with open(path, "wb") as out:
        out.write(data)
    return {**f, "path": str(path)}
