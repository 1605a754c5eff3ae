"""Types that cross package boundaries: samples, frame references, actions, episode state.

This module imports only the standard library and numpy, so every package (and the Ray actors'
serialisation) can use it cheaply. Everything here is a plain dataclass: picklable for Ray, and
convertible to dicts for Parquet/JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

EndReason = Literal["answer", "malformed", "bad_interval", "max_turns"]
ActionKind = Literal["select", "answer"]


@dataclass(frozen=True)
class Sample:
    """One (video, expression) pair: the unit the ledger counts and GRPO groups over."""

    sample_id: str  # "<dataset>/<video>/<exp_id>", stable across runs
    dataset: str
    video_id: str
    exp_id: str
    expression: str
    obj_ids: tuple[int, ...]
    anno_ids: tuple[str, ...]  # keys into the dataset's mask source (mask_dict keys or obj ids)
    num_frames: int
    height: int
    width: int
    type_id: int = 0  # ReVOS: 0 referring, 1 reasoning, 2 excluded; Ref-SAV: 0 long, 1 short
    presence: tuple[bool, ...] = ()  # target visible per frame (union of its objects)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Sample":
        d = dict(d)
        for k in ("obj_ids", "anno_ids", "presence"):
            d[k] = tuple(d.get(k) or ())
        return Sample(**d)


@dataclass(frozen=True)
class FrameRef:
    """A frame as the policy saw it: which video, which frame, at which pixel budget."""

    dataset: str
    video_id: str
    index: int
    pixels: int  # budget the frame was resized to (aspect kept); 0 = original resolution

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.video_id}/{self.index}/{self.pixels}"


@dataclass(frozen=True)
class Action:
    """A parsed assistant turn. Indices are as written by the model (before clamping)."""

    kind: ActionKind
    start: int
    end: int
    keyframe: int
    think: str  # the text inside <think> ... </think>
    step_markers: tuple[bool, bool, bool, bool]  # "step 1", "step 2", "step 3", "action" found


@dataclass(frozen=True)
class ParseError:
    """Why an assistant turn does not follow the grammar. `code` is stable; `message` is for humans."""

    code: str
    message: str
    think: str | None = None  # thinking block if one was found (step-format reward still applies)
    step_markers: tuple[bool, bool, bool, bool] = (False, False, False, False)


@dataclass
class TurnRecord:
    """What happened in one assistant turn, as the environment saw it."""

    text: str
    action: Action | None
    error: ParseError | None
    clamped: tuple[int, int, int] | None = None  # (start, end, keyframe) after clamping
    keyframe_seen: int = -1  # keyframe whose high-res view the model had when writing this turn
    shown: list[FrameRef] = field(default_factory=list)  # frames of the reply to this turn


@dataclass
class EpisodeState:
    """All state of one episode. The env actor is stateless: the caller carries this object."""

    sample: Sample
    episode_id: str
    initial_low: list[int]  # frame indices of the turn-0 overview (low-res)
    initial_high: list[int]  # frame indices of the turn-0 detail frames (high-res): "sampled frames"
    turns: list[TurnRecord] = field(default_factory=list)
    done: bool = False
    end_reason: EndReason | None = None

    @property
    def num_turns(self) -> int:
        return len(self.turns)


@dataclass
class Observation:
    """A user message for the policy: an ordered list of text pieces and images.

    `parts` holds ("text", str) and ("image", i) entries where i indexes `frames`/`images`.
    `images` are RGB uint8 HxWx3 arrays already resized to their FrameRef's budget.
    `system` is the system prompt: set on the turn-0 observation only (it is its own chat message).
    """

    parts: list[tuple[str, object]]
    frames: list[FrameRef]
    images: list[np.ndarray]
    system: str | None = None

    def text_only(self) -> str:
        return "".join(p for kind, p in self.parts if kind == "text")


@dataclass
class StepResult:
    state: EpisodeState
    observation: Observation | None  # None when the episode ended
    done: bool
    end_reason: EndReason | None
