"""Across the confirmatory runs: does a seed's RL J&F change go with its change in cross-target IoU?

Cross-target IoU (`overall.cross_target_pred_iou` of an evaluation report) is the IoU between the
masks a policy predicts for two different expressions of the same video: it rises when the masks
stop depending on the expression. Reads the SFT and RL reports of seeds 10-19 on both held-out sets
and writes cross_target_vs_jf.json next to this file.
    python benchmarks/results/issue9_explore_auxweight/cross_target_vs_jf.py
"""
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE.parent / "issue9_confirmatory"


def overall(folder: str, policy: str) -> dict:
    return json.loads((RUNS / folder / policy / "report.json").read_text())["overall"]


rows = []
for folder, held_out in (("eval_train", 1000), ("eval_train_seed2000", 2000)):
    for seed in range(10, 20):
        sft, rl = overall(folder, f"sft_s{seed}"), overall(folder, f"rl_s{seed}")
        rows.append({"held_out_set": held_out, "seed": seed,
                     "jf_delta": rl["J&F"] - sft["J&F"],
                     "cross_target_delta": rl["cross_target_pred_iou"] - sft["cross_target_pred_iou"],
                     "turns_delta": rl["avg_turns"] - sft["avg_turns"],
                     "sft_cross_target": sft["cross_target_pred_iou"]})
jf = [r["jf_delta"] for r in rows]
result = {
    "pairs": len(rows),
    "pearson_jf_vs_cross_target_delta": statistics.correlation([r["cross_target_delta"] for r in rows], jf),
    "pearson_jf_vs_turns_delta": statistics.correlation([r["turns_delta"] for r in rows], jf),
    "pearson_jf_delta_vs_sft_cross_target": statistics.correlation([r["sft_cross_target"] for r in rows], jf),
    # Per set: the seeds ranked by their SFT policy's cross-target IoU (highest first) and by RL's J&F change
    # (lowest first): does a less expression-specific starting point predict a loss?
    "ranks": {str(s): {"by_sft_cross_target_desc": [r["seed"] for r in sorted(
                           (r for r in rows if r["held_out_set"] == s), key=lambda r: -r["sft_cross_target"])],
                       "by_jf_delta_asc": [r["seed"] for r in sorted(
                           (r for r in rows if r["held_out_set"] == s), key=lambda r: r["jf_delta"])]}
              for s in (1000, 2000)},
    "rows": rows,
}
(HERE / "cross_target_vs_jf.json").write_text(json.dumps(result, indent=1) + "\n")
print(f"{len(rows)} seed x set pairs: r(J&F change, cross-target change) = "
      f"{result['pearson_jf_vs_cross_target_delta']:+.3f}, r(J&F change, turns change) = "
      f"{result['pearson_jf_vs_turns_delta']:+.3f}, r(J&F change, SFT cross-target) = "
      f"{result['pearson_jf_delta_vs_sft_cross_target']:+.3f}")
for held_out, r in result["ranks"].items():
    print(f"set {held_out}: seeds by SFT cross-target IoU, highest first {r['by_sft_cross_target_desc']}; "
          f"by RL J&F change, lowest first {r['by_jf_delta_asc']}")
