"""`python -m learner.main`: the GRPO training driver.

    config -> Ray -> actors -> loop { prompts -> rollout -> score -> reward -> advantages
                                      -> train -> sync -> log -> checkpoint }

Usage:
    python -m learner.main                                   # local debug run (debug_cpu preset)
    python -m learner.main --preset paper_2b model.policy=/ckpt/2b model.sam2_checkpoint=/ckpt/sam2.pt
    python -m learner.main --config run.yaml --resume         # continue from the latest checkpoint
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time

from configs import ConfigError, available_presets, load_config

log = logging.getLogger("learner.main")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="VideoSEG-O3 GRPO training driver")
    ap.add_argument("--preset", default="debug_cpu", help=f"one of {available_presets()}")
    ap.add_argument("--config", default=None, help="a YAML config file (instead of a preset)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from the latest complete checkpoint (a fresh start when there is none)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides such as learner.lr=1e-6")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.preset, args.overrides, args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(".cache/torch_extensions"))
    return train(cfg, resume=args.resume or cfg.run.resume)


def train(cfg, resume: bool = False) -> int:
    from cluster.ray_setup import create_role_placement, init_ray, shutdown_ray
    from learner import rl_step
    from learner.data import PromptSource
    from learner.ledger import open_ledger
    from learner.run_dir import MetricsLog, RunDir
    from learner.supervisor import LearnerLost, Supervisor, actor_pids
    from learner.system import prepare_sam2, resolve_paths, resolve_policy_dir, shutdown_system, start_system

    cfg = resolve_paths(cfg)
    run = RunDir(cfg)
    latest = run.latest() if resume else None
    if resume and latest is None:
        log.info("--resume: no complete checkpoint under %s; starting from scratch", run.checkpoints)
    run.write_config(cfg, resuming=latest is not None)
    policy_dir = resolve_policy_dir(cfg)
    cfg = prepare_sam2(cfg)
    ctx = init_ray(cfg, extra_env={"TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"]})
    system, placements, ledger = None, None, None
    try:
        run.write_status(-1, "starting")
        placements = create_role_placement(cfg)
        system = start_system(cfg, policy_dir, placements)
        ledger = open_ledger(cfg.cluster, run.root, cfg.run.name)
        sup = Supervisor(system, ledger, cfg.run.step_timeout_s)
        run.write_actors(actor_pids(system))
        sample_ids = sup.env_call(lambda env: env.sample_ids.remote())
        prompts = PromptSource(sample_ids, cfg.run.seed, {d.name: d.weight for d in cfg.data.train})
        run.write_datasets({d.name: sum(s.startswith(d.name + "/") for s in sample_ids) for d in cfg.data.train})

        def restore(ckpt):
            """Learner state, data cursor, driver RNG and ledger as of checkpoint `ckpt` (or the start)."""
            if ckpt is None:
                prompts.load_state({"epoch": 0, "position": 0})
                ledger.rollback_after(-1)
                return 0, 0
            state = RunDir.driver_state(ckpt)
            sup.learner_call("load_checkpoint", str(ckpt / "learner"), "learner")
            prompts.load_state(state["cursor"])
            random.setstate(_as_tuple(state["driver_rng"]))
            rolled = ledger.rollback_after(state["step"])
            log.info("restored %s (step %d, policy v%d; %d ledger rows re-opened)", ckpt.name, state["step"],
                     state["policy_version"], rolled)
            return state["step"] + 1, state["policy_version"]

        step, version = restore(latest) if latest is not None else (0, 0)
        metrics = MetricsLog(run.metrics_path, cfg.run.steps, truncate_after=step - 1 if latest is not None else -1)
        sup.sync(version)  # engines and pool start from the learner's weights
        n_prompts, group = cfg.learner.prompts_per_step, cfg.learner.group_size

        def launch(step):
            cursor = prompts.state()  # where a resume must start if this batch is not trained yet
            ids, epoch = prompts.take(n_prompts, skip=set(ledger.quarantined()))
            ledger.begin(step, epoch, ids, version)
            samples = sup.env_call(lambda env: env.samples.remote(ids))
            return {"ids": ids, "epoch": epoch, "cursor": cursor, **sup.launch(samples, group, step)}

        pending = None
        while step < cfg.run.steps:
            sup.step = step
            try:
                pending = pending or launch(step)
                t0 = time.time()
                run.write_status(step, "rollout")
                batch, pending = pending, None
                trajs = sup.collect(batch)
                t_rollout = time.time() - batch["t"]
                if cfg.run.async_mode and step + 1 < cfg.run.steps:
                    pending = launch(step + 1)  # overlaps with scoring and training below
                trajs = rl_step.drop_failed_episodes(trajs, ledger)
                run.write_status(step, "score")
                t1 = time.time()
                outs = sup.learner_call("score", trajs) if trajs else []
                run.write_status(step, "reward")
                t2 = time.time()
                results = sup.reward(rl_step.score_requests(trajs, outs)) if trajs else []
                trajs, outs, results = rl_step.drop_unscorable(trajs, outs, results, ledger, cfg)
                rl_step.check_quarantine(ledger, len(sample_ids), cfg)
                t3 = time.time()
                adv, keep = rl_step.advantages(trajs, results, cfg)
                items, totals = rl_step.train_items(trajs, outs, results, adv, keep, cfg)
                run.write_status(step, "train")
                train_stats = sup.learner_call("train", items, totals) if items else {}
                t4 = time.time()
                if pending is not None:
                    sup.wait_rollout(pending)
                run.write_status(step, "sync")
                t5 = time.time()
                version += 1
                sync_detail = sup.sync(version)
                ledger.commit(step, batch["epoch"], sorted({t.sample.sample_id for t in trajs}))
                t6 = time.time()
                timings = {"rollout": t_rollout, "score": t2 - t1, "reward": t3 - t2, "train": t4 - t3,
                           "wait_rollout": t5 - t4, "sync": t6 - t5, "step": t6 - t0,
                           **{f"sync_{k}": v for k, v in sync_detail.items()}}
                metrics.log(rl_step.step_metrics(step, version, trajs, results, train_stats, totals, timings,
                                                 ledger.counts(), outs))
                if (step + 1) % cfg.run.checkpoint_every == 0 or step + 1 == cfg.run.steps:
                    run.write_status(step, "checkpoint")
                    save_checkpoint(run, sup, step, version, pending["cursor"] if pending else prompts.state())
                step += 1
            except LearnerLost as exc:
                log.warning("a learner rank was lost (%s); continuing from the last checkpoint", exc)
                pending = None
                sup.rebuild_learners()
                step, version = restore(run.latest())
                sup.sync(version)
                run.write_actors(actor_pids(system))
        run.write_status(step, "done")
        metrics.close()
        log.info("done: %d steps, metrics in %s, checkpoints in %s", cfg.run.steps, run.metrics_path, run.checkpoints)
        return 0
    finally:
        if ledger is not None:
            ledger.close()
        shutdown_system(system)
        shutdown_ray(ctx, placements)


def save_checkpoint(run, sup, step: int, version: int, cursor: dict) -> None:
    path = run.begin_checkpoint(step)
    sup.learner_call("save_checkpoint", str(path / "learner"), "learner", {"step": step, "version": version})
    sup.learner_call("export_policy", str(path / "policy"))
    run.finish_checkpoint(path, {"step": step, "policy_version": version, "cursor": cursor,
                                 "driver_rng": random.getstate()})


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list) else x


if __name__ == "__main__":
    raise SystemExit(main())
