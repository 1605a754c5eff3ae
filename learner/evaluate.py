"""`python -m learner.evaluate`: greedy multi-turn evaluation, masks, results.json and J/F report.

Per sample of every `data.eval` dataset: a greedy episode on a rollout engine against env actors
built with the evaluation settings (METHOD.md section 2: `eval` holds the initial low/high-res
frame counts, the keyframe budget and the turn budget), the [SEG] hidden states from a no-grad
policy forward, the last [SEG] placed on the last selected keyframe and propagated both ways
over all frames by the reward pool, masks at full resolution as RLE in a Sa2VA-style
results.json per dataset, then J, F, J&F (ReVOS referring / reasoning / overall where the
dataset has both types), average turns, format and keyframe rates and the RL reward.

Usage:
    python -m learner.evaluate --policy DIR [--policy TAG=DIR ...] [--out DIR] [--preset P] [--config F]
        [overrides ...]
    python -m learner.evaluate --policy runs/debug_cpu/checkpoints/step_00000002 \\
        'data.eval=[{name: revos, format: revos, root: /data/ReVOS, meta_file: meta_expressions_valid_.json}]'
A policy is an HF policy directory (with [SEG] heads), a checkpoint directory of the trainer (its
policy/ is used), a run directory (its latest complete checkpoint) or a tiny policy name.
Without data.eval the data.train datasets are evaluated (debug use). With several policies one
session evaluates them in turn (weights swapped into the running engines) and each gets OUT/<tag>/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from configs import Config, ConfigError, available_presets, load_config

log = logging.getLogger("learner.evaluate")


def resolve_policy(spec: str, cfg: Config) -> Path:
    """An HF policy directory for a policy argument (see the module docstring)."""
    from rollout.tiny_policy import build_tiny_policy
    from configs.schema import TINY_POLICIES

    if spec in TINY_POLICIES:
        return build_tiny_policy(spec, cfg.model.cache_dir)
    path = Path(spec).expanduser().resolve()
    if (path / "config.json").is_file():
        return path
    if (path / "policy" / "config.json").is_file():
        return path / "policy"
    checkpoints = path / "checkpoints"
    done = sorted(p for p in checkpoints.glob("step_*") if (p / "COMPLETE").exists()) if checkpoints.is_dir() else []
    if done and (done[-1] / "policy" / "config.json").is_file():
        return done[-1] / "policy"
    raise FileNotFoundError(f"{spec} is not a policy directory, a checkpoint with policy/, a run directory "
                            "with a complete checkpoint, or a tiny policy name")


def eval_config(cfg: Config) -> Config:
    """The config the evaluation actors get: eval env settings, absolute dataset roots, and the
    evaluation datasets (data.train when data.eval is empty); missing optional datasets dropped."""
    from env.episode import eval_env_config
    from learner.system import existing_datasets

    kept = existing_datasets(list(cfg.data.eval) or list(cfg.data.train))
    if not kept:
        raise ValueError("no evaluation dataset is available (data.eval and data.train are empty or missing)")
    data = cfg.data.model_copy(update={"eval": kept})
    model = cfg.model.model_copy(update={"cache_dir": Path(cfg.model.cache_dir).resolve()})
    return cfg.model_copy(update={"env": eval_env_config(cfg.env, cfg.eval), "data": data, "model": model})


def _tags(policies: list[str]) -> list[tuple[str, str]]:
    out, seen = [], set()
    for i, spec in enumerate(policies):
        tag, _, path = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        tag = tag or Path(path.rstrip("/")).name or f"policy{i}"
        while tag in seen:
            tag = f"{tag}_{i}"
        seen.add(tag)
        out.append((tag, path))
    return out


def evaluate(cfg: Config, policies: list[tuple[str, str | Path]], out_dir: str | Path | None = None) -> dict:
    """Evaluate each (tag, policy) in one Ray session. One policy writes into `out_dir` itself,
    several into `out_dir/<tag>/`. Returns {tag: report}."""
    from cluster.ray_setup import create_role_placement, init_ray, shutdown_ray
    from learner.eval_session import EvalSession
    from learner.system import prepare_sam2

    if not policies:
        raise ValueError("no policy to evaluate")
    cfg = prepare_sam2(eval_config(cfg))
    out_dir = Path(out_dir or cfg.eval.output_dir)
    dirs = [(tag, resolve_policy(str(p), cfg)) for tag, p in policies]
    ctx = init_ray(cfg)
    placements, session, reports = None, None, {}
    try:
        placements = create_role_placement(cfg)
        session = EvalSession(cfg, dirs[0][1], placements)
        ids = session.sample_ids()
        for tag, policy_dir in dirs:
            how = session.use_policy(policy_dir)
            target = out_dir if len(dirs) == 1 else out_dir / tag
            log.info("evaluating %s (%s; engines: %s) on %s", tag, policy_dir, how,
                     {k: len(v) for k, v in ids.items()})
            report = session.run(target, ids)
            report["tag"] = tag
            (target / "report.json").write_text(json.dumps(report, indent=1))
            reports[tag] = report
            print(summary_line(tag, report), flush=True)
        return reports
    finally:
        if session is not None:
            session.shutdown()
        shutdown_ray(ctx, placements)


def _pct(x) -> str:
    return "  n/a" if x is None else f"{100 * x:5.1f}"


def summary_line(tag: str, report: dict) -> str:
    o = report["overall"]
    parts = [f"{tag}: J&F {_pct(o['J&F'])}", f"format {_pct(o['format_valid_rate'])}",
             f"keyframe {_pct(o['keyframe_correct_rate'])}", f"turns {o['avg_turns'] or 0:.2f}"]
    if o.get("mean_reward") is not None:
        parts.append(f"reward {o['mean_reward']:+.3f}")
    for name, d in report["datasets"].items():
        s = d["scores"]
        if "referring" in s:
            parts.append(f"[{name} ref {_pct(s['referring']['J&F'])} reason {_pct(s['reasoning']['J&F'])} "
                         f"overall {_pct(s['overall']['J&F'])}]")
        else:
            parts.append(f"[{name} {_pct(s['headline_J&F'])}]")
    return " | ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m learner.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", action="append", required=True,
                    help="policy directory, checkpoint, run directory or tiny policy name; TAG=PATH names it")
    ap.add_argument("--out", default=None, help="output directory (default eval.output_dir)")
    ap.add_argument("--preset", default="debug_cpu", help=f"one of {available_presets()}")
    ap.add_argument("--config", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.preset, args.overrides, args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        evaluate(cfg, _tags(args.policy), args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
