"""Which half of an RL update moved held-out J&F: the language model or the [SEG] heads?

    python -m benchmarks.swap_heads --sft RUN/sft_s14 --rl RUN/rl_s14 --sam2 RUN/sam2_text.pt \\
        --held-out-videos 24 --held-out-seed 1000 --eval-samples 128 --work DIR --out results/name.json

A policy directory holds the language model (with vision tower and embeddings) and, in
`videoseg_heads/`, the heads the [SEG] token goes through: projector, SAM2 prompt encoder and mask
decoder. RL trains both. This builds the two crossed policies, RL language model with SFT heads and
SFT language model with RL heads, scores them on a held-out synthetic set with the settings of
benchmarks.learning_curve, and sets their J&F beside the SFT and RL policies' own (scored here too,
or reused from --work when a matching report is there). If the two single changes add up to the
full one, the halves act independently; where one alone moves J&F, that half is the lever.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from benchmarks.common import machine_info
from learner.policy import HEADS_FILE

KEYS = ("J&F", "mean_reward", "cross_target_pred_iou", "avg_turns", "keyframe_correct_rate")


def crossed_policy(lm_dir: Path, heads_dir: Path, dst: Path) -> Path:
    """A copy of the policy at `lm_dir` with the heads file of `heads_dir`; rebuilt if present."""
    for d in (lm_dir, heads_dir):
        if not (d / "config.json").is_file() or not (d / HEADS_FILE).is_file():
            raise FileNotFoundError(f"{d} is not a policy directory with {HEADS_FILE}")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(lm_dir, dst)
    shutil.copyfile(heads_dir / HEADS_FILE, dst / HEADS_FILE)
    return dst


def decompose(jf: dict[str, float]) -> dict[str, float]:
    """RL - SFT J&F split into the language model's and the heads' single changes and what is left
    (their interaction): full = lm + heads + interaction."""
    full = jf["rl"] - jf["sft"]
    lm, heads = jf["rl_lm_sft_heads"] - jf["sft"], jf["sft_lm_rl_heads"] - jf["sft"]
    return {"full": full, "lm_alone": lm, "heads_alone": heads, "interaction": full - lm - heads}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.swap_heads", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", required=True, help="SFT policy (directory, checkpoint or run)")
    ap.add_argument("--rl", required=True, help="RL policy (directory, checkpoint or run)")
    ap.add_argument("--sam2", type=Path, required=True, help="the SAM2 checkpoint the runs used")
    ap.add_argument("--held-out-videos", type=int, default=24)
    ap.add_argument("--held-out-seed", type=int, default=1000)
    ap.add_argument("--eval-samples", type=int, default=128)
    ap.add_argument("--work", type=Path, required=True, help="crossed policies and evaluation reports")
    ap.add_argument("--out", type=Path, required=True, help="JSON result")
    args = ap.parse_args(argv)
    if args.held_out_videos < 1 or args.eval_samples < 1:
        ap.error("--held-out-videos and --eval-samples must be >= 1")
    if not args.sam2.is_file():
        ap.error(f"--sam2: no file at {args.sam2}")

    from configs import load_config
    from benchmarks.learning_curve import HELD_OUT, evaluate_all
    from learner.evaluate import resolve_policy

    cfg = load_config("debug_cpu")
    try:
        sft, rl = resolve_policy(args.sft, cfg), resolve_policy(args.rl, cfg)
        args.work.mkdir(parents=True, exist_ok=True)
        policies = [("sft", sft), ("rl", rl),
                    ("rl_lm_sft_heads", crossed_policy(rl, sft, args.work / "rl_lm_sft_heads")),
                    ("sft_lm_rl_heads", crossed_policy(sft, rl, args.work / "sft_lm_rl_heads"))]
    except FileNotFoundError as exc:
        ap.error(str(exc))
    started = time.time()
    held_out = HELD_OUT % (args.held_out_videos, args.held_out_seed)
    # Only the SFT and RL reports may be reused: the crossed policies are rebuilt every time.
    for tag in ("rl_lm_sft_heads", "sft_lm_rl_heads"):
        (args.work / "eval" / tag / "report.json").unlink(missing_ok=True)
    reports = evaluate_all(held_out, policies, args.work / "eval", args.eval_samples, "train",
                           [f"model.sam2_checkpoint={args.sam2.resolve()}"], reuse=True)
    figures = {tag: {k: r["overall"].get(k) for k in KEYS} for tag, r in reports.items()}
    result = {
        "command": "python -m benchmarks.swap_heads " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "machine": machine_info(), "seconds": time.time() - started,
        "sft": str(sft), "rl": str(rl), "held_out_data": held_out, "eval_samples": args.eval_samples,
        "policies": figures,
        "jf_change": decompose({tag: f["J&F"] for tag, f in figures.items()}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(" ".join(f"{k} {v:+.4f}" for k, v in result["jf_change"].items()) + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
