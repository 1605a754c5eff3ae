"""Where the reward pool gets pixels and ground truth: injected callables, or env.datasets.

The pool needs three things and asks for them through plain callables, so it can be tested with
synthetic arrays and wired to any dataset reader:
    frame_source(dataset, video_id, indices) -> list of RGB uint8 HxWx3 at original resolution
    gt_source(sample, indices)               -> bool (n, H, W): union of the sample's objects
    presence_source(sample)                  -> tuple[bool, ...] per frame (used when
                                                Sample.presence is empty)
`EnvDataSources` provides all three from `env.datasets.load_dataset` (docs/CONTRACTS.md).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from env.types import Sample

FrameSource = Callable[[str, str, list[int]], list[np.ndarray]]
GtSource = Callable[[Sample, list[int]], np.ndarray]
PresenceSource = Callable[[Sample], Sequence[bool]]


class EnvDataSources:
    """Frames, masks and presence through env.datasets, opening each dataset once by name."""

    def __init__(self, specs, cache_dir=None):
        try:
            from env.datasets import load_dataset  # noqa: F401  (fail early with a clear message)
        except ImportError as exc:
            raise ImportError("the reward pool's default data sources need env.datasets "
                              f"(docs/CONTRACTS.md); pass frame_source/gt_source instead ({exc})") from exc
        self._specs = {s.name: s for s in specs}
        self._cache_dir = cache_dir
        self._open: dict = {}

    def dataset(self, name: str):
        if name not in self._open:
            if name not in self._specs:
                raise KeyError(f"no dataset named '{name}' among {sorted(self._specs)}")
            from env.datasets import load_dataset

            self._open[name] = load_dataset(self._specs[name], cache_dir=self._cache_dir)
        return self._open[name]

    def frames(self, dataset: str, video_id: str, indices: list[int]) -> list[np.ndarray]:
        return self.dataset(dataset).frames(video_id, list(indices))

    def gt(self, sample: Sample, indices: list[int]) -> np.ndarray:
        return np.asarray(self.dataset(sample.dataset).gt_masks(sample, list(indices)), dtype=bool)

    def presence(self, sample: Sample) -> tuple[bool, ...]:
        return tuple(self.dataset(sample.dataset).presence(sample))
