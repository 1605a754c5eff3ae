"""Every piece of wording the policy reads, in one place.

The environment assembles observations from these templates (env/observations.py); the tiny
tokenizer is trained on them (rollout/tiny_policy.py); the cold-start generator writes assistant
turns in the grammar described here (env/protocol.py formats and parses it). Changing a sentence
here changes it everywhere.
"""

from __future__ import annotations

SEG_TOKEN = "[SEG]"

# Tags of the action grammar (METHOD.md section 2).
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SELECT_OPEN, SELECT_CLOSE = "<select>", "</select>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
VTG_OPEN, VTG_CLOSE = "<VTG>", "</VTG>"
REFSEG_OPEN, REFSEG_CLOSE = "<RefSeg>", "</RefSeg>"
PROTOCOL_TAGS = (
    THINK_OPEN, THINK_CLOSE, SELECT_OPEN, SELECT_CLOSE, ANSWER_OPEN, ANSWER_CLOSE,
    VTG_OPEN, VTG_CLOSE, REFSEG_OPEN, REFSEG_CLOSE,
)
# Markers the step-format reward looks for inside the think block (case-insensitive).
STEP_MARKERS = ("step 1", "step 2", "step 3", "action")

SYSTEM_PROMPT = (
    "You find one target in a video and mark it with a segmentation token. The user gives a query "
    "and shows you frames as separate images, each introduced by its frame index (0-based, "
    "counted over the whole video).\n"
    "Every reply has two parts. First a thinking block:\n"
    "<think> Step 1: temporal - which frames show the target. Step 2: spatial - where it is on the "
    "keyframe. Step 3: expression - check it really matches the query. Action: say whether you "
    "need a closer look or are sure. </think>\n"
    "Then exactly one action, either\n"
    '<select><VTG>{"start": s, "end": e, "keyframe": k}</VTG><RefSeg>[SEG]</RefSeg></select>\n'
    "to look closer at frames s to e (inclusive) and at keyframe k in high resolution, or\n"
    '<answer><VTG>{"start": s, "end": e, "keyframe": k}</VTG><RefSeg>[SEG]</RefSeg></answer>\n'
    "to commit: [SEG] then marks the target on keyframe k. s, e and k are frame indices with "
    "s <= k <= e. Write [SEG] only inside RefSeg, once per reply."
)

# ---- turn 0: the first user message
TURN0_HEADER = "The video has {num_frames} frames, indexed 0 to {last}.\n"
OVERVIEW_HEADER = "Overview frames {indices}:\n"
DETAIL_HEADER = "Detail frames {indices} in higher resolution:\n"
FRAME_LABEL = "Frame {index}: "
FRAME_SEPARATOR = "\n"
QUERY_LINE = 'Query: "{query}"\n'
TURN0_FOOTER = "Think step by step, then select frames to inspect or answer. You have {turns} replies."

# ---- the reply to a <select>
CLAMP_NOTE = (
    "Your request (start {start}, end {end}, keyframe {keyframe}) reached outside the video "
    "(frames 0 to {last}); it was clamped to the values below.\n"
)
SELECT_HEADER = "Frames {start} to {end} of the video (keyframe {keyframe}); showing frames {indices}:\n"
KEYFRAME_HEADER = "Keyframe {keyframe} in high resolution:\n"
REMINDER = (
    'Reminder: the query is "{query}". Reply with <think> ... </think> followed by one '
    "<select> or <answer> action with the VTG JSON and [SEG]."
)
TURNS_LEFT = " You have {turns} replies left."
LAST_TURN = " This is your last reply: answer with <answer>."


def format_indices(indices: list[int]) -> str:
    return "[" + ", ".join(str(i) for i in indices) + "]"


def corpus_for_tokenizer() -> list[str]:
    """Text that exercises the vocabulary of the protocol (for training the tiny BPE)."""
    lines = [SYSTEM_PROMPT, TURN0_FOOTER.format(turns=3), REMINDER.format(query="x"), LAST_TURN,
             TURNS_LEFT.format(turns=2)]
    for n in (8, 24, 50, 97, 120, 480):
        lines.append(TURN0_HEADER.format(num_frames=n, last=n - 1))
        lines.append(OVERVIEW_HEADER.format(indices=format_indices(list(range(0, n, max(1, n // 10))))))
        lines.append(DETAIL_HEADER.format(indices=format_indices(list(range(1, n, max(1, n // 5))))))
        lines.append(SELECT_HEADER.format(start=n // 4, end=n // 2, keyframe=n // 3,
                                          indices=format_indices([n // 4, n // 3, n // 2])))
        lines.append(CLAMP_NOTE.format(start=-3, end=n + 5, keyframe=n // 3, last=n - 1))
        lines.append(KEYFRAME_HEADER.format(keyframe=n // 3))
    for i in range(0, 500):
        lines.append(FRAME_LABEL.format(index=i))
    return lines
