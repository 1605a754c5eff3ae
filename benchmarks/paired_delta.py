"""RL minus SFT on the same held-out episodes: a paired comparison of two evaluation reports per seed.

    python -m benchmarks.paired_delta EVAL_DIR [EVAL_DIR ...] [--seeds 0 1 2] [--update learning_curve.json]

EVAL_DIR is the evaluation folder of a learning-curve run (`<work>/eval_train`), holding
`sft_s<seed>/report.json` and `rl_s<seed>/report.json`. Per-stage means over seeds hide how much of a
difference is the policy and how much is which expressions were easy; pairing every held-out sample
with itself removes the second part. Per seed and pooled over seeds it reports the mean per-sample
difference of J&F and of the reward, a bootstrap 95% interval (samples resampled within each seed),
and how often the final keyframe moved, with the J&F difference split by whether it moved: on the
same keyframe a J&F change is the mask, elsewhere it is also the choice of frame. It also splits the
reward change by term and reports the turn counts, so a reward gain that only comes from dropping
turns (the multi-turn terms score 0 below two turns) shows as such.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from segmentation.metrics import jf_mean

BOOTSTRAP = 2000


def _by_sample(report: dict) -> dict[str, dict]:
    return {s["sample_id"]: s for s in report["samples"]}


def sample_jf(sample: dict) -> float | None:
    if sample.get("J") is None or sample.get("F") is None:
        return None
    return jf_mean(sample["J"], sample["F"])


def paired_rows(sft: dict, rl: dict) -> list[dict]:
    """One row per sample both reports scored: J&F and reward of each, their RL - SFT differences
    (reward_delta None where either reward is missing), and whether the keyframe moved."""
    a, b = _by_sample(sft), _by_sample(rl)
    rows = []
    for sid in sorted(a.keys() & b.keys()):
        jf_a, jf_b = sample_jf(a[sid]), sample_jf(b[sid])
        if jf_a is None or jf_b is None:
            continue
        r_a, r_b = a[sid].get("reward"), b[sid].get("reward")
        rows.append({"sample_id": sid, "jf_sft": jf_a, "jf_rl": jf_b, "jf_delta": jf_b - jf_a,
                     "reward_sft": r_a, "reward_rl": r_b,
                     "reward_delta": None if r_a is None or r_b is None else r_b - r_a,
                     "keyframe_moved": a[sid]["final_keyframe"] != b[sid]["final_keyframe"]})
    return rows


def _interval(groups: list[np.ndarray], rng: np.random.Generator) -> list[float]:
    """Bootstrap 95% interval of the pooled mean, resampling within each group (seed)."""
    if not any(len(g) for g in groups):
        return [float("nan"), float("nan")]
    means = []
    for _ in range(BOOTSTRAP):
        parts = [g[rng.integers(0, len(g), len(g))] for g in groups if len(g)]
        means.append(float(np.concatenate(parts).mean()))
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _summary(rows: list[dict]) -> dict:
    moved = [r["jf_delta"] for r in rows if r["keyframe_moved"]]
    kept = [r["jf_delta"] for r in rows if not r["keyframe_moved"]]
    return {
        "samples": len(rows),
        "jf_delta": _mean(r["jf_delta"] for r in rows),
        "reward_delta": _mean(r["reward_delta"] for r in rows),
        "jf_improved": sum(r["jf_delta"] > 0 for r in rows),
        "jf_worsened": sum(r["jf_delta"] < 0 for r in rows),
        "keyframe_moved_rate": len(moved) / len(rows) if rows else None,
        "jf_delta_same_keyframe": _mean(kept),
        "jf_delta_moved_keyframe": _mean(moved),
    }


def term_deltas(reports: dict[str, dict], seeds: list[int]) -> dict:
    """Per reward term, RL - SFT of the reports' mean term value per seed and its mean over seeds; and
    the average turns of each stage per seed. Terms are unweighted, as the reports keep them (the
    presets weigh every term 1). The reward scores every term on every episode (the multi-turn
    terms are 0 at one turn); a term a report lacks, as in one without reward figures, counts as 0."""
    def terms_of(stage: str, s: int) -> dict:
        return reports[f"{stage}_s{s}"].get("overall", {}).get("reward_terms", {})

    def turns_of(stage: str, s: int) -> float | None:
        return reports[f"{stage}_s{s}"].get("overall", {}).get("avg_turns")

    names = sorted({t for s in seeds for st in ("sft", "rl") for t in terms_of(st, s)})
    out = {"reward_terms": {}, "avg_turns": {}}
    for t in names:
        values = [terms_of("rl", s).get(t, 0.0) - terms_of("sft", s).get(t, 0.0) for s in seeds]
        out["reward_terms"][t] = {"values": values, "mean": float(np.mean(values))}
    for st in ("sft", "rl"):
        turns = [turns_of(st, s) for s in seeds]
        out["avg_turns"][st] = {"values": turns, "mean": _mean(turns)}
    return out


def paired_delta(reports: dict[str, dict], seeds: list[int], seed: int = 0) -> dict:
    """{"per_seed": {seed: summary}, "pooled": summary + bootstrap intervals, "by_term": term_deltas}
    of rl_s<seed> minus sft_s<seed> over the samples both scored."""
    rng = np.random.default_rng(seed)
    per_seed, jf_groups, reward_groups, pooled_rows = {}, [], [], []
    for s in seeds:
        rows = paired_rows(reports[f"sft_s{s}"], reports[f"rl_s{s}"])
        if not rows:
            raise ValueError(f"seed {s}: the SFT and RL reports share no scored sample")
        per_seed[str(s)] = _summary(rows)
        pooled_rows += rows
        jf_groups.append(np.array([r["jf_delta"] for r in rows]))
        reward_groups.append(np.array([r["reward_delta"] for r in rows if r["reward_delta"] is not None]))
    pooled = _summary(pooled_rows)
    pooled["jf_delta_ci95"] = _interval(jf_groups, rng)
    pooled["reward_delta_ci95"] = _interval(reward_groups, rng)
    pooled["seeds_jf_up"] = sum(v["jf_delta"] > 0 for v in per_seed.values())
    pooled["seeds_reward_up"] = sum((v["reward_delta"] or 0) > 0 for v in per_seed.values())
    return {"per_seed": per_seed, "pooled": pooled, "by_term": term_deltas(reports, seeds)}


def load_reports(eval_dirs: Path | list[Path], seeds: list[int]) -> dict[str, dict]:
    """The SFT and RL reports of every seed. With several folders (runs that trained different seeds
    on the same held-out set) each report is taken from the one folder that holds it."""
    dirs = [eval_dirs] if isinstance(eval_dirs, Path) else list(eval_dirs)
    reports = {}
    for s in seeds:
        for stage in ("sft", "rl"):
            tag = f"{stage}_s{s}"
            found = [d / tag / "report.json" for d in dirs if (d / tag / "report.json").is_file()]
            if not found:
                where = " or ".join(str(d / tag / "report.json") for d in dirs)
                raise FileNotFoundError(f"no evaluation report at {where} (run benchmarks.learning_curve first)")
            if len(found) > 1:
                raise ValueError(f"{tag} is in more than one folder ({', '.join(map(str, found))}); "
                                 "pass each seed's run once")
            reports[tag] = json.loads(found[0].read_text())
    return reports


def describe(result: dict) -> str:
    p = result["pooled"]
    lo, hi = p["jf_delta_ci95"]
    rlo, rhi = p["reward_delta_ci95"]
    seeds = len(result["per_seed"])
    return (f"RL - SFT over {p['samples']} paired held-out samples: J&F {p['jf_delta']:+.4f} "
            f"(95% CI {lo:+.4f} .. {hi:+.4f}; up on {p['seeds_jf_up']}/{seeds} seeds), reward "
            f"{p['reward_delta']:+.3f} (95% CI {rlo:+.3f} .. {rhi:+.3f}; up on {p['seeds_reward_up']}/{seeds} seeds); "
            f"keyframe moved on {p['keyframe_moved_rate']:.0%} of samples{_describe_terms(result.get('by_term'))}")


def _describe_terms(by_term: dict | None) -> str:
    if not by_term:
        return ""
    moved = [f"{t} {v['mean']:+.3f}" for t, v in by_term["reward_terms"].items() if abs(v["mean"]) >= 0.005]
    turns = by_term["avg_turns"]
    text = f"; reward change by term: {', '.join(moved) or 'none above 0.005'}"
    if turns["sft"]["mean"] is not None and turns["rl"]["mean"] is not None:
        text += f"; average turns {turns['sft']['mean']:.2f} -> {turns['rl']['mean']:.2f}"
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.paired_delta", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path, nargs="+",
                    help="a learning-curve run's evaluation folder (<work>/eval_train); several pool runs "
                         "that evaluated different seeds on the same held-out set")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--update", type=Path, help="a learning_curve JSON to add the result to (key rl_minus_sft)")
    args = ap.parse_args(argv)
    try:
        result = paired_delta(load_reports(args.eval_dir, args.seeds), args.seeds)
    except (FileNotFoundError, ValueError) as exc:
        ap.error(str(exc))
    print(describe(result))
    print(json.dumps(result["per_seed"], indent=1))
    if args.update:
        doc = json.loads(args.update.read_text())
        doc["rl_minus_sft"] = result
        args.update.write_text(json.dumps(doc, indent=1))
        print(f"added rl_minus_sft to {args.update}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
