"""Serving frames at pixel budgets: cache first, decode the misses once, resize, store.

`FrameServer.get_refs` takes a batch of `FrameRef`s (possibly from several videos and budgets),
looks all of them up in the frame cache at once, decodes each missing frame of a video in one
call (one frame decoded once even when it is needed at two budgets), resizes and caches them.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Callable, Mapping, Sequence

import numpy as np

from env.errors import UnknownSampleError
from env.frame_cache import frame_key
from env.types import FrameRef
from env.video import resize_to_budget

def as_lookup(datasets) -> Callable[[str], object]:
    """Accept a mapping name -> Dataset or a callable; return a callable with a clear error."""
    if callable(datasets) and not isinstance(datasets, Mapping):
        return datasets

    def lookup(name: str):
        try:
            return datasets[name]
        except KeyError:
            raise UnknownSampleError(f"no dataset named '{name}' is loaded "
                                     f"(have: {sorted(datasets)})") from None

    return lookup


class FrameServer:
    """Frames by (dataset, video, index, pixels) through a frame cache."""

    def __init__(self, datasets, cache):
        self._lookup = as_lookup(datasets)
        self.cache = cache
        self._lock = threading.Lock()
        self.counters = {"frames_served": 0, "frames_decoded": 0, "decode_calls": 0, "decode_seconds": 0.0}

    def _namespace(self, dataset_name: str) -> str:
        ds = self._lookup(dataset_name)
        return f"{ds.name}@{ds.fingerprint}"

    def get(self, dataset: str, video_id: str, indices: Sequence[int], pixels: int) -> list[np.ndarray]:
        """Frames of one video at one budget (pixels <= 0: original size), in the given order."""
        return self.get_refs([FrameRef(dataset, video_id, int(i), int(pixels)) for i in indices])

    def get_refs(self, refs: Sequence[FrameRef]) -> list[np.ndarray]:
        """Images for FrameRefs, in order. Raises DataError subclasses for bad data or indices."""
        if not refs:
            return []
        namespaces = {name: self._namespace(name) for name in {r.dataset for r in refs}}
        keys = [frame_key(namespaces[r.dataset], r.video_id, r.index, r.pixels) for r in refs]
        unique = list(dict.fromkeys(keys))
        found = dict(zip(unique, self.cache.get_many(unique)))
        # Group what is missing by video, so each video is decoded once for all budgets.
        wanted: dict[tuple[str, str], dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
        for ref, key in zip(refs, keys):
            if found[key] is None:
                wanted[(ref.dataset, ref.video_id)][ref.index].add(ref.pixels)
        fresh: list[tuple[str, np.ndarray]] = []
        for (dataset, video_id), per_index in wanted.items():
            indices = sorted(per_index)
            t0 = time.perf_counter()
            decoded = self._lookup(dataset).frames(video_id, indices)
            with self._lock:
                self.counters["decode_calls"] += 1
                self.counters["frames_decoded"] += len(indices)
                self.counters["decode_seconds"] += time.perf_counter() - t0
            for index, frame in zip(indices, decoded):
                for pixels in per_index[index]:
                    key = frame_key(namespaces[dataset], video_id, index, pixels)
                    img = resize_to_budget(frame, pixels)
                    if img is frame and len(per_index[index]) > 1:
                        img = img.copy()  # two budgets must not share one buffer
                    found[key] = img
                    fresh.append((key, img))
        if fresh:
            self.cache.put_many(fresh)
        with self._lock:
            self.counters["frames_served"] += len(refs)
        return [found[k] for k in keys]

    def stats(self) -> dict:
        with self._lock:
            counters = dict(self.counters)
        return counters | self.cache.stats()
