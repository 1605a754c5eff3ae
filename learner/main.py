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
    import ray

    from cluster.ray_setup import create_role_placement, init_ray, shutdown_ray
    from learner import rl_step
    from learner.data import PromptSource
    from learner.ledger import open_ledger
    from learner.run_dir import MetricsLog, RunDir
    from learner.system import (prepare_sam2, resolve_paths, resolve_policy_dir, shutdown_system,
                                start_system, sync_weights)

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
        placements = create_role_placement(cfg)
        system = start_system(cfg, policy_dir, placements)
        ledger = open_ledger(cfg.cluster, run.root, cfg.run.name)
        sample_ids = ray.get(system.envs[0].sample_ids.remote())
        prompts = PromptSource(sample_ids, cfg.run.seed, {d.name: d.weight for d in cfg.data.train})
        run.write_datasets({d.name: sum(s.startswith(d.name + "/") for s in sample_ids) for d in cfg.data.train})
        start_step, version = 0, 0
        if latest is not None:
            state = RunDir.driver_state(latest)
            system.learners.load_checkpoint(str(latest / "learner"), "learner")
            prompts.load_state(state["cursor"])
            random.setstate(tuple(_as_tuple(state["driver_rng"])))
            start_step, version = state["step"] + 1, state["policy_version"]
            rolled = ledger.rollback_after(state["step"])
            log.info("resumed from %s (step %d, policy v%d; %d ledger rows re-opened)", latest.name,
                     state["step"], version, rolled)
        metrics = MetricsLog(run.metrics_path, cfg.run.steps,
                             truncate_after=start_step - 1 if latest is not None else -1)
        sync_weights(system, version)  # engines and pool start from the learner's weights
        group, n_prompts = cfg.learner.group_size, cfg.learner.prompts_per_step
        timeout = cfg.run.step_timeout_s

        def launch(step):
            ids, epoch = prompts.take(n_prompts, skip=set(ledger.quarantined()))
            ledger.begin(step, epoch, ids, version)
            samples = ray.get([system.envs[0].sample.remote(i) for i in ids])
            return {"ids": ids, "epoch": epoch, "refs": system.rollout.launch(samples, group, step), "t": time.time()}

        pending = launch(start_step)
        for step in range(start_step, cfg.run.steps):
            t0 = time.time()
            batch, pending = pending, None
            trajs = system.rollout.collect(batch["refs"], timeout)
            t_rollout = time.time() - batch["t"]
            if cfg.run.async_mode and step + 1 < cfg.run.steps:
                pending = launch(step + 1)  # overlaps with scoring and training below
            t1 = time.time()
            outs = system.learners.score(trajs, timeout)
            t2 = time.time()
            results = system.pool.score(rl_step.score_requests(trajs, outs), timeout_s=timeout)
            t3 = time.time()
            adv, keep = rl_step.advantages(trajs, results, cfg)
            items, totals = rl_step.train_items(trajs, outs, results, adv, keep, cfg)
            train_stats = system.learners.train(items, totals, timeout) if items else {}
            t4 = time.time()
            if pending is not None:
                ray.wait(pending["refs"], num_returns=len(pending["refs"]), timeout=timeout)
            t5 = time.time()
            version += 1
            sync_detail = sync_weights(system, version)
            ledger.commit(step, batch["epoch"], batch["ids"])
            t6 = time.time()
            timings = {"rollout": t_rollout, "score": t2 - t1, "reward": t3 - t2, "train": t4 - t3,
                       "wait_rollout": t5 - t4, "sync": t6 - t5, "step": t6 - t0,
                       **{f"sync_{k}": v for k, v in sync_detail.items() if k != "tensors"}}
            metrics.log(rl_step.step_metrics(step, version, trajs, results, train_stats, totals, timings,
                                             ledger.counts(), outs))
            if (step + 1) % cfg.run.checkpoint_every == 0 or step + 1 == cfg.run.steps:
                save_checkpoint(run, system, step, version, prompts, pending is not None)
            if pending is None and step + 1 < cfg.run.steps:
                pending = launch(step + 1)
        metrics.close()
        log.info("done: %d steps, metrics in %s, checkpoints in %s", cfg.run.steps, run.metrics_path, run.checkpoints)
        return 0
    finally:
        if ledger is not None:
            ledger.close()
        shutdown_system(system)
        shutdown_ray(ctx, placements)


def save_checkpoint(run, system, step: int, version: int, prompts, prefetched: bool) -> None:
    path = run.begin_checkpoint(step)
    cursor = prompts.state()
    if prefetched:
        # The next batch was already taken from the source; a resume must take it again.
        cursor["position"] -= system.cfg.learner.prompts_per_step
        cursor["position"] = max(cursor["position"], 0)
    system.learners.save_checkpoint(str(path / "learner"), "learner", {"step": step, "version": version})
    system.learners.export_policy(str(path / "policy"))
    run.finish_checkpoint(path, {"step": step, "policy_version": version, "cursor": cursor,
                                 "driver_rng": random.getstate()})


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list) else x


if __name__ == "__main__":
    raise SystemExit(main())
