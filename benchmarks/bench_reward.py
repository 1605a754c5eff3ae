"""Benchmark of the SAM2 reward pool against sam2's own SAM2VideoPredictor, same frames, same weights.

    python -m benchmarks.bench_reward [--quick]                      # CPU, tiny SAM2 (256 px)
    python -m benchmarks.bench_reward --device cuda --config configs/sam2.1/sam2.1_hiera_l.yaml \\
        --image-size 1024 --bf16 [--batch-frames 32] [--checkpoint sam2.1_hiera_large.pt]

Frames: the DAVIS sequences in ../shared/test_data/davis16 (JPEG, 854x480, with masks), or, when
they are absent, synthetic JPEG videos of the same size. Without --checkpoint the model has random
weights, written once to .cache/videoseg/sam2_bench so both methods load the same ones.

Modes, all in one run on the same frames (each starts with an empty feature cache, and the time
includes reading the JPEGs):
- plain:      SAM2VideoPredictor per video: init_state, one click on the middle frame, propagate
              forward and backward; one object per video. The baseline.
- pool:       RewardPoolCore.predict: one [SEG] embedding per video on the middle frame, all
              videos propagated both ways as one batch (image encoder batched by --batch-frames).
- pool_group: the same with --group embeddings per video (a GRPO group's final predictions).
- score:      the RL reward path: per video one prompt with --group rollouts of 3 turns, 5
              sampled frames, a keyframe per turn; decode, IoU against ground truth, rewards.
- encoder:    the image encoder alone on preprocessed frames at batch --batch-frames.
"Frames scored per second" is masks produced (one per embedding and frame) per wall-clock second;
for `score` it is (turn, frame) masks judged against ground truth. Nothing is asserted.
Needs torch, numpy, pillow, sam2 (+ hydra-core, omegaconf, antlr4, iopath), pydantic, PyYAML;
not Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DAVIS = ROOT.parent / "shared" / "test_data" / "davis16"
HIDDEN = 1024  # width of the fake [SEG] hidden states (the pool projects them itself)


# ------------------------------------------------------------------------------- data
class Videos:
    """JPEG folders named 00000.jpg... (what SAM2VideoPredictor reads) plus ground truth."""

    def __init__(self, workdir: Path, count: int, max_frames: int | None, seed: int = 0):
        self.dirs: dict[str, Path] = {}
        self.gt: dict[str, np.ndarray] = {}
        self.source = "davis16" if (DAVIS / "JPEGImages" / "480p").is_dir() else "synthetic"
        rng = np.random.default_rng(seed)
        if self.source == "davis16":
            names = sorted(p.name for p in (DAVIS / "JPEGImages" / "480p").iterdir())
        else:
            names = [f"synthetic{i}" for i in range(count)]
        for name in names[:count]:
            out = workdir / name
            out.mkdir(parents=True)
            if self.source == "davis16":
                files = sorted((DAVIS / "JPEGImages" / "480p" / name).glob("*.jpg"))[:max_frames]
                for i, f in enumerate(files):
                    os.symlink(f, out / f"{i:05d}.jpg")
                annos = sorted((DAVIS / "Annotations" / "480p" / name).glob("*.png"))[:len(files)]
                self.gt[name] = np.stack([np.array(Image.open(a)) > 0 for a in annos])
            else:
                n = max_frames or 40
                gt = np.zeros((n, 480, 854), bool)
                for i in range(n):
                    img = rng.integers(0, 120, (480, 854, 3), dtype=np.uint8)
                    y, x = 100 + 2 * i, 200 + 5 * i
                    gt[i, y:y + 120, x:x + 160] = True
                    img[gt[i]] = (220, 50, 50)
                    Image.fromarray(img).save(out / f"{i:05d}.jpg", quality=90)
                self.gt[name] = gt
            self.dirs[name] = out

    def num_frames(self, name: str) -> int:
        return len(self.gt[name])

    def warmup_view(self, workdir: Path, frames: int = 4) -> "Videos":
        """The first few frames of the first video, in their own folder (for untimed warm-up)."""
        name = next(iter(self.dirs))
        view = Videos.__new__(Videos)
        out = workdir / f"warmup_{name}"
        out.mkdir(parents=True)
        for i in range(min(frames, self.num_frames(name))):
            os.symlink((self.dirs[name] / f"{i:05d}.jpg").resolve(), out / f"{i:05d}.jpg")
        view.dirs, view.gt, view.source = {name: out}, {name: self.gt[name][:frames]}, self.source
        return view

    def frame_source(self, dataset: str, video_id: str, indices: list[int]) -> list[np.ndarray]:
        # JPEG decoding releases the GIL: a few threads keep the GPU fed.
        def load(i):
            return np.array(Image.open(self.dirs[video_id] / f"{i:05d}.jpg").convert("RGB"))

        return list(_decoder_pool().map(load, indices))

    def gt_source(self, sample, indices: list[int]) -> np.ndarray:
        return self.gt[sample.video_id][list(indices)]


_POOL = None


def _decoder_pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    return _POOL


def make_sample(videos: Videos, name: str):
    from env.types import Sample

    gt = videos.gt[name]
    return Sample(f"bench/{name}/0", "bench", name, "0", "the object", (1,), ("1",), len(gt),
                  gt.shape[1], gt.shape[2], 0, tuple(bool(m.any()) for m in gt))


def episode(sample, turns: list[tuple[str, int, int, int]], sampled: list[int], eid: str):
    from env.types import Action, EpisodeState, TurnRecord

    n, seen, records = sample.num_frames, sample.num_frames // 2, []
    for kind, s, e, k in turns:
        act = Action(kind, s, e, k, "Step 1 Step 2 Step 3 Action", (True, True, True, True))
        records.append(TurnRecord("", act, None, (s, e, k), keyframe_seen=seen))
        seen = k
    return EpisodeState(sample, eid, [0, n - 1], sampled, records, True, "answer")


# ------------------------------------------------------------------------------ timing
class Timer:
    def __init__(self, device: str):
        self.device = device

    def sync(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.start
        on_gpu = self.device.startswith("cuda")
        self.peak_gib = torch.cuda.max_memory_allocated() / 2 ** 30 if on_gpu else None


def autocast(device: str, bf16: bool):
    from segmentation.sam2_models import autocast_context

    return autocast_context(device, bf16)()


# -------------------------------------------------------------------------------- modes
def run_plain(predictor, videos: Videos, names: list[str], device: str, bf16: bool) -> dict:
    produced = 0
    with torch.inference_mode(), autocast(device, bf16):
        for name in names:
            n = videos.num_frames(name)
            kf = n // 2
            ys, xs = np.nonzero(videos.gt[name][kf])
            point = [[float(xs.mean()), float(ys.mean())]] if len(xs) else [[427.0, 240.0]]
            state = predictor.init_state(video_path=str(videos.dirs[name]))
            predictor.add_new_points_or_box(state, frame_idx=kf, obj_id=1, points=np.array(point, np.float32),
                                            labels=np.array([1], np.int32))
            masks = {}
            for reverse in (False, True):
                for idx, _, logits in predictor.propagate_in_video(state, reverse=reverse):
                    masks[idx] = (logits[0, 0] > 0).cpu().numpy()
            produced += len(masks)
            predictor.reset_state(state)
    return {"masks": produced}


def seg_requests(videos: Videos, names: list[str], per_video: int, seed: int):
    from segmentation.types import ScoreRequest

    rng = np.random.default_rng(seed)
    reqs = []
    for name in names:
        sample = make_sample(videos, name)
        n = sample.num_frames
        for g in range(per_video):
            ep = episode(sample, [("answer", 0, n - 1, n // 2)], [n // 2], f"{name}-{g}")
            reqs.append(ScoreRequest(f"{name}/{g}", ep, [rng.normal(size=HIDDEN).astype(np.float32)]))
    return reqs


def run_pool(core, videos: Videos, names: list[str], per_video: int) -> dict:
    core.cache.clear()
    masks = core.predict(seg_requests(videos, names, per_video, seed=per_video))
    return {"masks": int(sum(m.shape[0] for m in masks)), "embeddings_per_video": per_video}


def rl_batch(videos: Videos, names: list[str], group: int, seed: int = 1):
    from segmentation.types import ScoreRequest

    rng = np.random.default_rng(seed)
    reqs = []
    for name in names:
        sample = make_sample(videos, name)
        n = sample.num_frames
        sampled = sorted({int(round(x)) for x in np.linspace(0, n - 1, 5)})
        for g in range(group):
            ks = rng.integers(0, n, 3).tolist()
            turns = [("select", 0, n - 1, ks[0]), ("select", max(ks[1] - 5, 0), min(ks[1] + 5, n - 1), ks[1]),
                     ("answer", 0, n - 1, ks[2])]
            hidden = [rng.normal(size=HIDDEN).astype(np.float32) for _ in turns]
            reqs.append(ScoreRequest(f"{name}/{g}", episode(sample, turns, sampled, f"{name}-{g}"), hidden))
    return reqs


def run_score(core, batch) -> dict:
    core.cache.clear()
    encoded0 = core.cache.stats.encoded
    results = core.score(batch)
    judged = sum(len(t.iou_vid) + 1 for r in results for t in r.turns if t.has_seg)
    return {"masks": judged, "trajectories": len(results),
            "frames_encoded": core.cache.stats.encoded - encoded0}


def run_encoder(model, videos: Videos, names: list[str], batch_frames: int, device: str, bf16: bool,
                timer: Timer) -> dict:
    from segmentation.features import encode_images, preprocess_frames

    frames = []
    for name in names:
        frames += videos.frame_source("bench", name, list(range(min(videos.num_frames(name), batch_frames))))
    frames = (frames * (1 + (2 * batch_frames) // max(len(frames), 1)))[:2 * batch_frames]
    batches = [preprocess_frames(frames[i:i + batch_frames], model.image_size, device)
               for i in range(0, len(frames), batch_frames)]
    with torch.no_grad(), autocast(device, bf16):
        encode_images(model, batches[0][:2])  # warm-up
        with timer as t:
            for b in batches:
                encode_images(model, b)
    return {"frames": len(frames), "seconds": t.seconds, "frames_per_s": len(frames) / t.seconds,
            "peak_gpu_gib": t.peak_gib}


# --------------------------------------------------------------------------------- main
def machine_info(device: str) -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sam2

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_model": model,
            "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
            "sam2": getattr(sam2, "__version__", "1.1.0")}
    if device.startswith("cuda"):
        info.update({"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                     "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2 ** 30})
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_reward", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 short videos (about a minute on CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="tiny",
                    help="'tiny' or a sam2 config such as configs/sam2.1/sam2.1_hiera_l.yaml")
    ap.add_argument("--image-size", type=int, default=None, help="default: 256 for tiny, else the config's")
    ap.add_argument("--checkpoint", default=None, help="SAM2 .pt; default: shared random weights")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    ap.add_argument("--batch-frames", type=int, default=32, help="image-encoder batch of the pool")
    ap.add_argument("--videos", type=int, default=5)
    ap.add_argument("--frames", type=int, default=None, help="at most this many frames per video")
    ap.add_argument("--group", type=int, default=4, help="embeddings per video in pool_group / score")
    ap.add_argument("--modes", nargs="*", default=["plain", "pool", "pool_group", "score", "encoder"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="default benchmarks/results/reward_<device>.json")
    args = ap.parse_args(argv)
    load_at_start = os.getloadavg()[0]  # other work on the machine skews CPU numbers
    if args.quick:
        args.videos, args.frames = min(args.videos, 2), min(args.frames or 12, 12)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    image_size = args.image_size or (256 if args.config == "tiny" else None)

    from configs.schema import ModelConfig, RewardConfig
    from segmentation.reward_pool import RewardPoolCore
    from segmentation.sam2_models import (build_video_predictor, load_model_config,
                                          materialize_random_checkpoint)

    image_size = image_size or int(load_model_config(args.config).model.image_size)
    ckpt = Path(args.checkpoint) if args.checkpoint else materialize_random_checkpoint(
        args.config, image_size, ROOT / ".cache" / "videoseg" / "sam2_bench")
    workdir = Path(tempfile.mkdtemp(prefix="bench_reward_"))
    try:
        videos = Videos(workdir, args.videos, args.frames)
        names = list(videos.dirs)
        model_cfg = ModelConfig(sam2_config=args.config, sam2_checkpoint=ckpt, sam2_image_size=image_size,
                                dtype="bf16" if args.bf16 else "fp32", allow_random_init=True)
        reward_cfg = RewardConfig(batch_frames=args.batch_frames, feature_cache_frames=4096)
        core = RewardPoolCore(model_cfg, reward_cfg, HIDDEN, frame_source=videos.frame_source,
                              gt_source=videos.gt_source, device=device)
        predictor = None
        if "plain" in args.modes:
            predictor = build_video_predictor(args.config, ckpt, image_size, device)
        timer = Timer(device)
        short = videos.warmup_view(workdir)
        warm = list(short.dirs)
        results: dict[str, dict] = {}
        for mode in args.modes:
            if mode == "encoder":
                results[mode] = run_encoder(core.model, videos, names, args.batch_frames, device, args.bf16,
                                            timer)
                print(f"{mode:>10}: {results[mode]['frames_per_s']:8.2f} frames/s", flush=True)
                continue
            if mode == "plain":
                run_plain(predictor, short, warm, device, args.bf16)
                job = lambda: run_plain(predictor, videos, names, device, args.bf16)  # noqa: E731
            elif mode == "pool":
                run_pool(core, short, warm, 1)
                job = lambda: run_pool(core, videos, names, 1)  # noqa: E731
            elif mode == "pool_group":
                job = lambda: run_pool(core, videos, names, args.group)  # noqa: E731
            elif mode == "score":
                run_score(core, rl_batch(short, warm, 1))
                batch = rl_batch(videos, names, args.group)
                job = lambda: run_score(core, batch)  # noqa: E731
            else:
                print(f"error: unknown mode {mode}", file=sys.stderr)
                return 2
            with timer as t:
                out = job()
            out.update({"seconds": t.seconds, "frames_scored_per_s": out["masks"] / t.seconds,
                        "peak_gpu_gib": t.peak_gib})
            results[mode] = out
            print(f"{mode:>10}: {out['frames_scored_per_s']:8.2f} frames scored/s ({out['masks']} masks, "
                  f"{t.seconds:.1f} s)", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "command": "python -m benchmarks.bench_reward " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": dict(machine_info(device), load_avg_1m_at_start=load_at_start),
        "setup": {"device": device, "config": args.config, "image_size": image_size, "bf16": args.bf16,
                  "checkpoint": str(args.checkpoint) if args.checkpoint else "random (shared file)",
                  "batch_frames": args.batch_frames, "frames_source": videos.source, "videos": len(names),
                  "frames": {n: videos.num_frames(n) for n in names}, "group": args.group},
        "results": results,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
    }
    if "plain" in results and "pool" in results:
        report["pool_vs_plain_speedup"] = (results["pool"]["frames_scored_per_s"]
                                           / results["plain"]["frames_scored_per_s"])
    default_out = ROOT / "benchmarks" / "results" / f"reward_{device.split(':')[0]}.json"
    out = Path(args.out) if args.out else default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
