"""The rollout Ray actor (one vLLM engine each) and the router that spreads groups over actors.

The actor is an async actor: many `generate` calls interleave on its event loop and share one
engine's continuous batching. The router keeps every episode of a group on one actor, so the
group's shared turn-0 prompt is prefilled once and then served from that engine's prefix cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

from configs.schema import Config

log = logging.getLogger(__name__)


class RolloutWorker:
    """Thin shell over RolloutService; created with `ray.remote(...)(RolloutWorker)`."""

    def __init__(self, cfg: dict, model_dir: str, env_handles: list, worker_index: int = 0):
        from rollout.service import RayEnvClient, RolloutService
        from rollout.shm_segments import reap_stale_weight_dirs

        logging.basicConfig(level=logging.INFO)
        reap_stale_weight_dirs()  # staged weights of workers killed on this node
        self.cfg = Config.model_validate(cfg)
        self.index = worker_index
        self.env = RayEnvClient(env_handles, timeout_s=self.cfg.rollout.request_timeout_s)
        self.service = RolloutService(self.cfg, model_dir, self.env, seed=self.cfg.run.seed + worker_index)
        self.in_flight = 0

    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> dict:
        return {"pid": os.getpid(), "startup_seconds": self.service.engine.startup_seconds,
                "weight_version": self.service.weight_version}

    async def generate(self, samples: list, group_size: int, rollout_step: int = 0, greedy: bool = False,
                       eval_env_handles: list | None = None):
        from rollout.service import RayEnvClient

        sampling = self.cfg.rollout.eval_sampling if greedy else None
        env = RayEnvClient(eval_env_handles) if eval_env_handles else None
        self.in_flight += len(samples) * group_size
        try:
            return await self.service.generate(samples, group_size, rollout_step, sampling, env)
        finally:
            self.in_flight -= len(samples) * group_size

    async def update_weights(self, update, version: int) -> dict:
        """Load weights `version` from a `rollout.weight_transport.WeightUpdate`."""
        import ray

        if update.source_for(ray.get_runtime_context().get_node_id()) == "shared_memory":
            return {**await self.service.update_weights(update.version_dir, version), "transport": "shared_memory"}
        started = time.time()
        # Fetching and writing hundreds of MB must not stall this actor's event loop.
        staged = await asyncio.to_thread(self._stage, update)
        fetched = time.time() - started
        try:
            info = await self.service.update_weights(str(staged), version)
        finally:
            shutil.rmtree(staged, ignore_errors=True)  # the engine holds the weights now
        return {**info, "transport": "object_store", "fetch_seconds": fetched}

    @staticmethod
    def _stage(update) -> Path:
        from rollout.weight_transport import default_shm_root, fetch_and_stage

        # One folder per worker process (named by pid, so a killed worker's folder can be reaped).
        return fetch_and_stage(update, default_shm_root() / f"videoseg_staged_{os.getpid()}")

    async def pause(self) -> None:
        await self.service.engine.pause()

    async def resume(self) -> None:
        await self.service.engine.resume()

    async def health(self) -> dict:
        await self.service.engine.check_health()
        return {"pid": os.getpid(), "in_flight": self.in_flight, "weight_version": self.service.weight_version}

    def set_constrain_format(self, on: bool) -> None:
        """Switch grammar-constrained sampling (debugging and tests; normally set from config)."""
        self.service.engine.cfg = self.service.engine.cfg.model_copy(update={"constrain_format": bool(on)})

    async def score_sequence(self, prompt_ids: list, images: list):
        return await self.service.engine.score_sequence(prompt_ids, images)

    def shutdown(self) -> None:
        from rollout.weight_transport import default_shm_root

        self.service.shutdown()
        shutil.rmtree(default_shm_root() / f"videoseg_staged_{os.getpid()}", ignore_errors=True)


def create_rollout_workers(cfg: Config, model_dir: str, env_handles: list, n: int | None = None,
                           wait: bool = True, placement_group=None) -> list:
    import ray

    n = n or cfg.rollout.num_workers
    res = cfg.cluster.rollout
    opts = dict(num_cpus=res.num_cpus, num_gpus=res.num_gpus, max_restarts=cfg.cluster.actor_max_restarts,
                max_concurrency=1000)
    remote_cls = ray.remote(**opts)(RolloutWorker)
    workers = []
    for i in range(n):
        options = {}
        if placement_group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=placement_group)
        workers.append(remote_cls.options(**options).remote(cfg.model_dump(mode="json"), str(model_dir),
                                                            env_handles, i))
    if wait:
        ray.get([w.ready.remote() for w in workers])
    return workers


class RolloutRouter:
    """Splits a batch of prompts over workers (whole groups only), balancing episode counts."""

    def __init__(self, workers: list):
        if not workers:
            raise ValueError("RolloutRouter needs at least one worker")
        self.workers = list(workers)

    def assign(self, samples: list) -> list[list]:
        chunks: list[list] = [[] for _ in self.workers]
        for i, s in enumerate(samples):
            chunks[i % len(self.workers)].append(s)
        return chunks

    async def generate(self, samples: list, group_size: int, rollout_step: int, greedy: bool = False,
                       eval_env_handles: list | None = None) -> list:
        chunks = self.assign(samples)
        refs = [w.generate.remote(c, group_size, rollout_step, greedy, eval_env_handles)
                for w, c in zip(self.workers, chunks) if c]
        results = await asyncio.gather(*refs)
        return [t for part in results for t in part]

    def launch(self, samples: list, group_size: int, rollout_step: int, greedy: bool = False,
               eval_env_handles: list | None = None) -> list:
        """Start generation on every worker; returns the object refs (collect with `collect`)."""
        chunks = self.assign(samples)
        return [w.generate.remote(c, group_size, rollout_step, greedy, eval_env_handles)
                for w, c in zip(self.workers, chunks) if c]

    @staticmethod
    def collect(refs: list, timeout: float | None = None) -> list:
        import ray

        return [t for part in ray.get(refs, timeout=timeout) for t in part]

    def update_weights(self, update, version: int) -> list:
        import ray

        return ray.get([w.update_weights.remote(update, version) for w in self.workers])
