"""VTS-CoT cold-start data (METHOD.md section 5): the record schema, reader, writer, and a builder.

A file is JSON Lines, one record per line (a `.json` file holding a list of records also reads).
Record, schema "vtscot/1":

    {
      "schema": "vtscot/1",
      "sample_id": "revos/<video>/<exp_id>",      # id of the sample the trajectory is about
      "dataset": "revos",                          # dataset the video and masks come from
      "video": "<video id>",
      "frames": ["00000", "00001", ...],           # the video's frame list (index = position)
      "height": 480, "width": 854,                 # original frame size (0 = unknown)
      "exp_id": "3",
      "expression": "the dog that ...",
      "obj_ids": [1], "anno_ids": ["1234"],
      "type_id": 0,
      "shown": [                                   # one entry per user turn, in order
        {"turn": 0, "frames": [{"index": 0, "pixels": 25088}, ...]},   # frames shown, in order
        {"turn": 1, "frames": [...]}
      ],
      "trace": [                                   # one entry per assistant turn, as written
        {"round": 1, "action": "select", "start": 10, "end": 40, "keyframe": 25},
        {"round": 2, "action": "answer", "start": 18, "end": 33, "keyframe": 27}
      ],
      "conversation": [
        {"role": "system", "content": "..."},
        {"role": "user", "content": [{"type": "text", "text": "..."},
                                      {"type": "image", "index": 0, "pixels": 25088}, ...]},
        {"role": "assistant", "content": "<think> ... </think><select>...</select>"},
        ...
      ]
    }

Invariants checked on read and write: roles alternate user/assistant after an optional system
message and the last message is the assistant's; every assistant turn parses (env.protocol) and
equals its trace entry; only the last action is an answer; each user turn's image parts equal its
`shown` entry; every frame index lies in the frame list.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from env.errors import VTSCoTFormatError
from env.protocol import parse_turn
from env.types import Action, EpisodeState, Observation

SCHEMA = "vtscot/1"


@dataclass
class ShownFrame:
    index: int
    pixels: int


@dataclass
class ShownTurn:
    turn: int  # index among the user messages, 0 = the first
    frames: list[ShownFrame]


@dataclass
class RoundTrace:
    round: int  # 1-based assistant turn
    action: str  # "select" | "answer"
    start: int
    end: int
    keyframe: int


@dataclass
class VTSCoTRecord:
    sample_id: str
    dataset: str
    video: str
    frames: list[str]
    exp_id: str
    expression: str
    obj_ids: list[int]
    anno_ids: list[str]
    shown: list[ShownTurn]
    trace: list[RoundTrace]
    conversation: list[dict]
    height: int = 0
    width: int = 0
    type_id: int = 0
    schema: str = SCHEMA
    extra: dict = field(default_factory=dict)  # free-form provenance (generator, model, seed...)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict, where: str = "record") -> "VTSCoTRecord":
        if not isinstance(d, dict):
            raise VTSCoTFormatError(f"{where}: a record must be a JSON object")
        if d.get("schema") != SCHEMA:
            raise VTSCoTFormatError(f"{where}: schema is {d.get('schema')!r}, expected {SCHEMA!r}")
        required = ("sample_id", "dataset", "video", "frames", "exp_id", "expression", "shown", "trace",
                    "conversation")
        missing = [k for k in required if k not in d]
        if missing:
            raise VTSCoTFormatError(f"{where}: missing fields {missing}")
        try:
            record = VTSCoTRecord(
                sample_id=str(d["sample_id"]), dataset=str(d["dataset"]), video=str(d["video"]),
                frames=[str(f) for f in d["frames"]], exp_id=str(d["exp_id"]),
                expression=str(d["expression"]), obj_ids=[int(o) for o in d.get("obj_ids", [])],
                anno_ids=[str(a) for a in d.get("anno_ids", [])],
                shown=[ShownTurn(int(s["turn"]), [ShownFrame(int(f["index"]), int(f["pixels"]))
                                                  for f in s["frames"]]) for s in d["shown"]],
                trace=[RoundTrace(int(t["round"]), str(t["action"]), int(t["start"]), int(t["end"]),
                                  int(t["keyframe"])) for t in d["trace"]],
                conversation=list(d["conversation"]), height=int(d.get("height", 0)),
                width=int(d.get("width", 0)), type_id=int(d.get("type_id", 0)),
                extra=dict(d.get("extra") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise VTSCoTFormatError(f"{where}: malformed field ({type(exc).__name__}: {exc})") from exc
        validate(record, where)
        return record


def _user_images(content, where: str) -> list[ShownFrame]:
    if isinstance(content, str):
        return []
    if not isinstance(content, list):
        raise VTSCoTFormatError(f"{where}: user content must be a string or a list of parts")
    images = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            images.append(ShownFrame(int(part["index"]), int(part["pixels"])))
        elif kind != "text" or not isinstance(part.get("text"), str):
            raise VTSCoTFormatError(f"{where}: a content part must be {{'type': 'text', 'text': str}} "
                                    "or {'type': 'image', 'index': int, 'pixels': int}")
    return images


def validate(record: VTSCoTRecord, where: str = "record") -> None:
    """Raise VTSCoTFormatError unless the record satisfies the invariants in the module docstring."""
    n = len(record.frames)
    if n == 0:
        raise VTSCoTFormatError(f"{where}: empty frame list")
    messages = list(record.conversation)
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        if not isinstance(messages[0].get("content"), str):
            raise VTSCoTFormatError(f"{where}: the system message must be text")
        messages = messages[1:]
    if not messages or len(messages) % 2:
        raise VTSCoTFormatError(f"{where}: the conversation must be user/assistant pairs ending with "
                                "the assistant")
    users, assistants = messages[0::2], messages[1::2]
    for i, (u, a) in enumerate(zip(users, assistants)):
        if not (isinstance(u, dict) and u.get("role") == "user" and isinstance(a, dict)
                and a.get("role") == "assistant"):
            raise VTSCoTFormatError(f"{where}: message pair {i} is not (user, assistant)")
        if not isinstance(a.get("content"), str):
            raise VTSCoTFormatError(f"{where}: assistant turn {i + 1} must be text")
    if len(record.shown) != len(users):
        raise VTSCoTFormatError(f"{where}: {len(record.shown)} 'shown' entries for {len(users)} user turns")
    for i, (u, shown) in enumerate(zip(users, record.shown)):
        images = _user_images(u.get("content"), f"{where} user turn {i}")
        if shown.turn != i or images != shown.frames:
            raise VTSCoTFormatError(f"{where}: user turn {i}'s images differ from shown[{i}]")
        bad = [f.index for f in images if not 0 <= f.index < n]
        if bad:
            raise VTSCoTFormatError(f"{where}: user turn {i} shows frames {bad} outside the video "
                                    f"(0..{n - 1})")
    if len(record.trace) != len(assistants):
        raise VTSCoTFormatError(f"{where}: {len(record.trace)} trace entries for {len(assistants)} "
                                "assistant turns")
    for i, (a, t) in enumerate(zip(assistants, record.trace)):
        parsed = parse_turn(a["content"])
        if not isinstance(parsed, Action):
            raise VTSCoTFormatError(f"{where}: assistant turn {i + 1} does not parse "
                                    f"({parsed.code}: {parsed.message})")
        written = (i + 1, parsed.kind, parsed.start, parsed.end, parsed.keyframe)
        if written != (t.round, t.action, t.start, t.end, t.keyframe):
            raise VTSCoTFormatError(f"{where}: trace[{i}] {asdict(t)} does not match assistant turn {i + 1}")
        last = i == len(assistants) - 1
        if (t.action == "answer") != last:
            raise VTSCoTFormatError(f"{where}: only the last assistant turn may (and must) be an answer")


# ---------------------------------------------------------------------------- I/O
def write_vtscot(records: Iterable[VTSCoTRecord], path: str | Path) -> int:
    """Validate and write records as JSON Lines; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            validate(r, f"record {count}")
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count


def read_vtscot(path: str | Path) -> Iterator[VTSCoTRecord]:
    """Records of a .jsonl (or .json list) file, each validated; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise VTSCoTFormatError(f"VTS-CoT file {path} does not exist")
    if path.suffix == ".json":
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise VTSCoTFormatError(f"{path} is not valid JSON ({exc})") from exc
        if not isinstance(items, list):
            raise VTSCoTFormatError(f"{path} must hold a JSON list of records")
        for i, d in enumerate(items):
            yield VTSCoTRecord.from_dict(d, f"{path}[{i}]")
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except ValueError as exc:
                raise VTSCoTFormatError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            yield VTSCoTRecord.from_dict(d, f"{path}:{lineno}")


# ---------------------------------------------------------------------- from an episode
def _user_content(obs: Observation) -> list[dict]:
    parts = []
    for kind, value in obs.parts:
        if kind == "text":
            parts.append({"type": "text", "text": value})
        else:
            ref = obs.frames[int(value)]
            parts.append({"type": "image", "index": ref.index, "pixels": ref.pixels})
    return parts


def record_from_episode(state: EpisodeState, observations: Sequence[Observation], frames: Sequence[str],
                        extra: dict | None = None) -> VTSCoTRecord:
    """A VTS-CoT record of a finished episode that ended with an answer.

    `observations` are the user messages in order (turn 0, then one per select reply); `frames`
    the video's frame list. The assistant texts come from the state's turn records.
    """
    if state.end_reason != "answer":
        raise VTSCoTFormatError(f"episode {state.episode_id} ended with {state.end_reason}; only answered "
                                "episodes make cold-start data")
    if len(observations) != len(state.turns):
        raise VTSCoTFormatError(f"episode {state.episode_id}: {len(observations)} observations for "
                                f"{len(state.turns)} assistant turns")
    conversation: list[dict] = []
    if observations and observations[0].system:
        conversation.append({"role": "system", "content": observations[0].system})
    shown, trace = [], []
    for i, (obs, turn) in enumerate(zip(observations, state.turns)):
        conversation.append({"role": "user", "content": _user_content(obs)})
        conversation.append({"role": "assistant", "content": turn.text})
        shown.append(ShownTurn(i, [ShownFrame(r.index, r.pixels) for r in obs.frames]))
        a = turn.action
        trace.append(RoundTrace(i + 1, a.kind, a.start, a.end, a.keyframe))
    s = state.sample
    record = VTSCoTRecord(
        sample_id=s.sample_id, dataset=s.dataset, video=s.video_id, frames=list(frames), exp_id=s.exp_id,
        expression=s.expression, obj_ids=list(s.obj_ids), anno_ids=list(s.anno_ids), shown=shown,
        trace=trace, conversation=conversation, height=s.height, width=s.width, type_id=s.type_id,
        extra=dict(extra or {}))
    validate(record, f"episode {state.episode_id}")
    return record
