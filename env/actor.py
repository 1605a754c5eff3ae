"""The Ray actor serving the video environment: a thin shell around `env.service.EnvService`.

Every method is a direct call into the service. The actor keeps no episode state (callers carry
`EpisodeState`), so Ray may restart it (max_restarts) and retry calls (max_task_retries) without
losing anything. Errors raised by a method (`env.errors.DataError` subclasses for bad data) reach
the caller as exceptions of the same class; the actor process itself keeps serving.

    actors = create_env_actors(cfg.env, cfg.data.train, n=cfg.env.num_actors, num_cpus=0.5)
    result = ray.get(actors[0].reset.remote(sample_id, "ep-0"))
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from env.service import EnvService
from env.types import EpisodeState, FrameRef, Sample, StepResult


class VideoEnvActor:
    """Method-for-method wrapper of EnvService; becomes a Ray actor via `create_env_actors`."""

    def __init__(self, env_cfg, datasets: Sequence, cache_dir: str | Path | None = None,
                 index_dir: str | Path | None = None, log_level: int = logging.INFO):
        logging.basicConfig(level=log_level)
        self._service = EnvService(env_cfg, datasets, cache_dir=cache_dir, index_dir=index_dir)

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        import os

        return os.getpid()

    def reset(self, sample: Sample | str, episode_id: str) -> StepResult:
        return self._service.reset(sample, episode_id)

    def step(self, state: EpisodeState, assistant_text: str) -> StepResult:
        return self._service.step(state, assistant_text)

    def sample(self, sample_id: str) -> Sample:
        return self._service.sample(sample_id)

    def samples(self, sample_ids: Sequence[str]) -> list[Sample]:
        return [self._service.sample(i) for i in sample_ids]

    def sample_ids(self, dataset: str | None = None) -> list[str]:
        return self._service.sample_ids(dataset)

    def expressions(self, dataset: str | None = None) -> list[str]:
        return self._service.expressions(dataset)

    def gt_masks(self, sample: Sample | str, indices: Sequence[int]) -> np.ndarray:
        return self._service.gt_masks(sample, indices)

    def presence(self, sample: Sample | str) -> tuple[bool, ...]:
        return self._service.presence(sample)

    def foreground_pixels(self, sample: Sample | str) -> np.ndarray | None:
        return self._service.foreground_pixels(sample)

    def frames(self, dataset: str, video_id: str, indices: Sequence[int],
               pixels: int = 0) -> list[np.ndarray]:
        return self._service.frames(dataset, video_id, indices, pixels)

    def frames_for(self, refs: Sequence[FrameRef]) -> list[np.ndarray]:
        return self._service.frames_for(refs)

    def stats(self) -> dict:
        return self._service.stats()


def _plain(obj):
    """Pydantic configs travel to the actor as dicts (validated again on the other side)."""
    return obj.model_dump(mode="json") if hasattr(obj, "model_dump") else obj


def create_env_actors(env_cfg, datasets: Sequence, n: int = 1, num_cpus: float = 0.5,
                      cache_dir: str | Path | None = None, index_dir: str | Path | None = None,
                      max_restarts: int = 3, name_prefix: str | None = None, wait: bool = True,
                      runtime_env: dict | None = None) -> list:
    """Start `n` env actors on the current Ray cluster; with wait=True, return once all are ready.

    Calls are retried on a restarted actor (max_task_retries): safe, because every method is a
    pure function of its arguments and the data on disk.
    """
    import ray

    remote_cls = ray.remote(num_cpus=num_cpus, max_restarts=max_restarts,
                            max_task_retries=max_restarts)(VideoEnvActor)
    specs = [_plain(d) for d in datasets]
    if cache_dir is not None:
        cache_dir = Path(cache_dir).resolve()  # workers may not share the driver's working directory
    if index_dir is not None:
        index_dir = Path(index_dir).resolve()
    actors = []
    for i in range(n):
        options: dict = {"name": f"{name_prefix}-{i}"} if name_prefix else {}
        if runtime_env:
            options["runtime_env"] = runtime_env
        actors.append(remote_cls.options(**options).remote(
            _plain(env_cfg), specs, str(cache_dir) if cache_dir else None,
            str(index_dir) if index_dir else None))
    if wait:
        ray.get([a.ready.remote() for a in actors])
    return actors
