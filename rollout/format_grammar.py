"""A grammar of one well-formed assistant turn, for constrained decoding.

With `rollout.constrain_format=true` the engine can only sample turns that parse: a thinking block
with the three steps and the action line, then one <select> or <answer> with the VTG JSON and the
`[SEG]` *token* (referenced by id: spelling "[SEG]" out of smaller tokens would parse as text but
carry no segmentation embedding). The free text inside the steps is limited to short lowercase
phrases and the indices to at most four digits; what the policy decides (select or answer, which
frames) stays free. Log-probs stay the model's raw ones, so the learner's importance ratios hold.

The grammar is Lark syntax as understood by xgrammar (vLLM's default structured-output backend),
whose `<[id]>` terminal matches one token id.
"""

from __future__ import annotations

import json

from env.prompts import (ANSWER_CLOSE, ANSWER_OPEN, REFSEG_CLOSE, REFSEG_OPEN, SELECT_CLOSE, SELECT_OPEN,
                         THINK_CLOSE, THINK_OPEN, VTG_CLOSE, VTG_OPEN)


def _lit(text: str) -> str:
    return json.dumps(text)


def turn_grammar(seg_token_id: int, repeated: bool = False) -> str:
    """One turn; with `repeated`, one or more turns back to back (a single-pass benchmark baseline)."""
    payload = " ".join([
        _lit(VTG_OPEN + '{"start": '), "INDEX", _lit(', "end": '), "INDEX", _lit(', "keyframe": '), "INDEX",
        _lit("}" + VTG_CLOSE + REFSEG_OPEN), f"<[{int(seg_token_id)}]>", _lit(REFSEG_CLOSE),
    ])
    lines = [
        "start: turn+" if repeated else "start: turn",
        "turn: think action",
        "think: " + " ".join([
            _lit(THINK_OPEN + " Step 1: "), "PHRASE", _lit(". Step 2: "), "PHRASE", _lit(". Step 3: "),
            "PHRASE", _lit(". Action: "), "KIND", _lit(". " + THINK_CLOSE)]),
        'KIND: "select" | "answer"',
        f"action: {_lit(SELECT_OPEN)} payload {_lit(SELECT_CLOSE)} | {_lit(ANSWER_OPEN)} payload {_lit(ANSWER_CLOSE)}",
        "payload: " + payload,
        "PHRASE: /[a-z][a-z ]{0,15}/",
        "INDEX: /0|[1-9][0-9]{0,3}/",
    ]
    return "\n".join(lines) + "\n"
