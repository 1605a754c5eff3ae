"""Starting and stopping the actor groups of a run (weight sync: learner/supervisor.py).

    env actors      VideoEnvActor x env.num_actors       frames, episodes, ground truth
    reward pool     SegRewardPoolActor x reward.num_actors
    rollout         RolloutWorker x rollout.num_workers   one vLLM engine each
    learners        LearnerWorker x learner.num_ranks    one DeepSpeed rank each
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from configs import Config
from rollout.shm_segments import reap_stale_weight_dirs
from rollout.weight_transport import default_shm_root

log = logging.getLogger(__name__)


@dataclass
class System:
    cfg: Config
    policy_dir: str
    envs: list
    pool: object
    rollout: object
    learners: object
    placements: dict = field(default_factory=dict)
    shm_root: str = ""
    hidden_size: int = 0


def resolve_policy_dir(cfg: Config) -> Path:
    """The HF policy directory: a locally built tiny policy, or the user's checkpoint (checked)."""
    from rollout.tiny_policy import build_tiny_policy

    if cfg.model.is_tiny_policy:
        return build_tiny_policy(cfg.model.policy, cfg.model.cache_dir)
    path = Path(cfg.model.policy)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.policy={path} is not an HF model directory (no config.json)")
    return path


def policy_hidden_size(policy_dir: Path) -> int:
    import json

    conf = json.loads((policy_dir / "config.json").read_text())
    return int((conf.get("text_config") or conf)["hidden_size"])


def existing_datasets(specs) -> list:
    """The dataset specs whose roots exist, with absolute roots; a missing optional one is skipped
    with a warning, a missing required one raises FileNotFoundError."""
    kept = []
    for spec in specs:
        if spec.root is None:
            kept.append(spec)
            continue
        root = Path(spec.root).expanduser().resolve()
        if not root.exists():
            if spec.optional:
                log.warning("dataset '%s': root %s does not exist; skipped (optional)", spec.name, root)
                continue
            raise FileNotFoundError(f"dataset '{spec.name}': root {root} does not exist")
        kept.append(spec.model_copy(update={"root": root}))
    return kept


def resolve_paths(cfg: Config) -> Config:
    """Absolute paths (actors may run in another working directory) and the datasets that exist.

    A missing dataset root is an error, unless the dataset is marked optional: then it is skipped
    with a warning (the debug preset's DAVIS sample, which lives outside the repository)."""
    train = existing_datasets(cfg.data.train)
    if not train:
        raise ValueError("no training dataset is available (all missing or skipped)")
    model = cfg.model.model_copy(update={"cache_dir": Path(cfg.model.cache_dir).resolve()})
    run = cfg.run.model_copy(update={"output_dir": Path(cfg.run.output_dir).resolve()})
    data = cfg.data.model_copy(update={"train": train})
    return cfg.model_copy(update={"model": model, "run": run, "data": data})


def prepare_sam2(cfg: Config) -> Config:
    """Materialise shared random SAM2 weights once, before actors start, so they all agree."""
    from segmentation.sam2_models import TINY, materialize_random_checkpoint

    if cfg.model.sam2_checkpoint is not None:
        if not Path(cfg.model.sam2_checkpoint).is_file():
            raise FileNotFoundError(f"model.sam2_checkpoint={cfg.model.sam2_checkpoint} does not exist")
        return cfg
    sub = "sam2_tiny" if cfg.model.sam2_config == TINY else "sam2_random"
    materialize_random_checkpoint(cfg.model.sam2_config, cfg.model.sam2_image_size,
                                  Path(cfg.model.cache_dir) / sub, seed=0)
    return cfg


def start_system(cfg: Config, policy_dir: Path, placements: dict) -> System:
    import ray

    from cluster.ray_setup import actor_options
    from env.actor import VideoEnvActor
    from learner.actor import LearnerGroup
    from rollout.actor import RolloutRouter, RolloutWorker
    from segmentation.reward_pool import RewardPool, SegRewardPoolActor

    cache_dir = str(Path(cfg.model.cache_dir).resolve())
    specs = [d.model_dump(mode="json") for d in cfg.data.train]
    env_cls = ray.remote(VideoEnvActor)
    envs = [env_cls.options(**actor_options(cfg, "env", placements, i)).remote(
        cfg.env.model_dump(mode="json"), specs, cache_dir) for i in range(cfg.env.num_actors)]
    ray.get([e.ready.remote() for e in envs])

    hidden = policy_hidden_size(policy_dir)
    reward_cls = ray.remote(SegRewardPoolActor)
    pool_actors = []
    for i in range(cfg.reward.num_actors):
        opts = actor_options(cfg, "reward", placements, i)
        device = "cuda" if opts.get("num_gpus", 0) > 0 else "cpu"
        threads = max(1, int(opts.get("num_cpus") or 1)) if device == "cpu" else None
        pool_actors.append(reward_cls.options(**opts).remote(
            cfg.model, cfg.reward, hidden, list(cfg.data.train), None, None, None, device, threads, cache_dir))
    pool = RewardPool(pool_actors)

    roll_cls = ray.remote(RolloutWorker)
    workers = [roll_cls.options(max_concurrency=1000, **actor_options(cfg, "rollout", placements, i)).remote(
        cfg.model_dump(mode="json"), str(policy_dir), envs, i) for i in range(cfg.rollout.num_workers)]
    ray.get([w.ready.remote() for w in workers])
    ray.get([a.version.remote() for a in pool_actors])

    learners = LearnerGroup.start(cfg, str(policy_dir), envs, options=actor_options(cfg, "learner"),
                                  placement_group=(placements or {}).get("learner"))
    shm = default_shm_root(cfg.run.output_dir)
    reap_stale_weight_dirs()  # left by drivers that were killed on this host
    shm_root = shm / f"videoseg_weights_{cfg.run.name}_{os.getpid()}"
    return System(cfg, str(policy_dir), envs, pool, RolloutRouter(workers), learners, placements or {},
                  str(shm_root), hidden)


def shutdown_system(system: System | None) -> None:
    import shutil

    import ray

    if system is None:
        return
    try:
        ray.get([w.shutdown.remote() for w in system.rollout.workers], timeout=60)
    except Exception as exc:  # engines already gone
        log.warning("rollout shutdown: %s", exc)
    shutil.rmtree(system.shm_root, ignore_errors=True)
