"""Weight-sync benchmark: our learner -> engine path vs a raw copy of the same bytes, in one run.

    python -m benchmarks.bench_weight_sync [--quick] [--device cpu|cuda] [--shape tiny reduced qwen3-vl-2b]
                                           [--engine] [--repeats N] [--out PATH]

Modes, measured interleaved (ours, raw, raw, ours, ...) on the same source tensors:
- ours:  write = rollout.weight_transport.write_buckets (tensors -> CPU -> size-bounded safetensors
         files under /dev/shm, sha256 of each file, manifest); read = what the engine's worker
         extension (rollout/weight_receiver.py) does: safe_open each bucket, get_tensor, then copy
         into the destination parameter (emulated as dst.copy_(src) into preallocated tensors).
- raw:   write = copy every tensor into one preallocated contiguous host buffer, then one file
         write (in <= 1 GiB calls: Linux caps one write(2) just under 2 GiB); read = read the
         file into a second preallocated host buffer, then copy each slice into the same
         destination tensors. Same two hops, no format, no hashing.
The sha256 share of our write is measured separately by hashing the written files the way
write_buckets does. With --device cuda the source and destination tensors live on the GPU.

Shapes: `tiny` = the tiny Qwen2.5-VL policy's weights as the engine receives them; `qwen3-vl-2b` =
synthetic bf16 tensors named and sized like Qwen3-VL-2B (text hidden 2048, 28 layers, 16 heads / 8
KV heads of dim 128, MLP 6144, vocab 151936 with an untied lm_head; vision depth 24, width 1024,
MLP 4096, merger + 3 deepstack mergers; ~4.7 GB); `reduced` = the same tensor shapes with 2 text
layers, 2 vision blocks and a vocab of 8192 (~0.5 GB). A shape whose tensors, files and buffers do
not fit in the free memory is skipped with the reason (the raw mode holds 3 copies on the host).

--engine (CPU, vLLM importable): also start the real vLLM engine for the tiny policy (as
benchmarks/bench_rollout.py does) and time its load_weights(files, version) on buckets written
from the tiny policy (pause, in-place reload, cache resets), next to the raw copy of those bytes.
Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import peak_rss_mb, write_result

ALIGN = 64  # byte alignment of each tensor in the raw buffer (any dtype view stays legal)
CHUNK = 1 << 30  # one write/readinto call moves at most this many bytes


# --------------------------------------------------------------------------- tensor sets
def qwen3_vl_specs(layers: int = 28, vocab: int = 151936, vision_depth: int = 24) -> list[tuple[str, tuple]]:
    """(checkpoint-style name, shape) of a Qwen3-VL-2B-like policy; `layers`, `vocab` and
    `vision_depth` shrink it without changing any per-layer tensor."""
    h, inter, heads, kv, hd = 2048, 6144, 16, 8, 128
    vw, vmlp, merge_in = 1024, 4096, 1024 * 4
    specs = [("model.language_model.embed_tokens.weight", (vocab, h))]
    for i in range(layers):
        p = f"model.language_model.layers.{i}."
        specs += [(p + "self_attn.q_proj.weight", (heads * hd, h)),
                  (p + "self_attn.k_proj.weight", (kv * hd, h)),
                  (p + "self_attn.v_proj.weight", (kv * hd, h)),
                  (p + "self_attn.o_proj.weight", (h, heads * hd)),
                  (p + "self_attn.q_norm.weight", (hd,)), (p + "self_attn.k_norm.weight", (hd,)),
                  (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                  (p + "mlp.down_proj.weight", (h, inter)), (p + "input_layernorm.weight", (h,)),
                  (p + "post_attention_layernorm.weight", (h,))]
    specs += [("model.language_model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]
    specs += [("model.visual.patch_embed.proj.weight", (vw, 3, 2, 16, 16)),
              ("model.visual.patch_embed.proj.bias", (vw,)), ("model.visual.pos_embed.weight", (2304, vw))]
    for i in range(vision_depth):
        p = f"model.visual.blocks.{i}."
        specs += [(p + "norm1.weight", (vw,)), (p + "norm1.bias", (vw,)), (p + "norm2.weight", (vw,)),
                  (p + "norm2.bias", (vw,)), (p + "attn.qkv.weight", (3 * vw, vw)),
                  (p + "attn.qkv.bias", (3 * vw,)),
                  (p + "attn.proj.weight", (vw, vw)), (p + "attn.proj.bias", (vw,)),
                  (p + "mlp.linear_fc1.weight", (vmlp, vw)), (p + "mlp.linear_fc1.bias", (vmlp,)),
                  (p + "mlp.linear_fc2.weight", (vw, vmlp)), (p + "mlp.linear_fc2.bias", (vw,))]
    for p, norm in [("model.visual.merger.", vw)] + [(f"model.visual.deepstack_merger_list.{j}.", merge_in)
                                                    for j in range(3)]:
        specs += [(p + "norm.weight", (norm,)), (p + "norm.bias", (norm,)),
                  (p + "linear_fc1.weight", (merge_in, merge_in)), (p + "linear_fc1.bias", (merge_in,)),
                  (p + "linear_fc2.weight", (h, merge_in)), (p + "linear_fc2.bias", (h,))]
    return specs


SYNTHETIC = {"qwen3-vl-2b": {}, "reduced": {"layers": 2, "vocab": 8192, "vision_depth": 2}}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def set_bytes(shape_name: str) -> int | None:
    """Bytes of a synthetic set (bf16) without building it; None for `tiny` (small anyway)."""
    if shape_name not in SYNTHETIC:
        return None
    return 2 * sum(_numel(s) for _, s in qwen3_vl_specs(**SYNTHETIC[shape_name]))


def synthetic_tensors(shape_name: str, device: str) -> list[tuple[str, torch.Tensor]]:
    """Random-valued tensors. A 16 MiB random block is tiled into each tensor: drawing 2.4 G normal
    samples would take minutes on a small CPU, and copy/hash speed does not depend on the values."""
    gen = torch.Generator(device=device).manual_seed(0)
    block = torch.empty(8 << 20, dtype=torch.bfloat16, device=device).normal_(generator=gen)
    out = []
    for name, shape in qwen3_vl_specs(**SYNTHETIC[shape_name]):
        t = torch.empty(shape, dtype=torch.bfloat16, device=device)
        flat = t.view(-1)
        for start in range(0, flat.numel(), block.numel()):
            k = min(block.numel(), flat.numel() - start)
            flat[start:start + k].copy_(block[:k])
        out.append((name, t))
    return out


def tiny_tensors(device: str) -> tuple[list[tuple[str, torch.Tensor]], Path]:
    """The tiny policy's weights exactly as the learner exports them to the engine."""
    from rollout.tiny_policy import build_tiny_policy
    from rollout.weight_transport import is_policy_lm_weight

    try:
        from learner.eval_session import policy_lm_tensors
    except ImportError:  # its module pulls in evaluation deps (pycocotools) the GPU image lacks
        policy_lm_tensors = _policy_lm_tensors
    model_dir = build_tiny_policy("tiny-qwen2.5-vl")
    return [(n, t.to(device)) for n, t in policy_lm_tensors(model_dir) if is_policy_lm_weight(n)], model_dir


def _policy_lm_tensors(policy_dir: Path):
    """The same reading as learner.eval_session.policy_lm_tensors: top-level safetensors files."""
    from safetensors import safe_open

    for path in sorted(Path(policy_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- the two paths
class Timer:
    def __init__(self, device: str):
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def __enter__(self):
        self.sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.t0


def ours_write(src, root: Path, version: int, timer: Timer) -> dict:
    from rollout.weight_transport import write_buckets

    with timer:
        manifest = write_buckets(src, root, version)
    manifest["seconds"] = timer.seconds
    return manifest


def ours_read(manifest: dict, dst: dict, timer: Timer) -> float:
    from safetensors import safe_open

    with timer:
        for f in manifest["files"]:
            with safe_open(f["path"], framework="pt", device="cpu") as fh:
                for name in fh.keys():
                    dst[name].copy_(fh.get_tensor(name))
    return timer.seconds


def hash_files(manifest: dict) -> float:
    """The checksum work write_buckets does, alone (files are in page cache / tmpfs already)."""
    t0 = time.perf_counter()
    for f in manifest["files"]:
        hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()
    return time.perf_counter() - t0


def raw_layout(src) -> tuple[list[tuple[str, int, int]], int]:
    """(name, offset, nbytes) of every tensor in the contiguous buffer, and its total size."""
    layout, off = [], 0
    for name, t in src:
        n = nbytes(t)
        layout.append((name, off, n))
        off += (n + ALIGN - 1) // ALIGN * ALIGN
    return layout, off


def _slot(buf: torch.Tensor, off: int, n: int, like: torch.Tensor) -> torch.Tensor:
    return buf[off:off + n].view(like.dtype).view(like.shape)


def raw_write(src, layout, send: torch.Tensor, path: Path, timer: Timer) -> float:
    with timer:
        for (_, t), (_, off, n) in zip(src, layout):
            _slot(send, off, n, t).copy_(t)
        view = memoryview(send.numpy())
        with open(path, "wb", buffering=0) as f:
            done = 0
            while done < len(view):
                done += f.write(view[done:done + CHUNK])
    return timer.seconds


def raw_read(path: Path, layout, recv: torch.Tensor, dst: dict, timer: Timer) -> float:
    with timer:
        view = memoryview(recv.numpy())
        with open(path, "rb", buffering=0) as f:
            done = 0
            while done < len(view):
                got = f.readinto(view[done:done + CHUNK])
                if not got:
                    raise EOFError(f"{path} ended after {done} bytes")
                done += got
        for name, off, n in layout:
            d = dst[name]
            d.copy_(_slot(recv, off, n, d))
    return timer.seconds


def _check(src, dst, mode: str) -> None:
    for name, t in src:
        if not torch.equal(t, dst[name]):
            raise AssertionError(f"{mode}: destination {name} differs from the source")


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _rates(write_s: list[float], read_s: list[float], total_bytes: int) -> dict:
    w, r = _med(write_s), _med(read_s)
    gb = total_bytes / 1e9
    return {"write_s": round(w, 5), "read_s": round(r, 5), "total_s": round(w + r, 5),
            "write_gbps": round(gb / w, 3), "read_gbps": round(gb / r, 3),
            "total_gbps": round(gb / (w + r), 3),
            "write_s_all": [round(x, 5) for x in write_s], "read_s_all": [round(x, 5) for x in read_s]}


def bench_set(src, device: str, shm: Path, repeats: int) -> dict:
    from rollout.weight_transport import version_folder

    timer = Timer(device)
    total = sum(nbytes(t) for _, t in src)
    dst = {name: torch.empty_like(t) for name, t in src}
    layout, buf_bytes = raw_layout(src)
    # Both host buffers are preallocated and touched once: the receiver keeps its buffer across updates.
    send = torch.zeros(buf_bytes, dtype=torch.uint8)
    recv = torch.zeros(buf_bytes, dtype=torch.uint8)
    ours = {"write": [], "read": [], "hash": [], "buckets": 0}
    raw = {"write": [], "read": []}
    raw_path = shm / "raw.bin"
    for rep in range(repeats):
        # Alternate which mode goes first so drift in background load hits both alike.
        for mode in (("ours", "raw") if rep % 2 == 0 else ("raw", "ours")):
            for d in dst.values():
                d.zero_()  # a broken path must not pass the check on the previous mode's bytes
            if mode == "ours":
                manifest = ours_write(src, shm, rep + 1, timer)
                ours["write"].append(manifest["seconds"])
                ours["read"].append(ours_read(manifest, dst, timer))
                ours["hash"].append(hash_files(manifest))
                ours["buckets"] = len(manifest["files"])
                shutil.rmtree(version_folder(shm, rep + 1))
            else:
                raw["write"].append(raw_write(src, layout, send, raw_path, timer))
                raw["read"].append(raw_read(raw_path, layout, recv, dst, timer))
                raw_path.unlink()
            if rep == 0:
                _check(src, dst, mode)
    del send, recv, dst
    o, r = _rates(ours["write"], ours["read"], total), _rates(raw["write"], raw["read"], total)
    o.update({"buckets": ours["buckets"], "sha256_s": round(_med(ours["hash"]), 5),
              "sha256_share_of_write": round(_med(ours["hash"]) / o["write_s"], 3)})
    r["buffer_bytes"] = buf_bytes
    return {"tensors": len(src), "bytes": total, "gb": round(total / 1e9, 3),
            "dtypes": sorted({str(t.dtype).removeprefix("torch.") for _, t in src}),
            "ours": o, "raw": r,
            "ratio_ours_over_raw": {k: round(o[f"{k}_s"] / r[f"{k}_s"], 3)
                                    for k in ("write", "read", "total")}}


# --------------------------------------------------------------------------- real engine (CPU)
async def _engine_updates(tiny, model_dir: Path, shm: Path, repeats: int) -> dict:
    from configs import load_config
    from rollout.engine import RolloutEngine, max_images_per_episode
    from rollout.weight_transport import version_folder, write_buckets

    cfg = load_config("debug_cpu")
    engine = RolloutEngine(model_dir, cfg.rollout, max_images_per_episode(cfg.env), seed=0,
                           dtype=cfg.model.dtype)
    times, reported = [], []
    try:
        for v in range(1, repeats + 2):  # the first update is a warm-up (not reported)
            manifest = write_buckets(tiny, shm / "engine", v)
            files = [f["path"] for f in manifest["files"]]
            t0 = time.perf_counter()
            out = await engine.load_weights(files, v)
            if v > 1:
                times.append(time.perf_counter() - t0)
                reported.append(out["seconds"])
            shutil.rmtree(version_folder(shm / "engine", v))
    finally:
        engine.shutdown()
    return {"policy": "tiny-qwen2.5-vl", "dtype": cfg.model.dtype,
            "engine_start_s": round(engine.startup_seconds, 1),
            "tensors": out["tensors"], "load_weights_s": round(_med(times), 4),
            "load_weights_s_all": [round(x, 4) for x in times],
            "engine_reported_s": round(_med(reported), 4)}


def engine_skip_reason(device: str) -> str | None:
    import importlib.util

    if device != "cpu":
        return "the engine update is timed on the CPU build of vLLM only (vLLM is not on the GPU machine)"
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not importable here"
    return None


# --------------------------------------------------------------------------- main
def run(args) -> dict:
    device = args.device
    gpu = device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible")
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    from rollout.weight_transport import DEFAULT_BUCKET_BYTES, default_shm_root

    shapes = args.shape or (["tiny", "reduced"] if args.quick else ["tiny", "reduced", "qwen3-vl-2b"])
    shm = Path(tempfile.mkdtemp(prefix="bench_wsync_", dir=default_shm_root()))
    results: dict[str, dict] = {}
    engine = None
    try:
        for name in shapes:
            size = set_bytes(name)
            # Host copies held at once: the raw send + recv buffers and one set of files (ours or raw,
            # each deleted after its pass), plus source and destination on CPU runs.
            need = None if size is None else size * (3 if gpu else 5)
            avail = mem_available()
            if need and avail and need * 1.1 > avail:
                results[name] = {"skipped": f"needs ~{need / 2**30:.1f} GiB of host memory, "
                                            f"{avail / 2**30:.1f} GiB available"}
                print(f"{name}: skipped ({results[name]['skipped']})", flush=True)
                continue
            t0 = time.perf_counter()
            if name == "tiny":
                src, model_dir = tiny_tensors(device)
            else:
                src = synthetic_tensors(name, device)
            build_s = time.perf_counter() - t0
            total = sum(nbytes(t) for _, t in src)
            repeats = args.repeats or (20 if total < 64 << 20 else 3)  # tiny sets take milliseconds
            results[name] = bench_set(src, device, shm, repeats)
            results[name]["repeats"] = repeats
            results[name]["build_s"] = round(build_s, 2)
            r = results[name]
            o, w = r["ours"], r["raw"]
            print(f"{name}: {r['gb']} GB in {len(src)} tensors: ours {o['total_s']} s "
                  f"({o['total_gbps']} GB/s, sha256 {o['sha256_share_of_write']:.0%} of write), "
                  f"raw {w['total_s']} s ({w['total_gbps']} GB/s), "
                  f"ratio {r['ratio_ours_over_raw']['total']}", flush=True)
            if name == "tiny" and args.engine:
                reason = engine_skip_reason(device)
                if reason:
                    engine = {"skipped": reason}
                else:
                    engine = asyncio.run(_engine_updates([(n, t.cpu()) for n, t in src], model_dir, shm,
                                                         args.engine_repeats))
                    engine["bytes"] = total
                    engine["raw_read_s"] = r["raw"]["read_s"]
                    engine["raw_total_s"] = r["raw"]["total_s"]
                    engine["ratio_load_over_raw_read"] = round(
                        engine["load_weights_s"] / r["raw"]["read_s"], 2)
                    engine["ratio_write_plus_load_over_raw_total"] = round(
                        (r["ours"]["write_s"] + engine["load_weights_s"]) / r["raw"]["total_s"], 2)
                    print(f"engine load_weights {engine['load_weights_s']} s vs raw read "
                          f"{r['raw']['read_s']} s", flush=True)
            del src
            if gpu:
                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    out = {
        "config": {"device": device, "shapes": shapes, "bucket_bytes": DEFAULT_BUCKET_BYTES,
                   "shm_root": str(default_shm_root()), "synthetic_dtype": "bf16",
                   "raw_host_buffers": "pageable, like the .to('cpu') of write_buckets"},
        "results": results,
        "load_avg_1m_at_start": args.load_at_start,
        "note": "seconds are medians over the repeats; ratio = ours / raw (above 1: ours is slower). "
                "The engine keeps no sha256 check on read (read_manifest(verify=False)). Our read can beat "
                "the raw read: safe_open maps the file, so get_tensor's bytes come from the mapped pages, "
                "while the raw read first copies the file into its buffer with read(2).",
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
    }
    if args.engine:
        out["engine"] = engine or {"skipped": "the tiny shape was not run"}
    return out


def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny + reduced (~0.5 GB) only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", nargs="+", choices=["tiny", *SYNTHETIC], default=None)
    ap.add_argument("--repeats", type=int, default=None, help="default: 20 for sets under 64 MiB, else 3")
    ap.add_argument("--engine", action="store_true", help="also time the real vLLM engine update (CPU)")
    ap.add_argument("--engine-repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.load_at_start = os.getloadavg()[0]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # A SIGTERM (the suite's timeout) must still run the finally blocks that clear /dev/shm.
    signal.signal(signal.SIGTERM, _exit_on_term)
    result = run(args)
    name = "weight_sync_cuda" if args.device.startswith("cuda") else "weight_sync_cpu"
    path = write_result(name, result, args.out)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
