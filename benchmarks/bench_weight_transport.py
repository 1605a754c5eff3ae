"""Weight transport: shared memory alone vs through Ray's object store, measured in one run.

    python -m benchmarks.bench_weight_transport [--shape reduced|qwen3-vl-2b|tiny] [--repeats N] [--out PATH]

Two Ray actors stand in for the learner (writer) and one rollout worker (reader); each repeat runs
both paths on the same tensors, alternating which goes first:
- shared_memory: the writer's `write_buckets` into /dev/shm; the reader reads the files the way the
  engine's weight receiver does and copies each tensor into a preallocated destination (the engine's
  parameters): `bench_weight_sync.ours_read`.
- object_store: the same write, then `WeightUpdate.shared(ray.put)` in the writer, then the rollout
  worker's path: `fetch_and_stage` (ray.get each bucket, write it into the reader's own shared-memory
  folder), the same read into the destination, and the staged folder removed.
Reported: per-phase medians, the whole sync's median and the ratio object_store / shared_memory.
On one node Ray's get is a read of the local object store, so the ratio is the cost of the extra
copies (put, staging write), not of a network: across nodes add bytes / link bandwidth, paid once
per node (Ray pulls an object to a node once and the workers there share it). Speed is reported,
never asserted. The destination is checked against the source after the first repeat of each path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.common import write_result

PATHS = ("shared_memory", "object_store")


class Writer:
    """The learner's side: holds the weights, writes and shares a version."""

    def __init__(self, shape: str, root: str):
        from benchmarks.bench_weight_sync import synthetic_tensors, tiny_tensors

        self.src = tiny_tensors("cpu")[0] if shape == "tiny" else synthetic_tensors(shape, "cpu")
        self.root = root

    def info(self) -> dict:
        return {"tensors": len(self.src), "bytes": sum(t.numel() * t.element_size() for _, t in self.src)}

    def specs(self) -> list:
        return [(n, tuple(t.shape), t.dtype) for n, t in self.src]

    def export(self, version: int):
        import ray

        from rollout.weight_transport import prune_versions, publish, write_buckets

        t0 = time.perf_counter()
        manifest = write_buckets(self.src, self.root, version)
        prune_versions(self.root, keep=1)
        update = publish(self.root, manifest, ray.get_runtime_context().get_node_id())
        return update, time.perf_counter() - t0

    def share(self, update):
        import ray

        t0 = time.perf_counter()
        shared = update.shared(ray.put, fetch_everywhere=True)
        return shared, time.perf_counter() - t0

    def checksum(self) -> list:
        return [(n, float(t.float().sum())) for n, t in self.src]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class Reader:
    """A rollout worker's side: resolves an update as `RolloutWorker.update_weights` does."""

    def __init__(self, root: str, specs: list):
        import torch

        self.root = root
        self.dst = {name: torch.empty(shape, dtype=dtype) for name, shape, dtype in specs}  # the engine's parameters

    def load(self, update) -> dict:
        import ray

        from benchmarks.bench_weight_sync import Timer, ours_read
        from rollout.weight_transport import fetch_and_stage, read_manifest

        t0 = time.perf_counter()
        source = update.source_for(ray.get_runtime_context().get_node_id())
        folder = Path(update.version_dir) if source == "shared_memory" else fetch_and_stage(update, self.root)
        fetch_s = time.perf_counter() - t0
        read_s = ours_read(read_manifest(folder), self.dst, Timer("cpu"))
        t2 = time.perf_counter()
        if source == "object_store":
            shutil.rmtree(folder)
        return {"source": source, "fetch_s": fetch_s, "read_s": read_s, "cleanup_s": time.perf_counter() - t2}

    def clear(self) -> None:
        for t in self.dst.values():
            t.zero_()  # a broken path must not pass the check on the other path's bytes

    def checksum(self) -> list:
        return [(n, float(self.dst[n].float().sum())) for n in sorted(self.dst)]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _med(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def run(shape: str, repeats: int) -> dict:
    import ray

    from rollout.weight_transport import default_shm_root

    shm = default_shm_root()
    tag = f"{os.getpid()}_{int(time.time())}"
    writer = ray.remote(Writer).remote(shape, str(shm / f"bench_transport_writer_{tag}"))
    reader = ray.remote(Reader).remote(str(shm / f"bench_transport_reader_{tag}"), ray.get(writer.specs.remote()))
    try:
        info = ray.get(writer.info.remote())
        expected = sorted(ray.get(writer.checksum.remote()))
        phases = {p: {"export_s": [], "share_s": [], "fetch_s": [], "read_s": [], "cleanup_s": [], "sync_s": []}
                  for p in PATHS}
        version = 0
        for rep in range(repeats):
            for path in (PATHS if rep % 2 == 0 else PATHS[::-1]):
                version += 1
                ray.get(reader.clear.remote())
                t0 = time.perf_counter()
                update, export_s = ray.get(writer.export.remote(version))
                share_s = 0.0
                if path == "object_store":
                    update, share_s = ray.get(writer.share.remote(update))
                got = ray.get(reader.load.remote(update))
                sync_s = time.perf_counter() - t0
                del update  # drops the object-store copies before the next repeat
                if got["source"] != path:
                    raise AssertionError(f"{path}: the reader took the {got['source']} path")
                if rep == 0 and ray.get(reader.checksum.remote()) != expected:
                    raise AssertionError(f"{path}: the reader's weights differ from the writer's")
                for k, v in (("export_s", export_s), ("share_s", share_s), ("fetch_s", got["fetch_s"]),
                             ("read_s", got["read_s"]), ("cleanup_s", got["cleanup_s"]), ("sync_s", sync_s)):
                    phases[path][k].append(v)
        results = {p: {**{k: _med(v) for k, v in ph.items()}, "sync_s_all": [round(x, 4) for x in ph["sync_s"]]}
                   for p, ph in phases.items()}
        base, obj = results["shared_memory"]["sync_s"], results["object_store"]["sync_s"]
        gb = info["bytes"] / 1e9
        return {**info, "gb": round(gb, 3), "paths": results,
                "ratio_object_store_over_shared_memory": round(obj / base, 3),
                "object_store_extra_s": round(obj - base, 4),
                "gbps": {p: round(gb / results[p]["sync_s"], 3) for p in PATHS}}
    finally:
        ray.get([writer.close.remote(), reader.close.remote()])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="reduced", choices=("tiny", "reduced", "qwen3-vl-2b"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    import ray

    from benchmarks.bench_weight_sync import set_bytes

    need = set_bytes(args.shape) or 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=max(2 * need, 512 << 20),
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}})
    try:
        result = run(args.shape, args.repeats)
    finally:
        ray.shutdown()
    path = write_result("weight_transport", {"config": {"shape": args.shape, "repeats": args.repeats,
                                                        "bucket_bytes": 256 << 20, "nodes": 1},
                                             "results": result}, args.out)
    print(f"{args.shape}: {result['gb']} GB, shared memory {result['paths']['shared_memory']['sync_s']} s, "
          f"object store {result['paths']['object_store']['sync_s']} s "
          f"(x{result['ratio_object_store_over_shared_memory']}); written to {path}")


if __name__ == "__main__":
    main()
