"""Evidence that the loop learns: a tiny policy through cold-start SFT then GRPO, over several seeds.

    python -m benchmarks.learning_curve [--seeds 0 1 2] [--sft-steps N] [--rl-steps N] [--quick]

Per seed, on synthetic videos (CPU, tiny models, the debug preset otherwise):
  1. oracle VTS-CoT trajectories of the first --train-videos training videos (env.vtscot_oracle,
     seeded turn mix);
  2. SFT from the tiny random policy on them (learner.sft, seeded batch order);
  3. GRPO from the SFT policy (`python -m learner.main` as a subprocess, as a user runs it) on a
     larger prompt pool (--rl-train-videos, which contains the SFT videos), as the method runs RL
     on more data than its cold-start set.
Then one evaluation session (learner.evaluate, greedy, weights swapped per policy) scores the
random policy, every SFT policy and every RL policy on held-out synthetic videos that no stage
trained on. By default the held-out episodes use the frame budget the policies trained with
(--eval-settings train); `--eval-settings eval` uses the preset's larger evaluation budget, which a
tiny policy has never seen and handles worse. Written to --out: learning_curve.json (every number,
the command, machine facts) and learning_curve.png (held-out metrics per stage as mean +- std over
seeds; the RL training reward per step). The JSON's rl_minus_sft pairs each held-out sample's SFT and
RL episodes per seed (benchmarks.paired_delta). The seeds share the random initial policy (it is built
deterministically) and differ in the oracle's turn mix, the SFT batch order and the RL sampling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, machine_info
from benchmarks.paired_delta import describe, paired_delta

REPO = Path(__file__).resolve().parents[1]
TRAIN = "{name: synthetic, format: synthetic, videos: %d, seed: 0, frames_per_video: 24}"
HELD_OUT = "{name: heldout, format: synthetic, videos: %d, seed: %d, frames_per_video: 24}"
HELD_OUT_SEED = 1000  # the default held-out set; any other seed renders different videos
METRICS = {"mean_reward": "mean reward", "format_valid_rate": "format-valid rate",
           "keyframe_correct_rate": "keyframe-correct rate", "J&F": "J&F"}
# Reported per stage but not plotted: IoU between the masks of expressions naming different targets in
# one video (near 1 when the masks ignore the expression; see learner.eval_report).
DIAGNOSTICS = {"cross_target_pred_iou": "cross-target mask IoU"}
STAGES = ("base", "sft", "rl")


def _log(msg: str) -> None:
    print(f"[learning_curve {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_oracle_data(train: str, out: Path, seed: int) -> Path:
    from env.vtscot_oracle import main as oracle_main

    path = out / f"oracle_seed{seed}.jsonl"
    if oracle_main(["--out", str(path), "--seed", str(seed), f"data.train=[{train}]"]) != 0:
        raise RuntimeError("the oracle wrote no trajectories")
    return path


def run_sft_stage(train: str, oracle: Path, out: Path, seed: int, steps: int, lr: float,
                  extra: list[str]) -> Path:
    from configs import load_config
    from learner.sft import run_sft

    cfg = load_config("debug_cpu", [f"data.train=[{train}]", f"sft.trajectories={oracle}",
                                    f"sft.output_dir={out}", f"sft.steps={steps}", f"sft.lr={lr}",
                                    "sft.batch_size=8", f"run.seed={seed}", *extra])
    summary = run_sft(cfg)
    _log(f"SFT seed {seed}: lm loss {summary['first_step']['lm_loss']:.3f} -> {summary['last_step']['lm_loss']:.3f}, "
         f"{summary['seconds']:.0f} s")
    return Path(summary["policy"])


def run_rl_stage(train: str, policy: Path, out: Path, seed: int, steps: int, lr: float,
                 prompts_per_step: int, extra: list[str]) -> list[dict]:
    """GRPO from `policy` as a user runs it; returns the per-step metrics."""
    cmd = [sys.executable, "-m", "learner.main", "--preset", "debug_cpu", f"model.policy={policy}",
           f"data.train=[{train}]", f"run.output_dir={out}", f"run.steps={steps}", f"run.seed={seed}",
           f"run.checkpoint_every={steps}", f"learner.lr={lr}", f"learner.prompts_per_step={prompts_per_step}",
           *extra]
    t0 = time.time()
    with open(out.parent / f"{out.name}.log", "w") as log:
        rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"RL run failed (exit {rc}); see {out.parent / (out.name + '.log')}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    _log(f"RL seed {seed}: reward {rows[0]['reward/mean']:.3f} -> {rows[-1]['reward/mean']:.3f}, "
         f"{time.time() - t0:.0f} s")
    return rows


def pretrain_sam2(train: str, out: Path, steps: int) -> Path:
    """The tiny SAM2's text-prompt pre-training (the stand-in for a pretrained promptable SAM2) on
    `train`'s videos; returns the checkpoint, reused when its report exists."""
    from configs import load_config
    from segmentation.pretrain_text_prompt import pretrain, words_path

    ckpt = out / "sam2_text.pt"
    if ckpt.is_file() and ckpt.with_suffix(".json").is_file() and words_path(ckpt).is_file():
        _log(f"SAM2 text-prompt pre-training: reusing {ckpt}")
        return ckpt
    report = pretrain(load_config("debug_cpu", [f"data.train=[{train}]"]), ckpt, steps, 16, 3e-4, 0)
    _log(f"SAM2 text-prompt pre-training: held-out cross-target IoU {report['held_out_before']['cross_target_iou']:.3f} "
         f"-> {report['held_out_after']['cross_target_iou']:.3f}, own IoU {report['held_out_before']['own_iou']:.3f} "
         f"-> {report['held_out_after']['own_iou']:.3f}, {report['seconds']:.0f} s")
    return ckpt


def reusable_report(path: Path, held_out: str, max_samples: int) -> dict | None:
    """The report at `path` if it was made on the same held-out videos and sample budget, else None."""
    import yaml

    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    want = yaml.safe_load(held_out)
    have = report.get("settings", {})
    same_data = [{k: d.get(k) for k in want} for d in have.get("datasets", [])] == [want]
    return report if same_data and have.get("max_samples_per_dataset") == max_samples else None


def evaluate_all(held_out: str, policies: list[tuple[str, Path | str]], out: Path, max_samples: int,
                 settings: str, extra: list[str] = (), reuse: bool = False) -> dict[str, dict]:
    """Greedy held-out evaluation of every policy in one session. settings="train" plays the episodes
    with the frame counts and keyframe budget the policies were trained with (env.*); "eval" uses the
    preset's larger evaluation budget (eval.*), which a tiny policy has never seen. With `reuse`, a
    policy whose report under `out/<tag>/` matches the held-out set and budget is not played again
    (a rerun of RL from the same SFT policies then evaluates only the new RL policies)."""
    from configs import load_config
    from env.episode import EVAL_SETTING_KEYS
    from learner.evaluate import evaluate

    reports = {}
    for tag, _ in policies if reuse else ():
        report = reusable_report(out / tag / "report.json", held_out, max_samples)
        if report is not None:
            reports[tag] = report
            _log(f"evaluation of {tag}: reusing {out / tag / 'report.json'}")
    todo = [(tag, p) for tag, p in policies if tag not in reports]
    if todo:
        overrides = [f"data.eval=[{held_out}]", f"eval.max_samples={max_samples}", *extra]
        if settings == "train":
            env = load_config("debug_cpu").env
            overrides += [f"eval.{k}={getattr(env, k)}" for k in EVAL_SETTING_KEYS]
        # evaluate() writes a lone policy's report into the folder it is given, several into <tag>/.
        target = out / todo[0][0] if len(todo) == 1 else out
        reports.update(evaluate(load_config("debug_cpu", overrides), todo, target))
    return {tag: reports[tag] for tag, _ in policies}


def stage_lines(stats: dict) -> list[str]:
    """One printable line per stage: each metric's mean +- std over seeds."""
    return [f"{stage}: " + ", ".join(f"{label} {stats[stage][k]['mean']:.3f} +- {stats[stage][k]['std']:.3f}"
                                     for k, label in {**METRICS, **DIAGNOSTICS}.items())
            for stage in STAGES]


def stage_stats(reports: dict[str, dict], seeds: list[int]) -> dict:
    """Per stage and metric: the values per seed, mean and (population) std."""
    out = {}
    for stage in STAGES:
        tags = ["base"] if stage == "base" else [f"{stage}_s{s}" for s in seeds]
        out[stage] = {}
        for key in (*METRICS, *DIAGNOSTICS):
            values = [reports[t]["overall"].get(key) for t in tags]
            values = [float(v) if v is not None else float("nan") for v in values]
            out[stage][key] = {"values": values, "mean": float(np.nanmean(values)), "std": float(np.nanstd(values))}
    return out


def plot(stats: dict, rl_curves: dict[int, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), gridspec_kw={"width_ratios": [3, 1.4, 2.2]})
    labels = ["random", "SFT", "SFT + RL"]
    x = np.arange(len(STAGES))
    rates = [k for k in METRICS if k != "mean_reward"]
    width = 0.8 / len(rates)
    for i, key in enumerate(rates):
        means = [stats[s][key]["mean"] for s in STAGES]
        stds = [stats[s][key]["std"] for s in STAGES]
        axes[0].bar(x + (i - (len(rates) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=METRICS[key])
    axes[0].set_xticks(x, labels)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title("held-out videos, greedy (mean +- std over seeds)")
    axes[0].legend(fontsize=8)
    axes[1].errorbar(x, [stats[s]["mean_reward"]["mean"] for s in STAGES],
                     yerr=[stats[s]["mean_reward"]["std"] for s in STAGES], marker="o", capsize=4)
    axes[1].set_xticks(x, labels)
    axes[1].set_title("held-out mean reward")
    for seed, rows in rl_curves.items():
        axes[2].plot([r["step"] for r in rows], [r["reward/mean"] for r in rows], marker=".", label=f"seed {seed}")
    axes[2].set_xlabel("RL step")
    axes[2].set_ylabel("mean training reward (sampled episodes)")
    axes[2].set_title("GRPO from the SFT policy")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.learning_curve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-videos", type=int, default=12, help="videos the oracle writes SFT data for (~7 each)")
    ap.add_argument("--rl-train-videos", type=int, default=36,
                    help="RL prompt pool; its first --train-videos videos are the SFT videos")
    ap.add_argument("--held-out-videos", type=int, default=6)
    ap.add_argument("--eval-samples", type=int, default=32, help="held-out expressions, evenly spread")
    ap.add_argument("--held-out-seed", type=int, default=HELD_OUT_SEED,
                    help="seed of the held-out synthetic videos; another seed gives a fresh held-out set on which "
                         "finished runs (--reuse) can be scored again, its reports kept apart from the default set's")
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--decoder-lr-scale", type=float, default=1.0,
                    help="learner.sam_decoder_lr_scale for SFT and RL (0 freezes the decoder)")
    ap.add_argument("--sam2-pretrain-steps", type=int, default=0,
                    help="text-prompt pre-train the tiny SAM2 for this many steps first (segmentation."
                         "pretrain_text_prompt) and use it in every stage; 0 keeps the random tiny SAM2")
    ap.add_argument("--sam2-pretrain-videos", type=int, default=None,
                    help="training videos the SAM2 text-prompt pre-training uses (default: the RL pool, "
                         "--rl-train-videos); --train-videos keeps the videos RL adds unseen before RL")
    ap.add_argument("--prompt-align-weight", type=float, default=0.0,
                    help="SFT only: sft.prompt_align_weight against the pre-trained SAM2's word vectors "
                         "(needs --sam2-pretrain-steps); 0 trains [SEG] through the mask loss alone")
    ap.add_argument("--rl-prompt-align-weight", type=float, default=0.0,
                    help="keep the [SEG] prompt anchor on during RL with this weight (learner.prompt_align_weight; "
                    "needs --sam2-pretrain-steps)")
    ap.add_argument("--rl-override", action="append", default=[], metavar="KEY=VALUE",
                    help="a dotted config override for the RL stage only (repeatable), e.g. "
                         "reward.weights.progressive=0; held-out scoring keeps the preset's reward")
    ap.add_argument("--sft-override", action="append", default=[], metavar="KEY=VALUE",
                    help="a dotted config override for the SFT stage only (repeatable), e.g. sft.export_every=300")
    ap.add_argument("--rl-steps", type=int, default=16)
    ap.add_argument("--rl-lr", type=float, default=5e-5)
    ap.add_argument("--rl-prompts", type=int, default=4, help="prompts per RL step (x group size 4)")
    ap.add_argument("--eval-settings", choices=("train", "eval"), default="train",
                    help="held-out episodes with the training frame budget (default) or the preset's eval.* budget")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, few steps, few videos")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse finished SFT policies, RL runs and held-out reports found under --work "
                         "(same settings assumed; reports are checked against the held-out set)")
    ap.add_argument("--work", default=str(REPO / "runs" / "learning_curve"), help="where runs are written")
    ap.add_argument("--out", default=str(RESULTS), help="where learning_curve.json/.png go")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.sft_steps, args.rl_steps = args.seeds[:1], 4, 2
        args.train_videos, args.rl_train_videos, args.held_out_videos, args.eval_samples = 2, 3, 1, 4
        args.sam2_pretrain_steps = min(args.sam2_pretrain_steps, 2)
        if args.sam2_pretrain_videos:
            args.sam2_pretrain_videos = min(args.sam2_pretrain_videos, args.rl_train_videos)
    if args.rl_train_videos < args.train_videos:
        ap.error("--rl-train-videos must be at least --train-videos (the RL pool contains the SFT videos)")
    if args.held_out_seed < 1:
        ap.error("--held-out-seed must be a positive integer (seed 0 renders the training videos)")
    if args.decoder_lr_scale < 0:
        ap.error("--decoder-lr-scale must be >= 0")
    if args.sam2_pretrain_steps < 0:
        ap.error("--sam2-pretrain-steps must be >= 0")
    if args.sam2_pretrain_videos is not None and not 1 <= args.sam2_pretrain_videos <= args.rl_train_videos:
        ap.error("--sam2-pretrain-videos must be between 1 and --rl-train-videos (it takes the first videos of the RL pool)")
    for flag, weight in (("--prompt-align-weight", args.prompt_align_weight),
                         ("--rl-prompt-align-weight", args.rl_prompt_align_weight)):
        if weight < 0 or (weight > 0 and not args.sam2_pretrain_steps):
            ap.error(f"{flag} must be >= 0 and needs --sam2-pretrain-steps (its word vectors are the target)")
    for flag, items in (("--sft-override", args.sft_override), ("--rl-override", args.rl_override)):
        for item in items:
            if "=" not in item or not item.split("=", 1)[0].strip():
                ap.error(f"{flag} takes KEY=VALUE, got {item!r}")
        if items:
            from configs import load_config

            try:  # fail now, not after the first stage
                load_config("debug_cpu", list(items))
            except Exception as exc:  # noqa: BLE001 - any invalid override is a usage error here
                ap.error(f"{flag}: {exc}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work, out = Path(args.work).resolve(), Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    train, rl_train, held_out = TRAIN % args.train_videos, TRAIN % args.rl_train_videos, HELD_OUT % (args.held_out_videos, args.held_out_seed)
    started = time.time()

    extra = [f"learner.sam_decoder_lr_scale={args.decoder_lr_scale}"]
    sam2, sft_only, rl_only = [], list(args.sft_override), list(args.rl_override)
    if args.sam2_pretrain_steps:
        from segmentation.pretrain_text_prompt import words_path

        pool = TRAIN % (args.sam2_pretrain_videos or args.rl_train_videos)
        ckpt = pretrain_sam2(pool, work, args.sam2_pretrain_steps)
        sam2 = [f"model.sam2_checkpoint={ckpt}"]
        extra += sam2
        if args.prompt_align_weight:
            sft_only += [f"sft.prompt_teacher={words_path(ckpt)}", f"sft.prompt_align_weight={args.prompt_align_weight}"]
        if args.rl_prompt_align_weight:
            rl_only += [f"learner.prompt_teacher={words_path(ckpt)}",
                       f"learner.prompt_align_weight={args.rl_prompt_align_weight}"]
    sft_policies, rl_runs, rl_curves = {}, {}, {}
    for seed in args.seeds:
        sft_dir, rl_dir = work / f"sft_s{seed}", work / f"rl_s{seed}"
        if args.reuse and (sft_dir / "policy" / "config.json").is_file():
            sft_policies[seed] = sft_dir / "policy"
            _log(f"SFT seed {seed}: reusing {sft_policies[seed]}")
        else:
            oracle = make_oracle_data(train, work, seed)
            sft_policies[seed] = run_sft_stage(train, oracle, sft_dir, seed, args.sft_steps, args.sft_lr,
                                                 extra + sft_only)
        rl_runs[seed] = rl_dir
        done = sorted(p for p in (rl_dir / "checkpoints").glob("step_*") if (p / "COMPLETE").exists()) \
            if (rl_dir / "checkpoints").is_dir() else []
        if args.reuse and len(done) and (rl_dir / "metrics.jsonl").is_file():
            rl_curves[seed] = [json.loads(line) for line in (rl_dir / "metrics.jsonl").read_text().splitlines()
                               if line.strip()]
            _log(f"RL seed {seed}: reusing {rl_dir} ({len(rl_curves[seed])} steps)")
        else:
            rl_curves[seed] = run_rl_stage(rl_train, sft_policies[seed], rl_dir, seed, args.rl_steps, args.rl_lr,
                                           args.rl_prompts, extra + rl_only)
    policies = [("base", "tiny-qwen2.5-vl")]
    policies += [(f"sft_s{s}", sft_policies[s]) for s in args.seeds]
    policies += [(f"rl_s{s}", rl_runs[s]) for s in args.seeds]
    _log(f"evaluating {len(policies)} policies on held-out videos")
    eval_dir = f"eval_{args.eval_settings}" + ("" if args.held_out_seed == HELD_OUT_SEED else f"_seed{args.held_out_seed}")
    reports = evaluate_all(held_out, policies, work / eval_dir, args.eval_samples,
                           args.eval_settings, sam2, reuse=args.reuse)
    stats = stage_stats(reports, args.seeds)
    paired = paired_delta(reports, args.seeds)

    name = "learning_curve_quick" if args.quick else "learning_curve"
    result = {
        "command": "python -m benchmarks.learning_curve " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "machine": machine_info(), "seconds": time.time() - started,
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out")},
        "train_data": train, "rl_train_data": rl_train, "held_out_data": held_out,
        "held_out": stats,
        "rl_minus_sft": paired,
        "rl_training_reward": {str(s): [{"step": r["step"], "reward/mean": r["reward/mean"],
                                         "episode/format_ok": r.get("episode/format_ok"),
                                         "iou/video_last": r.get("iou/video_last")} for r in rows]
                               for s, rows in rl_curves.items()},
        "per_policy": {tag: {k: r["overall"].get(k) for k in (*METRICS, *DIAGNOSTICS, "avg_turns", "answered_rate",
                                                                 "reward_terms")}
                       for tag, r in reports.items()},
    }
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    plot(stats, rl_curves, out / f"{name}.png")
    for line in stage_lines(stats):
        _log(line)
    _log(describe(paired))
    _log(f"wrote {out / (name + '.json')} and .png in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
