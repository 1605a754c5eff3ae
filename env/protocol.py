"""The grammar of an assistant turn (METHOD.md section 2), its parser, and index clamping.

A well-formed turn is, with optional whitespace between the pieces:

    <think> free text (no protocol tags, no [SEG]) </think>
    <select><VTG>{"start": s, "end": e, "keyframe": k}</VTG><RefSeg>[SEG]</RefSeg></select>

or the same payload inside <answer> ... </answer>. The VTG payload is a JSON object with exactly
the keys start, end and keyframe, each a JSON integer (absolute 0-based frame index, possibly out
of range: the environment clamps). Exactly one [SEG] appears, inside RefSeg. Trailing
end-of-turn tokens (<|im_end|>, <|endoftext|>) are ignored, since engines may keep them.

`parse_turn` never raises: it returns an `Action` or a `ParseError` whose `code` is one of
`ERROR_CODES`. Step markers are read from the think block whenever one was found, so the
step-format reward still applies to a turn whose action is malformed.
"""

from __future__ import annotations

import json
import re

from env.prompts import (
    ANSWER_CLOSE, ANSWER_OPEN, PROTOCOL_TAGS, REFSEG_CLOSE, REFSEG_OPEN, SEG_TOKEN, SELECT_CLOSE,
    SELECT_OPEN, STEP_MARKERS, THINK_CLOSE, THINK_OPEN, VTG_CLOSE, VTG_OPEN,
)
from env.types import Action, ParseError

ERROR_CODES = {
    "not_text": "the turn is not a string",
    "empty": "the turn is empty",
    "missing_think": "no <think> ... </think> block",
    "text_before_think": "text precedes the <think> block",
    "think_unclosed": "<think> is never closed with </think>",
    "think_nested": "a second <think> opens inside the think block",
    "tag_in_think": "a protocol tag appears inside the think block",
    "seg_in_think": "[SEG] appears inside the think block",
    "missing_action": "no <select> or <answer> after the think block",
    "text_before_action": "text between </think> and the action",
    "action_unclosed": "the action tag is never closed",
    "multiple_actions": "more than one <select>/<answer> action",
    "stray_tag": "an action closing tag that does not match the open action",
    "trailing_text": "text after the action's closing tag",
    "missing_vtg": "no <VTG> ... </VTG> in the action",
    "text_before_vtg": "text between the action tag and <VTG>",
    "multiple_vtg": "more than one <VTG> block",
    "vtg_unclosed": "<VTG> is never closed with </VTG>",
    "vtg_bad_json": "the VTG payload is not valid JSON",
    "vtg_not_object": "the VTG payload is not a JSON object",
    "vtg_duplicate_key": "a key appears twice in the VTG object",
    "vtg_missing_key": "the VTG object lacks start, end or keyframe",
    "vtg_extra_key": "the VTG object has keys other than start, end, keyframe",
    "vtg_not_integer": "start, end and keyframe must be JSON integers",
    "missing_refseg": "no <RefSeg> ... </RefSeg> after the VTG",
    "text_between_vtg_refseg": "text between </VTG> and <RefSeg>",
    "refseg_unclosed": "<RefSeg> is never closed with </RefSeg>",
    "missing_seg": "RefSeg does not contain [SEG]",
    "multiple_seg": "[SEG] appears more than once",
    "refseg_extra_text": "RefSeg holds text besides [SEG]",
    "text_after_refseg": "text between </RefSeg> and the action's closing tag",
    "internal": "the parser failed unexpectedly (a bug; the turn counts as malformed)",
}

VTG_KEYS = ("start", "end", "keyframe")
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")
ACTION_TAGS = {SELECT_OPEN: ("select", SELECT_CLOSE), ANSWER_OPEN: ("answer", ANSWER_CLOSE)}
# "Step 1", "step1", "STEP  1" all count; "step 12" does not count as "step 1".
_MARKER_PATTERNS = tuple(
    re.compile(r"\b" + r"\s*".join(re.escape(w) for w in m.split()) + r"(?!\w)", re.IGNORECASE)
    for m in STEP_MARKERS
)


class _Reject(Exception):
    """Internal control flow: a grammar violation with its code."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(code)
        self.code, self.detail = code, detail


def step_markers(think: str) -> tuple[bool, bool, bool, bool]:
    """Which of "step 1", "step 2", "step 3", "action" occur in a think block (case-insensitive)."""
    found = tuple(bool(p.search(think)) for p in _MARKER_PATTERNS)
    return found  # type: ignore[return-value]


def parse_turn(text: object) -> Action | ParseError:
    """Parse one assistant turn. Never raises; see ERROR_CODES for the reasons it can reject."""
    think: str | None = None
    try:
        if not isinstance(text, str):
            raise _Reject("not_text", f"got {type(text).__name__}")
        body = _strip_end_tokens(text)
        if not body:
            raise _Reject("empty")
        think, rest = _split_think(body)
        kind, inner = _split_action(rest)
        start, end, keyframe = _parse_payload(inner)
        return Action(kind=kind, start=start, end=end, keyframe=keyframe, think=think,
                      step_markers=step_markers(think))
    except _Reject as rej:
        message = ERROR_CODES[rej.code] + (f": {rej.detail}" if rej.detail else "")
        think = getattr(rej, "think", think)
        markers = step_markers(think) if think is not None else (False, False, False, False)
        return ParseError(code=rej.code, message=message, think=think, step_markers=markers)
    except Exception as exc:  # the contract is "never raises"; a bug here must not kill a rollout
        return ParseError(code="internal", message=f"{ERROR_CODES['internal']}: {type(exc).__name__}: {exc}",
                          think=think)


def _strip_end_tokens(text: str) -> str:
    body = text.strip()
    changed = True
    while changed:
        changed = False
        for token in END_OF_TURN_TOKENS:
            if body.endswith(token):
                body = body[: -len(token)].rstrip()
                changed = True
    return body


def _clip(s: str, n: int = 40) -> str:
    s = s.strip().replace("\n", " ")
    return repr(s if len(s) <= n else s[:n] + "...")


def _split_think(body: str) -> tuple[str, str]:
    """Return (think text, what follows </think>). Sets no state on failure except the reason."""
    open_at = body.find(THINK_OPEN)
    if open_at < 0:
        raise _Reject("missing_think")
    close_at = body.find(THINK_CLOSE, open_at)
    if close_at < 0:
        raise _Reject("think_unclosed")
    if open_at > 0:
        # Report the think block anyway (step markers still count), then reject.
        raise _RejectWithThink("text_before_think", _clip(body[:open_at]),
                               body[open_at + len(THINK_OPEN):close_at].strip())
    think = body[len(THINK_OPEN):close_at].strip()
    if THINK_OPEN in think:
        raise _RejectWithThink("think_nested", "", think)
    if SEG_TOKEN in think:
        raise _RejectWithThink("seg_in_think", "", think)
    for tag in PROTOCOL_TAGS:
        if tag in think:
            raise _RejectWithThink("tag_in_think", tag, think)
    return think, body[close_at + len(THINK_CLOSE):]


class _RejectWithThink(_Reject):
    def __init__(self, code: str, detail: str, think: str):
        super().__init__(code, detail)
        self.think = think


def _split_action(rest: str) -> tuple[str, str]:
    rest = rest.strip()
    opener = next((tag for tag in ACTION_TAGS if rest.startswith(tag)), None)
    if opener is None:
        if not rest:
            raise _Reject("missing_action")
        if THINK_CLOSE in rest or THINK_OPEN in rest:
            raise _Reject("trailing_text", "a second think block")
        if any(tag in rest for tag in ACTION_TAGS):
            raise _Reject("text_before_action", _clip(rest.split("<", 1)[0] or rest))
        raise _Reject("missing_action", f"found {_clip(rest)}")
    kind, closer = ACTION_TAGS[opener]
    close_at = rest.find(closer)
    if close_at < 0:
        if any(tag in rest[len(opener):] for tag in ACTION_TAGS):
            raise _Reject("multiple_actions")
        raise _Reject("action_unclosed", f"{opener} without {closer}")
    inner = rest[len(opener):close_at]
    after = rest[close_at + len(closer):].strip()
    if any(tag in inner for tag in ACTION_TAGS) or any(tag in after for tag in ACTION_TAGS):
        raise _Reject("multiple_actions")
    stray = [c for c in (SELECT_CLOSE, ANSWER_CLOSE) if c in inner or c in after]
    if stray:
        raise _Reject("stray_tag", stray[0])
    if after:
        raise _Reject("trailing_text", _clip(after))
    return kind, inner


def _parse_payload(inner: str) -> tuple[int, int, int]:
    inner = inner.strip()
    if not inner.startswith(VTG_OPEN):
        if VTG_OPEN not in inner:
            raise _Reject("missing_vtg")
        raise _Reject("text_before_vtg", _clip(inner.split(VTG_OPEN, 1)[0]))
    close_at = inner.find(VTG_CLOSE)
    if close_at < 0:
        raise _Reject("vtg_unclosed")
    values = _parse_vtg_json(inner[len(VTG_OPEN):close_at])
    rest = inner[close_at + len(VTG_CLOSE):].strip()
    if VTG_OPEN in rest or VTG_CLOSE in rest:
        raise _Reject("multiple_vtg")
    if not rest.startswith(REFSEG_OPEN):
        if REFSEG_OPEN not in rest:
            raise _Reject("missing_refseg")
        raise _Reject("text_between_vtg_refseg", _clip(rest.split(REFSEG_OPEN, 1)[0]))
    seg_close = rest.find(REFSEG_CLOSE)
    if seg_close < 0:
        raise _Reject("refseg_unclosed")
    content = rest[len(REFSEG_OPEN):seg_close].strip()
    if content != SEG_TOKEN:
        count = content.count(SEG_TOKEN)
        if count == 0:
            raise _Reject("missing_seg", f"found {_clip(content)}")
        if count > 1:
            raise _Reject("multiple_seg", f"{count} inside RefSeg")
        raise _Reject("refseg_extra_text", _clip(content.replace(SEG_TOKEN, "")))
    tail = rest[seg_close + len(REFSEG_CLOSE):].strip()
    if tail:
        if SEG_TOKEN in tail:
            raise _Reject("multiple_seg", "another [SEG] after RefSeg")
        raise _Reject("text_after_refseg", _clip(tail))
    return values


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise _Reject("vtg_duplicate_key", ", ".join(dupes))
    return dict(pairs)


def _parse_vtg_json(payload: str) -> tuple[int, int, int]:
    try:
        obj = json.loads(payload, object_pairs_hook=_no_duplicates)
    except _Reject:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, and ints too long to convert
        raise _Reject("vtg_bad_json", f"{_clip(payload)} ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise _Reject("vtg_not_object", f"got {type(obj).__name__}")
    missing = [k for k in VTG_KEYS if k not in obj]
    if missing:
        raise _Reject("vtg_missing_key", ", ".join(missing))
    extra = sorted(str(k) for k in obj if k not in VTG_KEYS)
    if extra:
        raise _Reject("vtg_extra_key", ", ".join(extra))
    for k in VTG_KEYS:
        v = obj[k]
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Reject("vtg_not_integer", f"{k} = {v!r}")
    return obj["start"], obj["end"], obj["keyframe"]


# ------------------------------------------------------------------------------ writing
def format_vtg(start: int, end: int, keyframe: int) -> str:
    return json.dumps({"start": int(start), "end": int(end), "keyframe": int(keyframe)})


def format_turn(think: str, kind: str, start: int, end: int, keyframe: int) -> str:
    """A well-formed assistant turn (the inverse of parse_turn), for cold-start data and tests."""
    if kind not in ("select", "answer"):
        raise ValueError(f"kind must be 'select' or 'answer', got {kind!r}")
    open_tag, close_tag = (SELECT_OPEN, SELECT_CLOSE) if kind == "select" else (ANSWER_OPEN, ANSWER_CLOSE)
    return (f"{THINK_OPEN} {think.strip()} {THINK_CLOSE}\n{open_tag}"
            f"{VTG_OPEN}{format_vtg(start, end, keyframe)}{VTG_CLOSE}"
            f"{REFSEG_OPEN}{SEG_TOKEN}{REFSEG_CLOSE}{close_tag}")


# ------------------------------------------------------------------------------ clamping
def clamp_index(index: int, num_frames: int) -> int:
    """Clamp a frame index into [0, num_frames - 1]."""
    return max(0, min(int(index), num_frames - 1))


def clamp_action(action: Action, num_frames: int) -> tuple[int, int, int]:
    """(start, end, keyframe) clamped into the video. Judge e < s on the raw values: clamping two
    out-of-range indices can make them equal."""
    return (clamp_index(action.start, num_frames), clamp_index(action.end, num_frames),
            clamp_index(action.keyframe, num_frames))
