"""`python -m learner.sft`: cold-start supervised training on VTS-CoT trajectories.

    records (sft.trajectories) -> replay on the env (identical tokens to rollouts) -> batches
    -> LearnerCore.sft_step: cross-entropy on assistant tokens + BCE/Dice on every turn's [SEG]
       (SAM2 image features of the keyframes from an in-process reward-pool core)
       [+ optional: every projected [SEG] token pulled towards a text-prompt teacher's prompt for
        the expression (sft.prompt_teacher, sft.prompt_align_weight); off by default, it stands in
        for the grounding a pretrained VLM brings, which a tiny random policy lacks]
    -> sft.output_dir/{config.yaml, metrics.jsonl, summary.json, policy/}
       [+ checkpoints/step_<N>/ every sft.export_every steps, listed in summary.json]

`policy/` is a complete HF policy with the [SEG] heads: point `model.policy` of the GRPO driver
(or `learner.evaluate --policy`) at it. The DeepSpeed engine, optimizer and precision are the
learner's (`learner.*`); `sft.*` sets the schedule and the losses. With `data.eval` set, a greedy
first-turn probe on its prompts reports the format-valid rate before and after training.

Usage:
    python -m env.vtscot_oracle --out runs/sft_data/oracle.jsonl            # cold-start data
    python -m learner.sft sft.trajectories=runs/sft_data/oracle.jsonl sft.output_dir=runs/sft \\
        [--preset debug_cpu | --config F] [sft.steps=300 sft.lr=1e-3 ...]
The env section must be the one the trajectories were written with (records whose shown frames
differ are skipped, or refused with sft.strict_frames=true).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from configs import Config, ConfigError, available_presets, dump_config, load_config

log = logging.getLogger("learner.sft")


def learner_config(cfg: Config) -> Config:
    """The config LearnerCore gets: sft's schedule in place of the RL one, no reference copy."""
    s = cfg.sft
    learner = cfg.learner.model_copy(update={"lr": s.lr, "lr_schedule": s.lr_schedule,
                                             "warmup_steps": s.warmup_steps, "reference_policy": "none"})
    run = cfg.run.model_copy(update={"steps": s.steps})
    return cfg.model_copy(update={"learner": learner, "run": run})


def _ensure_process_group_env() -> None:
    """DeepSpeed needs rank variables even for one in-process rank."""
    if "MASTER_PORT" in os.environ and "RANK" in os.environ:
        return
    from learner.core import distributed_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    distributed_env(0, 1, "127.0.0.1", port)


class _Probe:
    """Greedy first turns on held-out prompts (data.eval), if any."""

    def __init__(self, cfg: Config, codec, image_tokens, image_processor):
        from env.service import EnvService
        from learner.eval_report import spread_subset

        self.env, self.samples = None, []
        specs = [s for s in cfg.data.eval if s.root is None or Path(s.root).exists()]
        if specs:
            self.env = EnvService(cfg.env, specs, cache_dir=str(cfg.model.cache_dir))
            ids = spread_subset(self.env.sample_ids(), cfg.sft.validate_samples)
            self.samples = [self.env.sample(i) for i in ids]
        self.codec, self.image_tokens, self.image_processor = codec, image_tokens, image_processor
        self.max_new_tokens = cfg.sft.validate_max_new_tokens

    def __call__(self, core) -> dict | None:
        from learner.greedy_probe import greedy_first_turns, valid_rate

        if not self.samples:
            return None
        res = greedy_first_turns(core.module.lm, self.image_processor, self.codec, self.env, self.samples,
                                 self.image_tokens, self.max_new_tokens, core.device)
        errors: dict[str, int] = {}
        for r in res:
            if r.error:
                errors[r.error] = errors.get(r.error, 0) + 1
        return {"first_turn_format_valid": valid_rate(res), "prompts": len(res), "errors": errors,
                "example": res[0].text[:400]}


@dataclass
class SftSession:
    """What a supervised pass over VTS-CoT records needs, set up the way `learner.sft` trains: the
    env, the replayed examples, the learner core and the SAM2 feature source. Shared by
    `run_sft` and the probes in benchmarks/ so they read records exactly as training does."""

    cfg: Config
    policy_dir: Path
    env: Any
    processor: Any
    codec: Any
    image_tokens: Callable
    records: list
    examples: list
    skipped: list
    core: Any
    pool: Any
    source: Any


def open_session(cfg: Config, trajectories: str | Path) -> SftSession:
    """Resolve the policy and SAM2, replay `trajectories` on cfg.data.train and build the learner
    core (sft's schedule) and an in-process reward-pool core for keyframe features. Raises
    ValueError when no record can be replayed."""
    from transformers import AutoProcessor

    from env.prompts import SYSTEM_PROMPT
    from env.service import EnvService
    from env.vtscot import read_vtscot
    from learner.core import LearnerCore
    from learner.sft_data import FrameFeatureSource, build_examples
    from learner.system import policy_hidden_size, prepare_sam2, resolve_paths, resolve_policy_dir
    from rollout.conversation import ConversationCodec
    from rollout.processor_config import family_of_model_type, image_token_count
    from segmentation.reward_pool import RewardPoolCore

    cfg = prepare_sam2(resolve_paths(cfg))
    policy_dir = resolve_policy_dir(cfg)
    cache_dir = str(cfg.model.cache_dir)
    env = EnvService(cfg.env, cfg.data.train, cache_dir=cache_dir)
    processor = AutoProcessor.from_pretrained(str(policy_dir))
    codec = ConversationCodec(processor.tokenizer, SYSTEM_PROMPT)
    family = family_of_model_type(json.loads((policy_dir / "config.json").read_text())["model_type"])

    def image_tokens(im):
        return image_token_count(im.shape[0], im.shape[1], family)

    records = list(read_vtscot(trajectories))
    examples, skipped = build_examples(records, env, codec, image_tokens, cfg.sft.mask_on_seen_keyframe,
                                       cfg.sft.strict_frames)
    if not examples:
        raise ValueError(f"none of the {len(records)} records of {trajectories} can be replayed with "
                         f"this config; first reason: {skipped[0][1] if skipped else 'the file is empty'}")
    _ensure_process_group_env()
    core = LearnerCore(learner_config(cfg), policy_dir, frame_fetcher=env.frames_for)
    pool = RewardPoolCore(cfg.model, cfg.reward, policy_hidden_size(policy_dir), datasets=cfg.data.train,
                          data_cache_dir=cache_dir)
    return SftSession(cfg, policy_dir, env, processor, codec, image_tokens, records, examples, skipped, core,
                      pool, FrameFeatureSource(pool))


def run_sft(cfg: Config) -> dict:
    """Train and export; returns the summary (also written to summary.json)."""
    import torch

    from learner.sft_data import batch_order, step_targets

    if cfg.sft.trajectories is None:
        raise ValueError("sft.trajectories is not set: give a VTS-CoT file (python -m env.vtscot_oracle writes one)")
    started = time.time()
    session = open_session(cfg, cfg.sft.trajectories)
    cfg, core, source, examples, records = session.cfg, session.core, session.source, session.examples, session.records
    out = Path(cfg.sft.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    log.info("SFT on %d trajectories (%d left out) from %s", len(examples), len(session.skipped), cfg.sft.trajectories)
    probe = _Probe(cfg, session.codec, session.image_tokens, session.processor.image_processor)
    s = cfg.sft
    metrics = open(out / "metrics.jsonl", "w")
    summary: dict = {"records": len(records), "used": len(examples), "skipped": session.skipped[:50],
                     "policy_in": str(session.policy_dir), "trajectories": str(cfg.sft.trajectories)}
    teacher = None
    if s.prompt_align_weight > 0:
        from segmentation.pretrain_text_prompt import load_prompt_teacher

        teacher = load_prompt_teacher(s.prompt_teacher, core.module.projector.out_dim, "sft.prompt_teacher")
        spread = teacher.spread([ex.traj.sample.expression for ex in examples])
        summary["prompt_teacher"] = {"path": str(s.prompt_teacher), "spread": spread}
    try:
        summary["probe_before"] = probe(core)
        order = batch_order(len(examples), s.batch_size, cfg.run.seed)
        first, checkpoints = None, []
        for step in range(s.steps):
            t0 = time.time()
            batch = [examples[i] for i in next(order)]
            trajs, targets, feats = step_targets(batch, source)
            prompts = [teacher(ex.traj.sample.expression) for ex in batch] if teacher else None
            # Divided by the spread, an align loss of 1 is what always writing the mean prompt scores.
            stats = core.sft_step(trajs, targets, feats, s.lm_loss_weight, s.mask_loss_weight, prompts,
                                  s.prompt_align_weight / spread if teacher else 0.0)
            rec = {"step": step, **stats, "seconds": time.time() - t0}
            first = first or rec
            if s.validate_every and (step + 1) % s.validate_every == 0 and step + 1 < s.steps:
                rec["probe"] = probe(core)
            if s.export_every and (step + 1) % s.export_every == 0 and step + 1 < s.steps:
                rec["checkpoint"] = str(core.export_policy(out / "checkpoints" / f"step_{step + 1}"))
                checkpoints.append({"step": step + 1, "policy": rec["checkpoint"]})
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            if step % s.log_every == 0 or step + 1 == s.steps:
                log.info("sft step %d/%d lm %.4f mask %.4f heads %.4f align %.4f acc %.3f", step + 1, s.steps,
                         stats["lm_loss"], stats["mask_loss"], stats["score_loss"], stats["align_loss"],
                         stats["token_accuracy"])
        summary.update(first_step=first, last_step=rec)
        summary["probe_after"] = probe(core)
        policy_out = core.export_policy(out / "policy")
        summary["checkpoints"] = checkpoints + [{"step": s.steps, "policy": str(policy_out)}]
    finally:
        metrics.close()
    summary.update(policy=str(policy_out), seconds=time.time() - started, torch_threads=torch.get_num_threads())
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m learner.sft", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="debug_cpu", help=f"one of {available_presets()}")
    ap.add_argument("--config", default=None)
    ap.add_argument("overrides", nargs="*", help="dotted overrides such as sft.trajectories=FILE sft.steps=100")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.preset, args.overrides, args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(".cache/torch_extensions"))
    from env.errors import DataError

    try:
        summary = run_sft(cfg)
    except (FileNotFoundError, ValueError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    after = summary.get("probe_after") or {}
    print(json.dumps({"policy": summary["policy"], "used": summary["used"],
                      "first_turn_format_valid": after.get("first_turn_format_valid"),
                      "lm_loss": summary["last_step"]["lm_loss"], "mask_loss": summary["last_step"]["mask_loss"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
