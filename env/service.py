"""`EnvService`: everything the env actor does, as a plain Python object (testable without Ray).

It owns the datasets, one frame server (with its cache) and the episode logic, and answers:
episode reset/step, ground truth for the reward pool, frames for given indices, sample lookup.
Nothing here keeps per-episode state; callers pass an `EpisodeState` in and get a new one back.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from env.datasets import Dataset, load_dataset
from env.episode import EpisodeLogic
from env.errors import DatasetFormatError, UnknownSampleError
from env.frame_cache import make_frame_cache
from env.frames import FrameServer
from env.types import EpisodeState, FrameRef, Sample, StepResult

log = logging.getLogger(__name__)


def _env_config(cfg):
    from configs.schema import EnvConfig

    return cfg if isinstance(cfg, EnvConfig) else EnvConfig.model_validate(cfg or {})


def _dataset_spec(spec):
    from configs.schema import DatasetSpec

    return spec if isinstance(spec, DatasetSpec) else DatasetSpec.model_validate(spec)


class EnvService:
    """The environment core. `datasets` are DatasetSpecs (or dicts) or already-open Datasets."""

    def __init__(self, env_cfg, datasets: Iterable, cache_dir: str | Path | None = None,
                 index_dir: str | Path | None = None):
        self.cfg = _env_config(env_cfg)
        # An env replica gets a fraction of a core; OpenCV would start one resize thread per core.
        cv2.setNumThreads(1)
        self.datasets: dict[str, Dataset] = {}
        for item in datasets:
            ds = item if isinstance(item, Dataset) else load_dataset(_dataset_spec(item), cache_dir,
                                                                     index_dir)
            if "/" in ds.name:
                raise DatasetFormatError(f"dataset name '{ds.name}' must not contain '/' "
                                         "(it prefixes sample ids)")
            if ds.name in self.datasets:
                raise DatasetFormatError(f"two datasets are named '{ds.name}'")
            self.datasets[ds.name] = ds
        self.frame_server = FrameServer(self.datasets, make_frame_cache(self.cfg.frame_cache))
        self.logic = EpisodeLogic(self.cfg, self.datasets, self.frame_server)

    # ------------------------------------------------------------------------- lookup
    def dataset(self, name: str) -> Dataset:
        try:
            return self.datasets[name]
        except KeyError:
            raise UnknownSampleError(f"no dataset named '{name}' (have: {sorted(self.datasets)})") from None

    def sample(self, sample_id: str) -> Sample:
        name = sample_id.split("/", 1)[0]
        return self.dataset(name).sample(sample_id)

    def _resolve(self, sample: Sample | str) -> Sample:
        return self.sample(sample) if isinstance(sample, str) else sample

    def _samples(self, dataset: str | None):
        for name in [dataset] if dataset else list(self.datasets):
            yield from self.dataset(name).samples()

    def sample_ids(self, dataset: str | None = None) -> list[str]:
        return [s.sample_id for s in self._samples(dataset)]

    def expressions(self, dataset: str | None = None) -> list[str]:
        """The referring expression of every sample (of one dataset, or all)."""
        return [s.expression for s in self._samples(dataset)]

    # ------------------------------------------------------------------------ episodes
    def reset(self, sample: Sample | str, episode_id: str) -> StepResult:
        return self.logic.reset(self._resolve(sample), episode_id)

    def step(self, state: EpisodeState, assistant_text: str) -> StepResult:
        return self.logic.step(state, assistant_text)

    # ---------------------------------------------------------------- reward-pool access
    def gt_masks(self, sample: Sample | str, indices: Sequence[int]) -> np.ndarray:
        sample = self._resolve(sample)
        return self.dataset(sample.dataset).gt_masks(sample, list(indices))

    def presence(self, sample: Sample | str) -> tuple[bool, ...]:
        sample = self._resolve(sample)
        return self.dataset(sample.dataset).presence(sample)

    def foreground_pixels(self, sample: Sample | str) -> np.ndarray | None:
        """Per-frame foreground pixel counts of the sample's video (ReVOS layout), else None."""
        sample = self._resolve(sample)
        return self.dataset(sample.dataset).foreground_pixels(sample.video_id)

    def frames(self, dataset: str, video_id: str, indices: Sequence[int],
               pixels: int = 0) -> list[np.ndarray]:
        """Frames of one video at a budget (0 = original resolution), through the frame cache."""
        return self.frame_server.get(dataset, video_id, list(indices), pixels)

    def frames_for(self, refs: Sequence[FrameRef]) -> list[np.ndarray]:
        """Images for FrameRefs, e.g. to rebuild a trajectory's inputs on the learner side."""
        return self.frame_server.get_refs(list(refs))

    # --------------------------------------------------------------------------- health
    def stats(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "datasets": {n: len(d) for n, d in self.datasets.items()},
                "skipped": {n: len(d.skipped) for n, d in self.datasets.items()},
                **self.frame_server.stats()}
