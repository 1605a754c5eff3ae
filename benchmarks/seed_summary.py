"""One learning curve from seeds that ran one at a time: the held-out reports of each seed's runs,
on one or more held-out sets, and their RL training curves, as one JSON and plot.

    python -m benchmarks.seed_summary EVAL_DIR [EVAL_DIR ...] --seeds 10 11 ... \\
        [--curves learning_curve.json ...] --out results/name

benchmarks.learning_curve writes its curve for the seeds of one invocation. A long test runs each seed
on its own (a session fits a few), so its evidence is spread over per-seed folders. EVAL_DIR holds
`base/report.json` (the random policy, shared by every seed), `sft_s<N>/report.json` and
`rl_s<N>/report.json`; one folder per held-out set. Per stage and metric the figure of a policy is the
mean of its figures on the sets (the sets have equal sample counts, and a set's J&F is its own
headline, which cannot be pooled sample by sample). The RL - SFT comparison pairs every sample with
itself over all sets (benchmarks.paired_delta). --curves takes learning_curve.json files of the
seeds' runs for the RL training reward per step; a seed with none is listed as such.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info
from benchmarks.learning_curve import METRICS, DIAGNOSTICS, plot, stage_lines, stage_stats
from benchmarks.paired_delta import describe, one_report, paired_delta

KEYS = (*METRICS, *DIAGNOSTICS, "avg_turns", "answered_rate")


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation report at {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a JSON report: {exc}") from exc


def read_reports(eval_dirs: list[Path], tags: list[str]) -> dict[str, list[dict]]:
    """{tag: [its report in each folder]}, each file read once; every folder must hold every tag."""
    return {tag: [_read(d / tag / "report.json") for d in eval_dirs] for tag in tags}


def mean_over_sets(reports: dict[str, list[dict]]) -> dict[str, dict]:
    """{tag: {"overall": {metric: mean over sets}}} from read_reports' lists. A metric a set leaves
    empty (None) is left out of that tag's mean; None if no set has it."""
    out = {}
    for tag, per_set in reports.items():
        overalls = [r.get("overall", {}) for r in per_set]
        merged = {}
        for key in KEYS:
            values = [o[key] for o in overalls if o.get(key) is not None]
            merged[key] = float(np.mean(values)) if values else None
        out[tag] = {"overall": merged}
    return out


def training_curves(files: list[Path], seeds: list[int]) -> dict[int, list[dict]]:
    """The RL training reward per step of each seed found in the learning_curve JSON `files`.
    A seed in two files must have the same curve in both (the runs were reused, not repeated)."""
    curves: dict[int, list[dict]] = {}
    for path in files:
        doc = _read(path)
        for seed, rows in doc.get("rl_training_reward", {}).items():
            seed = int(seed)
            if seed not in seeds:
                continue
            if seed in curves and curves[seed] != rows:
                raise ValueError(f"seed {seed} has different RL curves in {path} and an earlier --curves file")
            curves[seed] = rows
    return dict(sorted(curves.items()))


def above_zero(pooled: dict) -> dict[str, bool]:
    """Whether each interval a claim of improvement rests on lies above 0 (lower bound > 0)."""
    keys = {"jf_by_video": "jf_delta_ci95_by_video", "jf_over_seeds": "jf_delta_ci95_over_seeds",
            "jf_seeds_and_videos": "jf_delta_ci95_seeds_and_videos", "reward": "reward_delta_ci95"}
    return {name: bool(pooled[key][0] > 0) for name, key in keys.items()}


def summarise(eval_dirs: list[Path], seeds: list[int], curve_files: list[Path]) -> dict:
    tags = ["base"] + [f"{stage}_s{s}" for stage in ("sft", "rl") for s in seeds]
    reports = read_reports(eval_dirs, tags)
    per_policy = mean_over_sets(reports)
    # Every folder holds every seed, so each policy's reports are joined over all the sets.
    names = [str(d) for d in eval_dirs]
    paired = paired_delta({tag: one_report(r, [f"{n}/{tag}" for n in names])
                           for tag, r in reports.items() if tag != "base"}, seeds)
    curves = training_curves(curve_files, seeds)
    return {
        "held_out_sets": names, "seeds": seeds,
        "held_out": stage_stats(per_policy, seeds),
        "rl_minus_sft": paired,
        "intervals_above_zero": above_zero(paired["pooled"]),
        "rl_training_reward": {str(s): rows for s, rows in curves.items()},
        "seeds_without_training_curve": [s for s in seeds if s not in curves],
        "per_policy": {tag: p["overall"] for tag, p in per_policy.items()},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.seed_summary", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path, nargs="+", help="one evaluation folder per held-out set")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--curves", type=Path, nargs="*", default=[], help="learning_curve.json files of the seeds' runs")
    ap.add_argument("--out", type=Path, required=True, help="path without suffix; .json and .png are written")
    args = ap.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        ap.error("--seeds lists a seed twice")
    try:
        result = summarise(args.eval_dir, args.seeds, args.curves)
    except (FileNotFoundError, ValueError) as exc:
        ap.error(str(exc))
    doc = {"command": "python -m benchmarks.seed_summary " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d"), "machine": machine_info(), **result}
    # Suffixes appended, not swapped: names like "rl96_lr1e-4.sets1000+2000" keep their dots.
    json_path, png_path = Path(f"{args.out}.json"), Path(f"{args.out}.png")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=1))
    plot(result["held_out"], {int(s): rows for s, rows in result["rl_training_reward"].items()}, png_path)
    for line in stage_lines(result["held_out"]):
        print(line)
    print(describe(result["rl_minus_sft"]))
    print("intervals above 0: " + ", ".join(f"{k} {v}" for k, v in result["intervals_above_zero"].items()))
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
