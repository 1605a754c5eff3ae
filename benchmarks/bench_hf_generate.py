"""Rollout context figure where vLLM cannot run (the GPU machine): plain HF `generate`.

    python -m benchmarks.bench_hf_generate --device cuda --shape qwen3-vl-2b --batch 64 --new-tokens 256

A batch of turn-0 prompts shaped like the RL episodes (system prompt, 10 low-res + 5 high-res
frames of a 480x854 video at the paper's budgets, the query) is sampled with temperature 0.9 /
top-p 0.9 for a fixed number of new tokens. Reported: generated tokens/s and prefill/decode time.
This is the reference implementation's way of generating (HF generate inside the trainer); the
project's rollout path is vLLM, measured on CPU in bench_rollout. Known anchor on one H200: about
833 tokens/s at batch 64 for a 1.7B model.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import peak_rss_mb, write_result

QWEN_UNIT = 28 * 28


def run(args) -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from benchmarks.bench_learner import _policy_dir
    from env.prompts import SYSTEM_PROMPT
    from env.video import budget_shape

    device = args.device
    gpu = device.startswith("cuda")
    shape = args.shape if gpu or not args.quick else "tiny"
    policy_dir = _policy_dir(shape, Path(args.workdir))
    proc = AutoProcessor.from_pretrained(str(policy_dir))
    model = AutoModelForImageTextToText.from_pretrained(str(policy_dir), dtype=torch.bfloat16 if gpu else torch.float32)
    model.to(device).eval()
    rng = np.random.default_rng(0)
    budgets = [32 * QWEN_UNIT] * 10 + [128 * QWEN_UNIT] * 5
    batch = 4 if args.quick and not gpu else args.batch
    new_tokens = 16 if args.quick and not gpu else args.new_tokens
    texts, images = [], []
    for b in range(batch):
        content = [{"type": "text", "text": "The video has 100 frames.\n"}]
        for i, px in enumerate(budgets):
            h, w = budget_shape(480, 854, px)
            images.append(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            content += [{"type": "text", "text": f"Frame {i * 7}: "}, {"type": "image"}]
        content.append({"type": "text", "text": f'Query: "the shape number {b}"'})
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]
        texts.append(proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    proc.tokenizer.padding_side = "left"
    enc = proc(text=texts, images=images, return_tensors="pt", padding=True).to(device)
    if "pixel_values" in enc and gpu:
        enc["pixel_values"] = enc["pixel_values"].to(torch.bfloat16)
    prompt_len = int(enc["input_ids"].shape[1])
    kwargs = dict(do_sample=True, temperature=0.9, top_p=0.9, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  pad_token_id=proc.tokenizer.pad_token_id)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    with torch.no_grad():
        model.generate(**enc, **dict(kwargs, max_new_tokens=2, min_new_tokens=2))  # warm-up
        sync()
        t0 = time.perf_counter()
        model.generate(**enc, **dict(kwargs, max_new_tokens=1, min_new_tokens=1))
        sync()
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(**enc, **kwargs)
        sync()
        total = time.perf_counter() - t0
    generated = int((out.shape[1] - prompt_len) * batch)
    return {
        "config": {"shape": shape, "device": device, "batch": batch, "prompt_tokens": prompt_len,
                   "images_per_prompt": len(budgets), "new_tokens": new_tokens, "sampling": "t=0.9, top_p=0.9"},
        "prefill_seconds": round(prefill, 3),
        "generate_seconds": round(total, 3),
        "generated_tokens": generated,
        "tokens_per_s": round(generated / total, 1),
        "decode_tokens_per_s": round(generated / max(total - prefill, 1e-9), 1),
        "anchor": "HF generate, 1.7B model, batch 64, one H200: ~833 tokens/s",
        "note": "vLLM itself cannot be installed on the GPU machine (no registry; its wheels and pinned torch "
                "are too large to carry), so the rollout path is measured on the CPU build only.",
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", default="qwen3-vl-2b")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--workdir", default=".cache/bench_learner")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run(args)
    name = "hf_generate_cuda" if args.device.startswith("cuda") else "hf_generate_cpu"
    path = write_result(name, result, args.out)
    print(json.dumps({k: result[k] for k in ("tokens_per_s", "prefill_seconds", "generate_seconds")}), "->", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
