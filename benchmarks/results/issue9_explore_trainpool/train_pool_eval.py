"""Diagnostic: SFT and RL policies of the confirmatory recipe scored greedily on 128 expressions of
the RL training pool (synthetic seed 0, 240 videos), with learning_curve's evaluation settings."""
import json
import sys
from pathlib import Path

from benchmarks.learning_curve import TRAIN, evaluate_all
from benchmarks.paired_delta import paired_delta

seeds = [int(s) for s in sys.argv[1:]]
root = Path("runs/c")
policies = [(f"sft_s{s}", root / f"s{s}" / f"sft_s{s}" / "policy") for s in seeds]
policies += [(f"rl_s{s}", root / f"s{s}" / f"rl_s{s}") for s in seeds]  # the run dir: its latest checkpoint
sam2 = [f"model.sam2_checkpoint={(root / f's{seeds[0]}' / 'sam2_text.pt').resolve()}"]
reports = evaluate_all(TRAIN % 240, policies, root / "eval_trainpool", 128, "train", sam2, reuse=True)
result = paired_delta(reports, seeds)
print(json.dumps({"per_policy": {t: r["overall"]["J&F"] for t, r in reports.items()},
                  "per_seed": {s: v["jf_delta"] for s, v in result["per_seed"].items()},
                  "pooled": {k: result["pooled"][k] for k in ("jf_delta", "jf_delta_ci95", "reward_delta")}}, indent=1))
