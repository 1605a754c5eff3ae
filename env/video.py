"""Video decoding with random access, and resizing to pixel budgets.

Two kinds of video source, both addressed by 0-based frame index:
- a frame folder (`JPEGImages/<video>/<stem>.jpg`), read with OpenCV (PIL as a fallback for
  formats OpenCV cannot read), where the dataset's frame list maps index -> file stem;
- a video file (mp4 and friends), decoded with decord. Readers are kept open in a small LRU
  because decord continues forward from its current position cheaply, while reopening and
  seeking from the previous keyframe is what makes random access slow.

Library exceptions never escape: they become `env.errors` types with the path in the message.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from env.errors import CorruptVideoError, FrameIndexError, MissingFrameError, MissingVideoError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# ----------------------------------------------------------------------------------- budgets
def budget_shape(height: int, width: int, pixels: int) -> tuple[int, int]:
    """(h, w) of an image of size height x width shrunk to at most `pixels` pixels, aspect kept.

    Only ever shrinks: an image already within budget (or pixels <= 0, meaning "original") keeps
    its size. Rounding to the vision encoder's patch grid is the processor's job, not ours.
    """
    if pixels <= 0 or height * width <= pixels:
        return height, width
    scale = math.sqrt(pixels / (height * width))
    h = max(1, int(height * scale))
    w = max(1, int(width * scale))
    # Float error can leave us one row or column over budget; trim the longer side.
    while h * w > pixels and (h > 1 or w > 1):
        if h >= w:
            h -= 1
        else:
            w -= 1
    return h, w


def resize_to_budget(img: np.ndarray, pixels: int) -> np.ndarray:
    """Shrink an HxWxC (or HxW) image to at most `pixels` pixels, keeping its aspect ratio."""
    h, w = img.shape[:2]
    nh, nw = budget_shape(h, w, pixels)
    if (nh, nw) == (h, w):
        return img
    # INTER_AREA averages source pixels: the right filter when shrinking (no aliasing).
    out = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out)


def check_indices(indices: Sequence[int], num_frames: int, what: str) -> list[int]:
    """Validate frame indices against a video length; raises FrameIndexError naming the culprit."""
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise FrameIndexError(f"{what}: frame index {i!r} is not an integer")
        if not 0 <= int(i) < num_frames:
            raise FrameIndexError(f"{what}: frame index {int(i)} is out of range [0, {num_frames})")
        out.append(int(i))
    return out


# ----------------------------------------------------------------------------------- sources
class FrameFolderVideo:
    """A video stored as one image file per frame; index i is the file named frames[i]."""

    def __init__(self, folder: Path, frame_stems: Sequence[str] | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MissingVideoError(f"frame folder {self.folder} does not exist")
        files = {}
        for f in self.folder.iterdir():
            if f.suffix.lower() in FRAME_SUFFIXES:
                files.setdefault(f.stem, f)
        if frame_stems is None:
            frame_stems = sorted(files)
        self.stems = list(frame_stems)
        self._files = files
        if not self.stems:
            raise MissingVideoError(f"frame folder {self.folder} holds no image files")

    def __len__(self) -> int:
        return len(self.stems)

    def path_of(self, index: int) -> Path:
        stem = self.stems[index]
        path = self._files.get(stem)
        if path is None:
            raise MissingFrameError(f"frame {index} ('{stem}') has no image file in {self.folder}")
        return path

    def read(self, indices: Sequence[int]) -> list[np.ndarray]:
        indices = check_indices(indices, len(self), str(self.folder))
        return [self._read_one(i) for i in indices]

    def _read_one(self, index: int) -> np.ndarray:
        path = self.path_of(index)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is not None:
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        try:  # formats OpenCV was built without; also gives a better message for broken files
            from PIL import Image

            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except FileNotFoundError as exc:
            raise MissingFrameError(f"frame {index}: {path} disappeared") from exc
        except Exception as exc:
            raise MissingFrameError(f"frame {index}: {path} is not a readable image ({exc})") from exc


class DecordVideo:
    """A video file decoded with decord; frame i is the i-th decoded frame."""

    def __init__(self, path: Path, num_threads: int = 1):
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingVideoError(f"video file {self.path} does not exist")
        import decord

        self._lock = threading.Lock()  # a decord reader is not safe for concurrent use
        try:
            self._reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=num_threads)
            self._len = len(self._reader)
        except Exception as exc:
            raise CorruptVideoError(f"cannot open video {self.path}: {_short(exc)}") from exc
        if self._len <= 0:
            raise CorruptVideoError(f"video {self.path} has no decodable frames")

    def __len__(self) -> int:
        return self._len

    def read(self, indices: Sequence[int]) -> list[np.ndarray]:
        indices = check_indices(indices, len(self), str(self.path))
        if not indices:
            return []
        # decord wants ascending indices for efficient forward decoding; restore order after.
        unique = sorted(set(indices))
        with self._lock:
            try:
                batch = self._reader.get_batch(unique).asnumpy()
            except Exception as exc:
                raise CorruptVideoError(
                    f"decoding frames {unique[:8]}{'...' if len(unique) > 8 else ''} of {self.path} "
                    f"failed: {_short(exc)}") from exc
        pos = {idx: k for k, idx in enumerate(unique)}
        return [np.ascontiguousarray(batch[pos[i]]) for i in indices]


def _short(exc: Exception) -> str:
    """decord messages embed long C++ stack traces; keep the first useful line."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def find_video(frames_root: Path, video_id: str) -> Path:
    """The frame folder `<root>/<video>/` or a file `<root>/<video>.<ext>`; folder wins."""
    folder = frames_root / video_id
    if folder.is_dir():
        return folder
    for suffix in VIDEO_SUFFIXES:
        candidate = frames_root / f"{video_id}{suffix}"
        if candidate.is_file():
            return candidate
    raise MissingVideoError(
        f"video '{video_id}' not found: neither a folder {folder} nor a file {folder}.mp4 "
        f"(or {', '.join(VIDEO_SUFFIXES[1:])}) exists")


def open_video(path: Path, frame_stems: Sequence[str] | None = None, num_threads: int = 1):
    """Open a frame folder or a video file as a random-access source."""
    path = Path(path)
    if path.is_dir():
        return FrameFolderVideo(path, frame_stems)
    return DecordVideo(path, num_threads=num_threads)


class VideoSourceCache:
    """Keeps the most recently used video sources open (decord readers hold decoder state)."""

    def __init__(self, capacity: int = 8, num_threads: int = 1):
        self.capacity = max(1, capacity)
        self.num_threads = num_threads
        self._open: OrderedDict[Path, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, frame_stems: Sequence[str] | None = None):
        with self._lock:
            src = self._open.get(path)
            if src is not None:
                self._open.move_to_end(path)
                return src
        src = open_video(path, frame_stems, self.num_threads)
        with self._lock:
            self._open[path] = src
            while len(self._open) > self.capacity:
                self._open.popitem(last=False)
        return src

    def forget(self, path: Path) -> None:
        """Drop a source after a decode failure so the next call reopens it from scratch."""
        with self._lock:
            self._open.pop(path, None)
