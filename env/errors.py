"""Errors of the data layer: every failure to read a video, a frame or an annotation.

All of them derive from `DataError`, so callers (the env actor, the reward pool, the ledger's
quarantine) can catch one type and still tell the cases apart. Each carries only a message, so it
pickles cleanly across Ray and reaches the caller intact instead of as a library's raw exception.
"""

from __future__ import annotations


class DataError(Exception):
    """Base class: something about a dataset, video or annotation is unusable."""


class DatasetFormatError(DataError):
    """A dataset root or index file does not have the layout its format promises."""


class UnknownSampleError(DataError, KeyError):
    """A sample id, video id or dataset name that the dataset does not contain."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class MissingVideoError(DataError):
    """No frame folder and no video file exists for a video id."""


class CorruptVideoError(DataError):
    """The video file exists but cannot be opened or decoded."""


class MissingFrameError(DataError):
    """A frame file listed by the dataset is missing or unreadable."""


class AnnotationError(DataError):
    """An annotation is malformed (bad RLE, wrong size, unknown object id)."""


class MissingAnnotationError(AnnotationError):
    """An annotation file or entry that should exist does not."""


class FrameIndexError(DataError, IndexError):
    """A frame index outside [0, num_frames) was requested where clamping is not appropriate."""


class VTSCoTFormatError(DatasetFormatError):
    """A VTS-CoT record does not follow the schema in env/vtscot.py."""


class EpisodeStateError(ValueError):
    """The caller passed an episode state that cannot be stepped (e.g. it has already ended)."""
