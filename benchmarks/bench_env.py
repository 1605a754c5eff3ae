"""Benchmark of the video environment: frames served per second and select-reply latency.

    python -m benchmarks.bench_env [--quick] [--out benchmarks/results/env.json]

Workload: one episode per source video is reset, then a fixed, seeded list of `<select>` turns
(random interval and keyframe) is answered, each reply holding up to 5 low-res frames of the
interval plus the keyframe in high resolution (the paper's RL budgets). Sources: the real
H.264 clip ../shared/test_data/videos/bedroom.mp4 (200 frames, 960x540, a single keyframe, so
random access is expensive) and a real DAVIS JPEG folder (dog, 60 frames, 854x480).

Modes, all measured in the same run on the same requests:
- naive:  per request, open the video with decord (or read the JPEGs), decode the needed frames,
          resize; no reuse. The baseline the cache has to beat.
- cold:   the env (EpisodeLogic.step) with an empty in-process LRU.
- lru:    the same requests again: every frame comes from the in-process LRU.
- redis:  a fresh env (empty LRU, as a second replica would be) reading what the cold pass wrote
          to a real redis-server started here (and stopped by its pid afterwards).
Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = ROOT.parent / "shared" / "test_data"


# --------------------------------------------------------------------------- setup
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: Path, password: str):
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    port = _free_port()
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--requirepass", password,
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    for _ in range(200):
        try:
            if client.ping():
                return proc, f"redis://127.0.0.1:{port}/0"
        except redis.exceptions.RedisError:
            time.sleep(0.05)
    stop_redis(proc)
    return None


def stop_redis(proc) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def make_sources(tmp: Path) -> dict[str, Path]:
    """Two ReVOS-layout roots (no masks needed): the mp4 clip and a DAVIS frame folder."""
    roots = {}
    mp4 = TEST_DATA / "videos" / "bedroom.mp4"
    if mp4.is_file():
        import decord

        n = len(decord.VideoReader(str(mp4), num_threads=1))
        root = tmp / "mp4"
        (root / "JPEGImages").mkdir(parents=True)
        (root / "JPEGImages" / "bedroom.mp4").symlink_to(mp4)
        _write_meta(root, "bedroom", [f"{i:05d}" for i in range(n)], "the bed")
        roots["mp4"] = root
    davis = TEST_DATA / "davis16" / "JPEGImages" / "480p" / "dog"
    if davis.is_dir():
        root = tmp / "jpeg"
        (root / "JPEGImages").mkdir(parents=True)
        (root / "JPEGImages" / "dog").symlink_to(davis, target_is_directory=True)
        _write_meta(root, "dog", sorted(p.stem for p in davis.glob("*.jpg")), "the dog")
        roots["jpeg"] = root
    return roots


def _write_meta(root: Path, vid: str, frames: list[str], exp: str) -> None:
    meta = {"videos": {vid: {"frames": frames, "expressions": {"0": {"exp": exp}}}}}
    (root / "meta_expressions.json").write_text(json.dumps(meta))


def make_requests(num_frames: int, count: int, seed: int) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        length = rng.randint(1, max(1, num_frames // 2))
        start = rng.randint(0, num_frames - length)
        end = start + length - 1
        out.append((start, end, rng.randint(start, end)))
    return out


# ------------------------------------------------------------------------- measuring
def _summary(latencies: list[float], frames: int) -> dict:
    lat = np.array(latencies) * 1000
    total = float(np.sum(latencies))
    return {"requests": len(latencies), "frames": frames, "seconds": round(total, 4),
            "frames_per_s": round(frames / total, 1) if total > 0 else None,
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "mean_ms": round(float(lat.mean()), 3)}


def run_naive(video_path: Path, requests, cfg) -> dict:
    """Per request: open, decode, resize, with no state kept between requests."""
    import cv2

    from env.observations import interval_indices
    from env.video import resize_to_budget

    latencies, frames = [], 0
    for s, e, k in requests:
        t0 = time.perf_counter()
        shown = interval_indices(s, e, cfg.select_reply_frames)
        wanted = sorted(set(shown + [k]))
        if video_path.is_dir():
            files = sorted(video_path.glob("*.jpg"))
            decoded = {i: cv2.cvtColor(cv2.imread(str(files[i])), cv2.COLOR_BGR2RGB) for i in wanted}
        else:
            import decord

            reader = decord.VideoReader(str(video_path), ctx=decord.cpu(0), num_threads=1)
            batch = reader.get_batch(wanted).asnumpy()
            decoded = dict(zip(wanted, batch))
        images = [resize_to_budget(decoded[i], cfg.low_res_pixels) for i in shown]
        images.append(resize_to_budget(decoded[k], cfg.keyframe_pixels))
        latencies.append(time.perf_counter() - t0)
        frames += len(images)
    return _summary(latencies, frames)


def run_env(logic, state, requests) -> dict:
    """EpisodeLogic.step on a turn-1 state: parse, clamp, fetch frames, build the reply."""
    from env.protocol import format_turn

    think = "Step 1 a. Step 2 b. Step 3 c. Action: look"
    texts = [format_turn(think, "select", s, e, k) for s, e, k in requests]
    latencies, frames = [], 0
    for text in texts:
        t0 = time.perf_counter()
        res = logic.step(state, text)
        latencies.append(time.perf_counter() - t0)
        frames += len(res.observation.frames)
    return _summary(latencies, frames)


def bench_source(name: str, root: Path, cfg, requests_count: int, redis_url: str | None, seed: int) -> dict:
    from configs.schema import DatasetSpec
    from env.datasets import load_dataset
    from env.episode import EpisodeLogic
    from env.frame_cache import LRUFrameCache, TieredFrameCache, make_frame_cache
    from env.frames import FrameServer

    ds = load_dataset(DatasetSpec(name=f"bench-{name}", format="revos", root=root))
    sample = ds.samples()[0]
    requests = make_requests(sample.num_frames, requests_count, seed)
    video_path = ds.video_path(sample.video_id)
    out: dict = {"video": str(video_path.resolve()), "num_frames": sample.num_frames,
                 "frame_size": list(ds.frame_size(sample.video_id)), "requests": requests_count}
    out["naive"] = run_naive(video_path, requests, cfg)

    def fresh_logic(cache):
        return EpisodeLogic(cfg, {ds.name: ds}, FrameServer({ds.name: ds}, cache))

    if redis_url:
        cache_cfg = cfg.frame_cache.model_copy(update={"backend": "redis", "redis_url": redis_url,
                                                       "key_prefix": f"bench:{os.getpid()}:{name}:"})
        cold_cache = make_frame_cache(cache_cfg)
    else:
        cold_cache = LRUFrameCache(cfg.frame_cache.capacity_mb << 20)
    logic = fresh_logic(cold_cache)
    t0 = time.perf_counter()
    state = logic.reset(sample, "bench").state
    out["reset_cold_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    out["cold"] = run_env(logic, state, requests)
    out["lru"] = run_env(logic, state, requests)
    t0 = time.perf_counter()
    logic.reset(sample, "bench-2")
    out["reset_lru_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    out["cold_decoded_frames"] = logic.frames.stats()["frames_decoded"]
    if redis_url:
        second_cache = make_frame_cache(cache_cfg)
        assert isinstance(second_cache, TieredFrameCache)
        second = fresh_logic(second_cache)  # a second replica: empty LRU, shared Redis
        out["redis"] = run_env(second, state, requests)
        stats = second.frames.stats()
        out["redis"]["decoded_frames"] = stats["frames_decoded"]
        out["redis"]["redis_hits"] = stats["redis_hits"]
    for mode in ("cold", "lru", "redis"):
        if mode in out and out["naive"]["p50_ms"]:
            speedup = out["naive"]["p50_ms"] / max(out[mode]["p50_ms"], 1e-6)
            out[mode]["p50_speedup_vs_naive"] = round(speedup, 1)
    return out


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import decord

    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_model": model,
            "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "decord": decord.__version__,
            "numpy": np.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests (about 20 s)")
    ap.add_argument("--requests", type=int, default=None, help="select requests per source")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "env.json"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from configs.schema import EnvConfig

    cfg = EnvConfig()  # the paper's RL budgets: 5 reply frames at 32*28*28, keyframe at 256*28*28
    count = args.requests or (8 if args.quick else 40)
    with tempfile.TemporaryDirectory(prefix="bench_env_") as tmp:
        tmp = Path(tmp)
        roots = make_sources(tmp)
        if not roots:
            print(f"no test data under {TEST_DATA}; nothing to benchmark", file=sys.stderr)
            return 1
        redis = None if args.no_redis else start_redis(tmp, "bench-secret")
        if redis:  # the frame cache reads the password from the variable the config names
            os.environ[cfg.frame_cache.redis_password_env] = "bench-secret"
        try:
            results = {name: bench_source(name, root, cfg, count, redis[1] if redis else None, args.seed)
                       for name, root in roots.items()}
        finally:
            if redis:
                stop_redis(redis[0])
    command = "python -m benchmarks.bench_env " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"benchmark": "env", "command": command.strip(),
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
              "config": {"select_reply_frames": cfg.select_reply_frames, "low_res_pixels": cfg.low_res_pixels,
                         "keyframe_pixels": cfg.keyframe_pixels, "requests_per_source": count,
                         "redis": bool(redis)},
              "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in results.items():
        line = [f"{name:5s} naive {r['naive']['frames_per_s']:>8} fr/s p50 {r['naive']['p50_ms']:>8} ms"]
        for mode in ("cold", "lru", "redis"):
            if mode in r:
                line.append(f"{mode} {r[mode]['frames_per_s']:>9} fr/s p50 {r[mode]['p50_ms']:>7} ms "
                            f"p99 {r[mode]['p99_ms']:>7} ms")
        print(" | ".join(line))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
