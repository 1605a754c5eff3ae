"""The `Dataset` interface every reader implements, and the logic they share.

A reader knows three things about its layout: which videos and expressions exist
(`_build_samples`), where a video's frames live (`_video_path`), and how to get one object's mask
on one frame (`_object_mask`). Everything else (frame access with range checks, unions of object
masks, presence vectors, sample lookup, the Parquet index) is implemented once here.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from env.errors import CorruptVideoError, DataError, MissingAnnotationError, UnknownSampleError
from env.types import Sample
from env.video import VideoSourceCache, check_indices

if TYPE_CHECKING:
    from env.index import SampleIndex

log = logging.getLogger(__name__)


@dataclass
class VideoInfo:
    """What a reader knows about one video without decoding it."""

    video_id: str
    frames: list[str]  # frame stems; position = frame index
    height: int = 0  # 0 = not known yet (read lazily from a frame or an annotation)
    width: int = 0


def make_sample_id(dataset: str, video_id: str, exp_id: str) -> str:
    return f"{dataset}/{video_id}/{exp_id}"


def held_out_videos(video_ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded share of the distinct video ids to hold out (at least one, never all), so records
    of one video never sit on both sides of a split."""
    videos = sorted(set(video_ids))
    if len(videos) < 2:
        raise ValueError("a held-out split needs at least two videos (one is held out)")
    n = min(len(videos) - 1, max(1, int(round(len(videos) * fraction))))
    order = np.random.default_rng(seed).permutation(len(videos))
    return {videos[i] for i in order[:n]}


def fingerprint_of(fmt: str, root: Path, files: list[Path]) -> str:
    """Short hash of what identifies the data: format, absolute root, annotation files' size/mtime."""
    h = hashlib.sha256(f"{fmt}|{Path(root).resolve()}".encode())
    for f in files:
        try:
            st = f.stat()
            h.update(f"|{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"|{f.name}:missing".encode())
    return h.hexdigest()[:12]


class Dataset:
    """A set of (video, expression) samples with frames and ground-truth masks.

    Subclasses fill `self._videos` in their constructor and implement the three hooks below.
    `fingerprint` identifies the data on disk (root, annotation files and their sizes/mtimes);
    the frame cache and the sample index key on it so two datasets sharing a name never mix.
    """

    format: str = "?"

    def __init__(self, name: str, root: Path, fingerprint: str, video_threads: int = 1):
        self.name = name
        self.root = Path(root)
        self.fingerprint = fingerprint
        self._videos: dict[str, VideoInfo] = {}
        self._samples: dict[str, Sample] | None = None
        self._index: SampleIndex | None = None
        self._sources = VideoSourceCache(capacity=8, num_threads=video_threads)
        self._build_lock = threading.RLock()  # re-entrant: building samples loads masks
        # (sample_id, reason) of expressions left out because their annotation is unusable;
        # the driver's quarantine reads this instead of the run dying on one bad record.
        self.skipped: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ hooks for subclasses
    def _build_samples(self) -> list[Sample]:
        raise NotImplementedError

    def _video_path(self, video_id: str) -> Path:
        raise NotImplementedError

    def _object_mask(self, video_id: str, anno_id: str, index: int, size: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def _frame_size_from_annotations(self, video_id: str) -> tuple[int, int] | None:
        return None

    # ------------------------------------------------------------------------- samples
    def attach_index(self, index: "SampleIndex") -> None:
        """Serve samples from a Parquet index instead of re-reading the annotation files."""
        self._index = index

    def _sample_map(self) -> dict[str, Sample]:
        with self._build_lock:
            if self._samples is None:
                self._samples = {s.sample_id: s for s in self._build_samples()}
            return self._samples

    def samples(self) -> list[Sample]:
        if self._index is not None:
            return list(self._index.iter_samples())
        return list(self._sample_map().values())

    def sample(self, sample_id: str) -> Sample:
        if self._index is not None:
            return self._index.get(sample_id)
        try:
            return self._sample_map()[sample_id]
        except KeyError:
            raise UnknownSampleError(f"dataset '{self.name}' has no sample '{sample_id}'") from None

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else len(self._sample_map())

    def video_ids(self) -> list[str]:
        return list(self._videos)

    def _video(self, video_id: str) -> VideoInfo:
        info = self._videos.get(video_id)
        if info is None:
            raise UnknownSampleError(f"dataset '{self.name}' has no video '{video_id}'")
        return info

    # -------------------------------------------------------------------------- frames
    def num_frames(self, video_id: str) -> int:
        return len(self._video(video_id).frames)

    def frame_names(self, video_id: str) -> list[str]:
        """The video's frame stems in index order (the `frames` list of the meta file)."""
        return list(self._video(video_id).frames)

    def video_path(self, video_id: str) -> Path:
        """The frame folder or video file the frames are decoded from."""
        self._video(video_id)
        return self._video_path(video_id)

    def frame_size(self, video_id: str) -> tuple[int, int]:
        """(H, W) of the video's frames: from the meta file, else annotations, else frame 0."""
        info = self._video(video_id)
        if not (info.height and info.width):
            size = self._frame_size_from_annotations(video_id)
            if size is None:
                size = self.frames(video_id, [0])[0].shape[:2]
            info.height, info.width = int(size[0]), int(size[1])
        return info.height, info.width

    def frames(self, video_id: str, indices: Sequence[int]) -> list[np.ndarray]:
        """RGB uint8 HxWx3 frames at original resolution, in the order of `indices`."""
        info = self._video(video_id)
        indices = check_indices(indices, len(info.frames), f"video '{video_id}' of '{self.name}'")
        path = self._video_path(video_id)
        source = self._sources.get(path, info.frames)
        if len(source) < len(info.frames) and indices and max(indices) >= len(source):
            raise CorruptVideoError(
                f"video {path} decodes to {len(source)} frames but '{self.name}' lists "
                f"{len(info.frames)}; frame {max(indices)} cannot be read")
        try:
            return source.read(indices)
        except CorruptVideoError:
            self._sources.forget(path)  # the decoder may be left in a bad state
            raise

    # ---------------------------------------------------------------------- ground truth
    def gt_masks(self, sample: Sample, indices: Sequence[int]) -> np.ndarray:
        """bool (n, H, W): union of the sample's objects on each requested frame."""
        info = self._video(sample.video_id)
        indices = check_indices(indices, len(info.frames), f"ground truth of '{sample.sample_id}'")
        if not sample.anno_ids:
            raise MissingAnnotationError(f"sample '{sample.sample_id}' has no ground-truth objects "
                                         "(an inference-only split?)")
        size = self.frame_size(sample.video_id)
        out = np.zeros((len(indices), size[0], size[1]), dtype=bool)
        for row, index in enumerate(indices):
            for anno in sample.anno_ids:
                out[row] |= self._object_mask(sample.video_id, anno, index, size)
        return out

    def presence(self, sample: Sample) -> tuple[bool, ...]:
        """Whether the target (any of its objects) is visible, per frame of the video."""
        if sample.presence:
            return tuple(sample.presence)
        return self._compute_presence(sample.video_id, sample.anno_ids, sample.sample_id)

    def foreground_pixels(self, video_id: str) -> np.ndarray | None:
        """Per-frame pixel count of all annotated objects of the video (ReVOS robustness R needs it),
        or None where the layout ships no foreground (only the ReVOS layout does)."""
        return None

    def _compute_presence(self, video_id: str, anno_ids: Sequence[str], what: str) -> tuple[bool, ...]:
        n = self.num_frames(video_id)
        size = self.frame_size(video_id)
        if not anno_ids:
            raise MissingAnnotationError(f"'{what}' has no ground-truth objects")
        return tuple(bool(any(self._object_mask(video_id, a, i, size).any() for a in anno_ids))
                     for i in range(n))

    def _skip(self, sample_id: str, exc: DataError) -> None:
        log.warning("dataset %s: leaving out %s: %s", self.name, sample_id, exc)
        self.skipped.append((sample_id, str(exc)))

