"""RL minus SFT on the same held-out episodes: a paired comparison of two evaluation reports per seed.

    python -m benchmarks.paired_delta EVAL_DIR [EVAL_DIR ...] [--seeds 0 1 2] [--update learning_curve.json]

EVAL_DIR is the evaluation folder of a learning-curve run (`<work>/eval_train`), holding
`sft_s<seed>/report.json` and `rl_s<seed>/report.json`. Per-stage means over seeds hide how much of a
difference is the policy and how much is which expressions were easy; pairing every held-out sample
with itself removes the second part. Per seed and pooled over seeds it reports the mean per-sample
difference of J&F and of the reward, a bootstrap 95% interval (samples resampled within each seed),
and two wider J&F intervals that a claim about new videos should rest on: one resampling held-out
videos (a video's expressions, in every seed, move together: they share frames and distractors), and
one over seeds (a t interval of the per-seed means: a new seed is a new SFT and RL run). Each of those
holds the other factor fixed, so a fourth interval resamples seeds and videos at once (a two-way
"pigeonhole" bootstrap: a draw picks seeds and videos with replacement and keeps every row in both
picks); it is the one that speaks for a new run on new videos, and it errs wide. It also gives
how often the final keyframe moved, with the J&F difference split by whether it moved: on the
same keyframe a J&F change is the mask, elsewhere it is also the choice of frame. It also splits the
reward change by term and reports the turn counts, so a reward gain that only comes from dropping
turns (the multi-turn terms score 0 below two turns) shows as such.

Several EVAL_DIRs may also hold the same seeds scored on different held-out sets (learning_curve
--held-out-seed): their reports are then joined sample by sample into one larger held-out set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from learner.eval_report import EpisodeOutcome, episode_summary
from segmentation.metrics import jf_mean

BOOTSTRAP = 2000
# Two-sided 95% Student t quantiles by degrees of freedom (1-30); beyond, 1.96 + 2.5/df is within 0.002.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def _by_sample(report: dict) -> dict[str, dict]:
    return {s["sample_id"]: s for s in report["samples"]}


def video_of(sample: dict) -> str:
    """The held-out video a sample belongs to, named with its dataset (sample ids are dataset/video/expression)."""
    if sample.get("video_id") is not None:
        return f"{sample.get('dataset', '')}/{sample['video_id']}"
    return sample["sample_id"].rsplit("/", 1)[0]


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
        rows.append({"sample_id": sid, "video": video_of(a[sid]), "jf_sft": jf_a, "jf_rl": jf_b, "jf_delta": jf_b - jf_a,
                     "reward_sft": r_a, "reward_rl": r_b,
                     "reward_delta": None if r_a is None or r_b is None else r_b - r_a,
                     "keyframe_moved": a[sid]["final_keyframe"] != b[sid]["final_keyframe"]})
    return rows


def _bootstrap_ci(draw_mean) -> list[float]:
    """The 2.5 and 97.5 percentiles of BOOTSTRAP means, each from one call of `draw_mean`."""
    lo, hi = np.percentile([draw_mean() for _ in range(BOOTSTRAP)], [2.5, 97.5])
    return [float(lo), float(hi)]


def _interval(groups: list[np.ndarray], rng: np.random.Generator) -> list[float]:
    """Bootstrap 95% interval of the pooled mean, resampling within each group (seed)."""
    groups = [g for g in groups if len(g)]
    if not groups:
        return [float("nan"), float("nan")]
    return _bootstrap_ci(lambda: float(np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups]).mean()))


def seed_video_table(rows_by_seed: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
    """(seed x video) sums and counts of the J&F deltas, videos in sorted order. Both video-level
    intervals draw from it: the by-video one from its column totals, the two-way one from its cells."""
    videos = sorted({r["video"] for rows in rows_by_seed for r in rows})
    col = {v: i for i, v in enumerate(videos)}
    sums = np.zeros((len(rows_by_seed), len(videos)))
    counts = np.zeros_like(sums)
    for i, rows in enumerate(rows_by_seed):
        for r in rows:
            sums[i, col[r["video"]]] += r["jf_delta"]
            counts[i, col[r["video"]]] += 1
    return sums, counts


def _interval_by_video(sums: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> list[float]:
    """Bootstrap 95% interval of the pooled J&F delta, resampling videos: each draw takes a video's
    rows of every seed together (a column of the seed x video table), so expressions of one video
    count as one unit of evidence."""
    video_sums, video_counts = sums.sum(axis=0), counts.sum(axis=0)
    if not len(video_sums):
        return [float("nan"), float("nan")]

    def draw() -> float:
        pick = rng.integers(0, len(video_sums), len(video_sums))
        return float(video_sums[pick].sum() / video_counts[pick].sum())

    return _bootstrap_ci(draw)


def _interval_seeds_and_videos(sums: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> list[float]:
    """Bootstrap 95% interval of the pooled J&F delta resampling seeds and videos independently. A draw
    weighs each (seed, video) cell by how often its seed was drawn times how often its video was, so the
    draw's mean is the weighted sum of cell sums over the weighted sum of cell counts."""
    n_seeds, n_videos = sums.shape
    if n_seeds < 2 or not n_videos:
        return [float("nan"), float("nan")]

    def draw() -> float:
        seed_w = np.bincount(rng.integers(0, n_seeds, n_seeds), minlength=n_seeds)
        video_w = np.bincount(rng.integers(0, n_videos, n_videos), minlength=n_videos)
        return float(seed_w @ sums @ video_w / (seed_w @ counts @ video_w))

    return _bootstrap_ci(draw)


def t_interval(values: list[float]) -> list[float]:
    """95% Student t interval of the mean of `values` (nan with fewer than two)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return [float("nan"), float("nan")]
    df = len(x) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96 + 2.5 / df
    half = t * float(x.std(ddof=1)) / np.sqrt(len(x))
    return [float(x.mean() - half), float(x.mean() + half)]


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
    per_seed, jf_groups, reward_groups, pooled_rows, rows_by_seed = {}, [], [], [], []
    for s in seeds:
        rows = paired_rows(reports[f"sft_s{s}"], reports[f"rl_s{s}"])
        if not rows:
            raise ValueError(f"seed {s}: the SFT and RL reports share no scored sample")
        per_seed[str(s)] = _summary(rows)
        pooled_rows += rows
        rows_by_seed.append(rows)
        jf_groups.append(np.array([r["jf_delta"] for r in rows]))
        reward_groups.append(np.array([r["reward_delta"] for r in rows if r["reward_delta"] is not None]))
    pooled = _summary(pooled_rows)
    pooled["jf_delta_ci95"] = _interval(jf_groups, rng)
    pooled["reward_delta_ci95"] = _interval(reward_groups, rng)
    sums, counts = seed_video_table(rows_by_seed)
    pooled["videos"] = sums.shape[1]
    pooled["jf_delta_ci95_by_video"] = _interval_by_video(sums, counts, rng)
    pooled["jf_delta_ci95_over_seeds"] = t_interval([v["jf_delta"] for v in per_seed.values()])
    # Drawn last, so the intervals above reproduce the draws of reports written before it existed.
    pooled["jf_delta_ci95_seeds_and_videos"] = _interval_seeds_and_videos(sums, counts, rng)
    pooled["seeds_jf_up"] = sum(v["jf_delta"] > 0 for v in per_seed.values())
    pooled["seeds_reward_up"] = sum((v["reward_delta"] or 0) > 0 for v in per_seed.values())
    return {"per_seed": per_seed, "pooled": pooled, "by_term": term_deltas(reports, seeds)}


def join_reports(reports: list[dict], names: list[str]) -> dict:
    """One report of a policy from its reports on disjoint held-out sets: the samples of all, and the
    episode means over them (learner.eval_report.episode_summary; J&F stays per sample).
    Reports that share a sample id are the same set scored twice, which is refused."""
    seen: dict[str, str] = {}
    for report, name in zip(reports, names):
        for sample in report["samples"]:
            if sample["sample_id"] in seen:
                raise ValueError(f"{sample['sample_id']} is in both {seen[sample['sample_id']]} and {name}; "
                                 "pass each seed's run once per held-out set")
            seen[sample["sample_id"]] = name
    samples = [s for r in reports for s in r["samples"]]
    overall = episode_summary([EpisodeOutcome(**s) for s in samples])
    return {"samples": samples, "overall": overall, "joined_from": names}


def one_report(reports: list[dict], names: list[str]) -> dict:
    """A policy's report from its reports on one or more disjoint held-out sets (join_reports)."""
    return reports[0] if len(reports) == 1 else join_reports(reports, names)


def load_reports(eval_dirs: Path | list[Path], seeds: list[int]) -> dict[str, dict]:
    """The SFT and RL reports of every seed. With several folders, each report is taken from the
    folders that hold it: one (runs that trained different seeds on the same held-out set), or
    several that scored it on different held-out sets, which are joined (join_reports)."""
    dirs = [eval_dirs] if isinstance(eval_dirs, Path) else list(eval_dirs)
    reports = {}
    for s in seeds:
        for stage in ("sft", "rl"):
            tag = f"{stage}_s{s}"
            found = [d / tag / "report.json" for d in dirs if (d / tag / "report.json").is_file()]
            if not found:
                where = " or ".join(str(d / tag / "report.json") for d in dirs)
                raise FileNotFoundError(f"no evaluation report at {where} (run benchmarks.learning_curve first)")
            reports[tag] = one_report([json.loads(f.read_text()) for f in found], [str(f) for f in found])
    return reports


def describe(result: dict) -> str:
    p = result["pooled"]
    lo, hi = p["jf_delta_ci95"]
    rlo, rhi = p["reward_delta_ci95"]
    seeds = len(result["per_seed"])
    return (f"RL - SFT over {p['samples']} paired held-out samples: J&F {p['jf_delta']:+.4f} "
            f"(95% CI {lo:+.4f} .. {hi:+.4f}; up on {p['seeds_jf_up']}/{seeds} seeds), reward "
            f"{p['reward_delta']:+.3f} (95% CI {rlo:+.3f} .. {rhi:+.3f}; up on {p['seeds_reward_up']}/{seeds} seeds); "
            f"J&F 95% CI resampling {p['videos']} videos {_pair(p['jf_delta_ci95_by_video'])}, "
            f"over seeds {_pair(p['jf_delta_ci95_over_seeds'])}, "
            f"seeds and videos together {_pair(p['jf_delta_ci95_seeds_and_videos'])}; "
            f"keyframe moved on {p['keyframe_moved_rate']:.0%} of samples{_describe_terms(result.get('by_term'))}")


def _pair(interval: list[float]) -> str:
    return "n/a" if any(np.isnan(interval)) else f"{interval[0]:+.4f} .. {interval[1]:+.4f}"


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
