"""Learner benchmark: GRPO train-step throughput and MFU of the full policy, through LearnerCore.

    python -m benchmarks.bench_learner --quick                        # CPU, tiny policy
    python -m benchmarks.bench_learner --device cuda --shape qwen3-vl-2b --seqs 16 --seq-len 4096
    python -m benchmarks.bench_learner --quick --vision-attention both  # batched vs per-block attention
    python -m benchmarks.bench_learner --quick --compile-blocks both --warmup 2  # compiled blocks vs eager
    python -m benchmarks.bench_learner --quick --head-chunk-tokens both  # whole vs chunked LM head

What runs is the production path (`learner.core.LearnerCore.train`): DeepSpeed ZeRO-2, bf16 on GPU,
gradient checkpointing, the policy-gradient term with truncated IS, k3 KL against reference
log-probs, SEG-aware calibration and the auxiliary BCE+Dice mask loss decoded by SAM2's prompt
encoder and mask decoder on cached image features. Inputs are synthetic but shaped like real
episodes: per sequence, images of the RL budgets (10 low-res + 5 high-res frames, then 2 replies
of 5 low-res frames and a keyframe), 3 assistant turns with a [SEG] each, ~20% of tokens sampled.

"Qwen3-VL-2B shapes" (random weights): text hidden 2048, 28 layers, 16 heads (8 KV, head dim
128), MLP 6144, vocab 151936, untied lm_head; vision depth 24, width 1024, MLP 4096, patch 16,
out 2048. SAM2 Hiera-L prompt encoder + mask decoder at 1024 px.

MFU counts model FLOPs (no recomputation): 3 x forward FLOPs of the LM body on every token, the
lm_head only where log-probs are taken (sampled tokens), causal attention, the vision tower on
its patches. It is reported against the H200's dense BF16 peak (989 TFLOP/s) and against a bf16
GEMM measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import peak_rss_mb, write_result

SHAPES = {
    "qwen3-vl-2b": {
        "text": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936),
        "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                       patch_size=16, deepstack_visual_indexes=[5, 11, 17], num_position_embeddings=2304),
        "sam2": ("configs/sam2.1/sam2.1_hiera_l.yaml", 1024),
    },
}
H200_BF16_PEAK = 989.4e12
QWEN_UNIT = 28 * 28


def _policy_dir(shape: str, workdir: Path) -> Path:
    """A policy directory: the tiny Qwen3-VL itself, or random weights of a real shape saved with
    the tiny tokenizer/processor (only the special-token ids have to agree)."""
    from rollout.tiny_policy import build_tiny_policy

    tiny = build_tiny_policy("qwen3-vl", workdir / "cache")
    if shape == "tiny":
        return tiny
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    spec = SHAPES[shape]
    base = json.loads((tiny / "config.json").read_text())
    text = dict(base["text_config"], **spec["text"], tie_word_embeddings=False)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                               "mrope_interleaved": True}
    vision = dict(base["vision_config"], **spec["vision"])
    conf = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                         **{k: base[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                 "vision_end_token_id")})
    out = workdir / f"policy_{shape}"
    if not (out / "config.json").exists():
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = Qwen3VLForConditionalGeneration(conf).to(torch.bfloat16)
        model.save_pretrained(out)
        del model
        for f in tiny.iterdir():
            if f.is_file() and not f.name.startswith(("config", "model")):
                shutil.copy2(f, out / f.name)
    return out


def _synthetic_batch(n_seqs: int, seq_len: int, proc, tok, image_size_fn, sam_size: int, rng):
    """Trajectories + ScoreResults + the frames/features/GT their fetchers return."""
    from env.types import FrameRef, Sample, TurnRecord
    from rollout.trajectory import Trajectory, TurnTrace
    from segmentation.types import ScoreResult, TurnScore

    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    vs, ve = tok.convert_tokens_to_ids("<|vision_start|>"), tok.convert_tokens_to_ids("<|vision_end|>")
    seg = tok.convert_tokens_to_ids("[SEG]")
    text_vocab = min(900, len(tok) - 10)
    budgets = [32 * QWEN_UNIT] * 10 + [128 * QWEN_UNIT] * 5
    turns_images = [budgets, [32 * QWEN_UNIT] * 5 + [256 * QWEN_UNIT], [32 * QWEN_UNIT] * 5 + [256 * QWEN_UNIT]]
    images, trajs, results, feats = {}, [], [], {}
    low = sam_size // 4
    sample = Sample("bench/v/0", "bench", "v", "0", "q", (1,), ("1",), 100, 480, 854, 0, tuple([True] * 100))
    for s in range(n_seqs):
        ids, mask, frames, traces = [], [], [], []
        per_turn_text = max(64, (seq_len - 3 * 400) // 6)
        group = s // 4  # GRPO groups of 4 share their turn-0 frames; later turns see other frames
        for k, budgets_k in enumerate(turns_images):
            ids += list(rng.integers(10, text_vocab, per_turn_text))
            for b in budgets_k:
                video = f"v{group}" if k == 0 else f"v{group}_traj{s}"
                ref = FrameRef("bench", video, len(frames), b)
                h, w = image_size_fn(b)
                images.setdefault(ref.key, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
                frames.append(ref)
                n = proc.image_token_count(h, w)
                ids += [vs] + [pad] * n + [ve]
            start = len(ids)
            body = list(rng.integers(10, text_vocab, per_turn_text))
            body[len(body) // 2] = seg
            ids += body
            traces.append(TurnTrace(start, start + len(body), start + len(body) // 2, 1, 50, len(frames), 0, 0,
                                    start, "stop", 0.0, TurnRecord("", None, None)))
        mask = [0] * len(ids)
        for t in traces:
            mask[t.start:t.end] = [1] * (t.end - t.start)
        lps = [float(-rng.uniform(0.1, 3)) if m else 0.0 for m in mask]
        trajs.append(Trajectory(f"b{s}", sample, s % 4, ids, mask, lps, frames, traces, list(range(5)),
                                list(range(10)), "answer", traces[0].start))
        tscores = []
        for k in range(3):
            key = f"kf{s}_{k}"
            feats[key] = _features(sam_size, rng)
            tscores.append(TurnScore(50, True, 0.5, False, [0.5] * 5, rng.random((low, low)) > 0.5, key))
        skeys = [f"sf{s}_{i}" for i in range(5)]
        for key in skeys:
            feats[key] = _features(sam_size, rng)
        results.append(ScoreResult(f"b{s}", {}, 0.0, tscores, list(range(5)), skeys,
                                   {k: k for k in [t.keyframe_feature for t in tscores] + skeys}))
    return trajs, results, images, feats


def _features(sam_size: int, rng) -> dict:
    s = sam_size // 16
    dt = np.float16
    return {"image_embed": rng.standard_normal((1, 256, s, s)).astype(dt),
            "high_res_s0": rng.standard_normal((1, 256, 4 * s, 4 * s)).astype(dt),
            "high_res_s1": rng.standard_normal((1, 256, 2 * s, 2 * s)).astype(dt)}


def _model_flops(lm_conf, vis_conf, trajs, grids, merge: int) -> float:
    """Forward+backward model FLOPs of one train step (3 x forward; recomputation not counted)."""
    d, L = lm_conf.hidden_size, lm_conf.num_hidden_layers
    h, kv, hd, ffn = lm_conf.num_attention_heads, lm_conf.num_key_value_heads, lm_conf.head_dim, lm_conf.intermediate_size
    body = L * (d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * ffn)
    fwd = 0.0
    for t in trajs:
        T = len(t.token_ids)
        fwd += 2 * body * T + 2 * lm_conf.vocab_size * d * sum(t.loss_mask)
        fwd += L * 2 * T * T * h * hd  # QK^T and AV, causal half of 2*2*T^2*h*hd
    dv, Lv, fv = vis_conf.hidden_size, vis_conf.depth, vis_conf.intermediate_size
    vbody = Lv * (4 * dv * dv + 2 * dv * fv)
    for g in grids:
        p = int(g.prod())
        fwd += 2 * vbody * p + Lv * 4 * p * p * dv
    return 3 * fwd


def _gemm_peak(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    n = 20
    for _ in range(n):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * n / (time.perf_counter() - t)


def run(args) -> dict:
    from configs import load_config
    from learner.core import BatchTotals, LearnerCore, TrainItem, distributed_env
    from rollout.processor_config import image_token_count
    from transformers import AutoProcessor

    device = args.device
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shape = "tiny" if args.quick and args.shape == "qwen3-vl-2b" and not device.startswith("cuda") else args.shape
    policy_dir = _policy_dir(shape, workdir)
    sam_cfg, sam_size = SHAPES.get(shape, {}).get("sam2", ("tiny", 256))
    gpu = device.startswith("cuda")
    bf16 = gpu or args.bf16
    overrides = [
        f"model.cache_dir={workdir / 'cache'}", f"model.sam2_config={sam_cfg}", f"model.sam2_image_size={sam_size}",
        "model.allow_random_init=true", f"model.dtype={'bf16' if bf16 else 'fp32'}",
        f"learner.precision={'bf16' if bf16 else 'fp32'}", f"learner.zero_stage={args.zero}",
        f"learner.gradient_checkpointing={'true' if gpu and not args.no_gc else 'false'}",
        f"learner.calibration={'false' if args.no_calibration else 'true'}",
        f"learner.micro_batch_tokens={args.micro_batch_tokens}", "learner.kl_coef=0.04",
        f"learner.compile_blocks={'true' if args.compile_blocks == 'on' else 'false'}",
        f"learner.checkpoint_fraction={args.checkpoint_fraction}", f"learner.head_chunk_tokens={args.head_chunk_tokens}",
        "learner.reference_policy=none", "learner.lr=1e-6", f"model.vision_attention={args.vision_attention}",
    ]
    cfg = load_config("debug_cpu", overrides)
    distributed_env(0, 1, "127.0.0.1", 29700 + os.getpid() % 200)
    proc = AutoProcessor.from_pretrained(str(policy_dir))
    tok = proc.tokenizer

    class Counter:  # image sizes under each budget, and their token counts
        @staticmethod
        def image_token_count(h, w):
            return image_token_count(h, w, "qwen3-vl")

    from env.video import budget_shape

    rng = np.random.default_rng(0)
    seqs = 2 if args.quick and not gpu else args.seqs
    seq_len = 1536 if args.quick and not gpu else args.seq_len
    trajs, results, images, feats = _synthetic_batch(seqs, seq_len, Counter, tok,
                                                     lambda b: budget_shape(480, 854, b), sam_size, rng)
    gts = {}

    def gt_fetcher(sample, frames):
        key = tuple(frames)
        if key not in gts:
            gts[key] = np.random.default_rng(len(key)).random((len(frames), 480, 854)) > 0.5
        return gts[key]

    core = LearnerCore(cfg, policy_dir, device=device, frame_fetcher=lambda refs: [images[r.key] for r in refs],
                       feature_fetcher=lambda key: feats[key], gt_fetcher=gt_fetcher)
    items = [TrainItem(t, float(rng.standard_normal()), [lp for lp, m in zip(t.logprobs, t.loss_mask) if m],
                       [lp - 0.01 for lp, m in zip(t.logprobs, t.loss_mask) if m], r) for t, r in zip(trajs, results)]
    totals = BatchTotals(len(items), sum(t.num_generated for t in trajs), 512 * 3, 18 * len(items))
    # Vision FLOPs count each distinct frame of a group once: that is all the model needs (the
    # learner encodes a frame shared by a group's rollouts once when they share a micro-batch).
    grids, seen = [], set()
    for t in trajs:
        for r in t.frames:
            if r.key in seen:
                continue
            seen.add(r.key)
            mm = core.collator.image_processor(images=[images[r.key]], return_tensors="pt")
            grids += list(mm["image_grid_thw"])
    lm_conf = core.module.lm.config.text_config
    vis_conf = core.module.lm.config.vision_config
    flops = _model_flops(lm_conf, vis_conf, trajs, grids, 2)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    core.sync_timing = True
    warm_t0 = time.perf_counter()
    for _ in range(args.warmup):  # allocations, autotuning, and with compile_blocks the compiles
        core.train(items, totals)
    sync()
    warmup_s = time.perf_counter() - warm_t0
    times = []
    steps = 1 if args.quick and not gpu else args.steps
    for _ in range(steps):
        t0 = time.perf_counter()
        stats = core.train(items, totals)
        sync()
        times.append(time.perf_counter() - t0)
    profile = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        with torch_profile(activities=acts) as prof:
            core.train(items, totals)
            sync()
        key = "self_cuda_time_total" if gpu else "self_cpu_time_total"
        averages = prof.key_averages()
        table = averages.table(sort_by=key, row_limit=40)
        # The CPU-sorted table shows what keeps the GPU waiting when the step is launch bound.
        cpu_table = averages.table(sort_by="self_cpu_time_total", row_limit=40) if gpu else ""
        (Path(args.out).with_suffix(".profile.txt") if args.out else Path("learner_profile.txt")).write_text(
            table + ("\n\nSorted by self CPU time:\n" + cpu_table if cpu_table else ""))
        profile = table.splitlines()[:45]
    syncs = None
    if args.sync_report:
        from benchmarks.sync_sites import count_sync_sites

        syncs = count_sync_sites(lambda: core.train(items, totals))
        if args.out:
            Path(args.out).with_suffix(".syncs.json").write_text(json.dumps(syncs, indent=1))
    step_s = float(np.median(times))
    tokens = sum(len(t.token_ids) for t in trajs)
    achieved = flops / step_s
    gemm = _gemm_peak(device)
    n_params = sum(p.numel() for p in core.module.parameters())
    return {
        "config": {"shape": shape, "device": device, "sequences": len(trajs), "tokens_per_step": tokens,
                   "sampled_tokens": sum(t.num_generated for t in trajs), "images_per_seq": len(trajs[0].frames),
                   "zero_stage": args.zero, "precision": cfg.learner.precision,
                   "gradient_checkpointing": cfg.learner.gradient_checkpointing,
                   "calibration": cfg.learner.calibration, "aux_mask_loss": cfg.learner.aux_mask_weight,
                   "micro_batch_tokens": cfg.learner.micro_batch_tokens, "params": n_params,
                   "sam2": f"{sam_cfg}@{sam_size}", "distinct_frames": len(seen),
                   "frame_slots": sum(len(t.frames) for t in trajs),
                   "vision_attention": cfg.model.vision_attention, "compile_blocks": cfg.learner.compile_blocks,
                   "checkpoint_fraction": cfg.learner.checkpoint_fraction,
                   "head_chunk_tokens": cfg.learner.head_chunk_tokens},
        "warmup_steps": args.warmup, "warmup_seconds": round(warmup_s, 2),
        "step_seconds_median": round(step_s, 4),
        "step_seconds_all": [round(x, 4) for x in times],
        "tokens_per_s": round(tokens / step_s, 1),
        "model_tflops_per_step": round(flops / 1e12, 3),
        "achieved_tflops": round(achieved / 1e12, 2),
        "mfu_vs_h200_bf16_peak": round(achieved / H200_BF16_PEAK, 4) if gpu else None,
        "measured_gemm_tflops": round(gemm / 1e12, 1) if gemm else None,
        "mfu_vs_measured_gemm": round(achieved / gemm, 4) if gemm else None,
        "goal_mfu": 0.45, "anchor": "plain 1.7B Qwen2 text model, ZeRO-2 + GC: ~42% MFU on one H200",
        "last_step_stats": {k: round(v, 5) for k, v in stats.items()},
        "phase_seconds": {k: round(v, 3) for k, v in stats.items() if k.startswith("t_")},
        "profile_top": profile,
        "host_syncs_per_step": syncs["total"] if syncs else None,
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
        "peak_rss_mb": peak_rss_mb(),
    }


def _drop_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def compare_settings(argv: list[str], option: str, baseline: str, candidate: str) -> dict:
    """Run the benchmark once with `option baseline` and once with `option candidate`, each in a
    fresh process (so neither inherits the other's allocator state or compile caches), and report the
    candidate with the baseline's figures and the speedup beside it."""
    import tempfile

    base = _drop_option(_drop_option(list(argv), option), "--out")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for value in (baseline, candidate):
            out = Path(tmp) / f"{value}.json"
            subprocess.run([sys.executable, "-m", "benchmarks.bench_learner", *base, option, value,
                            "--out", str(out)], check=True)
            runs[value] = json.loads(out.read_text())
    result = {k: v for k, v in runs[candidate].items() if k not in ("benchmark", "command", "timestamp", "machine")}
    result[f"baseline_{baseline}"] = {k: runs[baseline][k] for k in
                                      ("step_seconds_median", "step_seconds_all", "tokens_per_s", "achieved_tflops",
                                       "mfu_vs_h200_bf16_peak", "phase_seconds", "peak_gpu_mem_gb", "warmup_seconds")}
    result[f"speedup_vs_{baseline}"] = round(runs[baseline]["step_seconds_median"]
                                             / runs[candidate]["step_seconds_median"], 3)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", default="qwen3-vl-2b", choices=["tiny", *SHAPES])
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--zero", type=int, default=2, choices=[1, 2, 3])
    ap.add_argument("--micro-batch-tokens", type=int, default=65536)
    ap.add_argument("--no-calibration", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="bf16 on CPU too (checks the mixed-precision path)")
    ap.add_argument("--profile", action="store_true", help="also profile one step (torch.profiler table)")
    ap.add_argument("--sync-report", action="store_true",
                    help="CUDA: also run one step under sync debugging and count host syncs by call site")
    ap.add_argument("--no-gc", action="store_true", help="no gradient checkpointing (more memory, no recompute)")
    ap.add_argument("--vision-attention", default="batched", choices=["batched", "per_block", "both"],
                    help="'both' measures per_block (baseline) then batched, each in its own process, "
                    "and reports the ratio")
    ap.add_argument("--compile-blocks", default="off", choices=["off", "on", "both"],
                    help="learner.compile_blocks; 'both' measures off (baseline) then on, each in its own process")
    ap.add_argument("--checkpoint-fraction", type=float, default=1.0,
                    help="learner.checkpoint_fraction: blocks that recompute in the backward pass (the rest keep "
                    "their activations)")
    ap.add_argument("--head-chunk-tokens", default="4096",
                    help="learner.head_chunk_tokens (0: the LM head on all scored tokens at once); 'both' "
                    "measures 0 (baseline) then 4096, each in its own process")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (compiles happen there)")
    ap.add_argument("--workdir", default=".cache/bench_learner")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(".cache/torch_extensions"))
    argv = argv if argv is not None else sys.argv[1:]
    compared = [args.vision_attention == "both", args.compile_blocks == "both", args.head_chunk_tokens == "both"]
    if sum(compared) > 1:
        ap.error("compare one setting at a time: --vision-attention, --compile-blocks or --head-chunk-tokens both")
    if args.sync_report and not args.device.startswith("cuda"):
        ap.error("--sync-report counts CUDA host syncs; it needs --device cuda")
    if args.head_chunk_tokens != "both" and not args.head_chunk_tokens.isdigit():
        ap.error(f"--head-chunk-tokens takes a count >= 0 or 'both', got {args.head_chunk_tokens!r}")
    if args.head_chunk_tokens == "both":
        result = compare_settings(argv, "--head-chunk-tokens", "0", "4096")
    elif args.vision_attention == "both":
        result = compare_settings(argv, "--vision-attention", "per_block", "batched")
    elif args.compile_blocks == "both":
        result = compare_settings(argv, "--compile-blocks", "off", "on")
    else:
        result = run(args)
    name = "learner_cuda" if args.device.startswith("cuda") else "learner_cpu"
    path = write_result(name, result, args.out)
    print(json.dumps({k: result[k] for k in ("tokens_per_s", "achieved_tflops", "mfu_vs_h200_bf16_peak",
                                             "mfu_vs_measured_gemm", "step_seconds_median")}), "->", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
