"""Which frames the policy sees, and the user messages that show them.

Frame choice is a pure function of (number of frames, config, the model's request), so every
rollout of a GRPO group gets the same turn-0 prompt and a retried call gets the same reply. All
wording comes from env/prompts.py.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from env import prompts
from env.types import FrameRef, Observation, Sample


# ----------------------------------------------------------------------------- sampling
def uniform_indices(num_frames: int, count: int) -> list[int]:
    """`count` indices evenly spread over [0, num_frames - 1], first and last frame included.

    All frames when the video is not longer than `count`."""
    if count <= 0 or num_frames <= 0:
        return []
    if num_frames <= count:
        return list(range(num_frames))
    if count == 1:
        return [(num_frames - 1) // 2]
    return [int(round(x)) for x in np.linspace(0, num_frames - 1, count)]


def centred_indices(num_frames: int, count: int) -> list[int]:
    """The centre frame of each of `count` equal segments of the video.

    Used for the high-resolution detail frames: they fall between the overview frames (which
    include both ends) instead of repeating them. All frames when the video is short."""
    if count <= 0 or num_frames <= 0:
        return []
    if num_frames <= count:
        return list(range(num_frames))
    return [int((i + 0.5) * num_frames / count) for i in range(count)]


def interval_indices(start: int, end: int, count: int) -> list[int]:
    """Up to `count` frames of [start, end] inclusive: all if the interval is short, else uniform."""
    length = end - start + 1
    if length <= 0 or count <= 0:
        return []
    if length <= count:
        return list(range(start, end + 1))
    return [start + i for i in uniform_indices(length, count)]


def initial_frames(num_frames: int, low_count: int, high_count: int) -> tuple[list[int], list[int]]:
    """(overview indices, detail indices) of the turn-0 observation."""
    return uniform_indices(num_frames, low_count), centred_indices(num_frames, high_count)


# ---------------------------------------------------------------------------- messages
class _Builder:
    """Accumulates text pieces and images into an Observation."""

    def __init__(self):
        self.parts: list[tuple[str, object]] = []
        self.frames: list[FrameRef] = []

    def text(self, s: str) -> None:
        if self.parts and self.parts[-1][0] == "text":
            self.parts[-1] = ("text", self.parts[-1][1] + s)  # merge adjacent text
        else:
            self.parts.append(("text", s))

    def image(self, ref: FrameRef) -> None:
        self.text(prompts.FRAME_LABEL.format(index=ref.index))
        self.parts.append(("image", len(self.frames)))
        self.frames.append(ref)
        self.text(prompts.FRAME_SEPARATOR)

    def build(self, images: list[np.ndarray], system: str | None = None) -> Observation:
        return Observation(parts=self.parts, frames=self.frames, images=images, system=system)


def turn0_message(sample: Sample, low: Sequence[int], high: Sequence[int], low_pixels: int,
                  high_pixels: int, max_turns: int) -> _Builder:
    """Layout of the first user message (images are filled in by the caller)."""
    n = sample.num_frames
    b = _Builder()
    b.text(prompts.TURN0_HEADER.format(num_frames=n, last=n - 1))
    b.text(prompts.OVERVIEW_HEADER.format(indices=prompts.format_indices(list(low))))
    for i in low:
        b.image(FrameRef(sample.dataset, sample.video_id, i, low_pixels))
    if high:
        b.text(prompts.DETAIL_HEADER.format(indices=prompts.format_indices(list(high))))
        for i in high:
            b.image(FrameRef(sample.dataset, sample.video_id, i, high_pixels))
    b.text(prompts.QUERY_LINE.format(query=sample.expression))
    b.text(prompts.TURN0_FOOTER.format(turns=max_turns))
    return b


def select_reply_message(sample: Sample, requested: tuple[int, int, int], clamped: tuple[int, int, int],
                         shown: Sequence[int], low_pixels: int, keyframe_pixels: int,
                         turns_left: int) -> _Builder:
    """Layout of the user message answering a <select> (images filled in by the caller)."""
    start, end, keyframe = clamped
    b = _Builder()
    if tuple(requested) != tuple(clamped):
        rs, re_, rk = requested
        b.text(prompts.CLAMP_NOTE.format(start=rs, end=re_, keyframe=rk, last=sample.num_frames - 1))
    b.text(prompts.SELECT_HEADER.format(start=start, end=end, keyframe=keyframe,
                                        indices=prompts.format_indices(list(shown))))
    for i in shown:
        b.image(FrameRef(sample.dataset, sample.video_id, i, low_pixels))
    b.text(prompts.KEYFRAME_HEADER.format(keyframe=keyframe))
    b.image(FrameRef(sample.dataset, sample.video_id, keyframe, keyframe_pixels))
    b.text(prompts.REMINDER.format(query=sample.expression))
    b.text(prompts.LAST_TURN if turns_left <= 1 else prompts.TURNS_LEFT.format(turns=turns_left))
    return b
