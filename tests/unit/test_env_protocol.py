"""The assistant-turn grammar: accepts every well-formed turn, rejects each defect precisely, never raises."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from env.prompts import PROTOCOL_TAGS, SEG_TOKEN
from env.protocol import ERROR_CODES, clamp_action, clamp_index, format_turn, parse_turn, step_markers
from env.types import Action, ParseError

THINK = "Step 1: temporal, frames 3-9. Step 2: spatial, left. Step 3: expression matches. Action: select"
VTG = '<VTG>{"start": 3, "end": 9, "keyframe": 5}</VTG>'
SEG = "<RefSeg>[SEG]</RefSeg>"
GOOD_SELECT = f"<think>{THINK}</think><select>{VTG}{SEG}</select>"
GOOD_ANSWER = f"<think>{THINK}</think><answer>{VTG}{SEG}</answer>"


def _ok(text) -> Action:
    out = parse_turn(text)
    assert isinstance(out, Action), out
    return out


def _err(text) -> ParseError:
    out = parse_turn(text)
    assert isinstance(out, ParseError), out
    assert out.code in ERROR_CODES and out.message.startswith(ERROR_CODES[out.code])
    return out


def test_accepts_select_and_answer():
    a = _ok(GOOD_SELECT)
    assert (a.kind, a.start, a.end, a.keyframe) == ("select", 3, 9, 5)
    assert a.think == THINK and a.step_markers == (True, True, True, True)
    b = _ok(GOOD_ANSWER)
    assert b.kind == "answer"


@pytest.mark.parametrize("text", [
    f"  \n<think>\n{THINK}\n</think>\n\n<select>\n  {VTG}\n  {SEG}\n</select>\n",
    f"<think>{THINK}</think><select>{VTG}<RefSeg> [SEG] </RefSeg></select><|im_end|>",
    f"<think>{THINK}</think><answer>{VTG}{SEG}</answer><|im_end|><|endoftext|>",
    f'<think>x</think><answer><VTG>{{"keyframe": 5, "end": 9, "start": 3}}</VTG>{SEG}</answer>',
    f'<think>x</think><answer><VTG> {{ "start" : 3 ,"end":9, "keyframe":5 }} </VTG>{SEG}</answer>',
])
def test_accepts_whitespace_key_order_and_end_tokens(text):
    a = _ok(text)
    assert (a.start, a.end, a.keyframe) == (3, 9, 5)


def test_negative_and_huge_indices_parse_then_clamp():
    a = _ok(format_turn("t", "select", -4, 10**12, 7))
    assert (a.start, a.end) == (-4, 10**12)
    assert clamp_action(a, 50) == (0, 49, 7)
    assert clamp_index(-1, 1) == 0 and clamp_index(3, 1) == 0


def test_format_turn_round_trips():
    for kind in ("select", "answer"):
        a = _ok(format_turn("Step 1 a Step 2 b Step 3 c Action d", kind, 1, 2, 3))
        assert (a.kind, a.start, a.end, a.keyframe) == (kind, 1, 2, 3)
    with pytest.raises(ValueError):
        format_turn("x", "look", 1, 2, 3)


# One malformed example per reason code: the code is exact, not just "some error".
MALFORMED = [
    ("empty", "   "),
    ("empty", "<|im_end|>"),
    ("missing_think", f"<select>{VTG}{SEG}</select>"),
    ("text_before_think", f"Sure! <think>{THINK}</think><select>{VTG}{SEG}</select>"),
    ("think_unclosed", f"<think>{THINK}<select>{VTG}{SEG}</select>"),
    ("think_nested", f"<think>a <think> b</think><select>{VTG}{SEG}</select>"),
    ("tag_in_think", f"<think>I will use <VTG> now</think><select>{VTG}{SEG}</select>"),
    ("seg_in_think", f"<think>the [SEG] goes here</think><select>{VTG}{SEG}</select>"),
    ("missing_action", f"<think>{THINK}</think>"),
    ("missing_action", f"<think>{THINK}</think> I am done."),
    ("text_before_action", f"<think>{THINK}</think> ok: <select>{VTG}{SEG}</select>"),
    ("action_unclosed", f"<think>{THINK}</think><select>{VTG}{SEG}"),
    ("multiple_actions", f"<think>{THINK}</think><select>{VTG}{SEG}</select><answer>{VTG}{SEG}</answer>"),
    ("multiple_actions", f"<think>{THINK}</think><select>{VTG}<answer>{SEG}</answer></select>"),
    ("stray_tag", f"<think>{THINK}</think><select>{VTG}{SEG}</answer></select>"),
    ("trailing_text", f"{GOOD_SELECT} and more"),
    ("trailing_text", f"{GOOD_SELECT}<think>again</think>"),
    ("missing_vtg", f"<think>{THINK}</think><select>{SEG}</select>"),
    ("text_before_vtg", f"<think>{THINK}</think><select>frames: {VTG}{SEG}</select>"),
    ("vtg_unclosed", f'<think>{THINK}</think><select><VTG>{{"start": 1}}{SEG}</select>'),
    ("multiple_vtg", f"<think>{THINK}</think><select>{VTG}{VTG}{SEG}</select>"),
    ("vtg_bad_json", f'<think>x</think><select><VTG>{{start: 1, end: 2, keyframe: 1}}</VTG>{SEG}</select>'),
    ("vtg_bad_json", f'<think>x</think><select><VTG></VTG>{SEG}</select>'),
    ("vtg_bad_json", f'<think>x</think><select><VTG>{{"start": {"9" * 5000}, "end": 1, "keyframe": 1}}'
                     f'</VTG>{SEG}</select>'),
    ("vtg_not_object", f'<think>x</think><select><VTG>[3, 9, 5]</VTG>{SEG}</select>'),
    ("vtg_duplicate_key", f'<think>x</think><select><VTG>{{"start": 1, "start": 2, "end": 3, '
                          f'"keyframe": 2}}</VTG>{SEG}</select>'),
    ("vtg_missing_key", f'<think>x</think><select><VTG>{{"start": 1, "end": 3}}</VTG>{SEG}</select>'),
    ("vtg_extra_key", f'<think>x</think><select><VTG>{{"start": 1, "end": 3, "keyframe": 2, "k": 0}}'
                      f'</VTG>{SEG}</select>'),
    ("vtg_not_integer", f'<think>x</think><select><VTG>{{"start": 1.5, "end": 3, "keyframe": 2}}</VTG>'
                        f'{SEG}</select>'),
    ("vtg_not_integer", f'<think>x</think><select><VTG>{{"start": "1", "end": 3, "keyframe": 2}}</VTG>'
                        f'{SEG}</select>'),
    ("vtg_not_integer", f'<think>x</think><select><VTG>{{"start": true, "end": 3, "keyframe": 2}}</VTG>'
                        f'{SEG}</select>'),
    ("missing_refseg", f"<think>{THINK}</think><select>{VTG}</select>"),
    ("missing_refseg", f"<think>{THINK}</think><select>{VTG}[SEG]</select>"),
    ("text_between_vtg_refseg", f"<think>{THINK}</think><select>{VTG} mask: {SEG}</select>"),
    ("refseg_unclosed", f"<think>{THINK}</think><select>{VTG}<RefSeg>[SEG]</select>"),
    ("missing_seg", f"<think>{THINK}</think><select>{VTG}<RefSeg></RefSeg></select>"),
    ("missing_seg", f"<think>{THINK}</think><select>{VTG}<RefSeg>[SEG</RefSeg></select>"),
    ("multiple_seg", f"<think>{THINK}</think><select>{VTG}<RefSeg>[SEG][SEG]</RefSeg></select>"),
    ("multiple_seg", f"<think>{THINK}</think><select>{VTG}{SEG} [SEG]</select>"),
    ("refseg_extra_text", f"<think>{THINK}</think><select>{VTG}<RefSeg>the [SEG]</RefSeg></select>"),
    ("text_after_refseg", f"<think>{THINK}</think><select>{VTG}{SEG} done</select>"),
]


@pytest.mark.parametrize("code,text", MALFORMED, ids=[f"{c}-{i}" for i, (c, _) in enumerate(MALFORMED)])
def test_rejects_with_precise_code(code, text):
    assert _err(text).code == code


def test_every_code_except_internal_is_exercised():
    assert {c for c, _ in MALFORMED} | {"not_text", "internal"} == set(ERROR_CODES)


@pytest.mark.parametrize("value", [None, 42, b"<think>x</think>", ["<think>"]])
def test_non_text_input(value):
    assert _err(value).code == "not_text"


def test_step_markers_recorded_even_on_errors():
    e = _err(f"<think>STEP 1 ... step2 ... Action!</think><select>{VTG}</select>")
    assert e.code == "missing_refseg"
    assert e.think == "STEP 1 ... step2 ... Action!"
    assert e.step_markers == (True, True, False, True)
    e = _err(f"preamble <think>Step 3 only</think><answer>{VTG}{SEG}</answer>")
    assert e.code == "text_before_think" and e.step_markers == (False, False, True, False)
    e = _err(f"<think>the [SEG] here, step 1</think><answer>{VTG}{SEG}</answer>")
    assert e.think is not None and e.step_markers[0]
    # No think block at all: nothing to score.
    e = _err(f"<select>{VTG}{SEG}</select> step 1 step 2")
    assert e.think is None and e.step_markers == (False, False, False, False)


def test_step_marker_boundaries():
    assert step_markers("Step 1: a. step 2 b. STEP  3 c. action: d") == (True, True, True, True)
    assert step_markers("Step 12 and steps 2; reaction, transaction") == (False, False, False, False)
    assert step_markers("step1, Step2, step3; Action") == (True, True, True, True)


# --------------------------------------------------------------------------- hypothesis
_free_text = st.text(alphabet=st.characters(blacklist_characters="<>[]", blacklist_categories=("Cs",)),
                     max_size=80)
_ws = st.sampled_from(["", " ", "\n", "\n\n", "\t "])
_index = st.integers(min_value=-10**6, max_value=10**9)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(think=_free_text, kind=st.sampled_from(["select", "answer"]), s=_index, e=_index, k=_index,
       w=st.lists(_ws, min_size=6, max_size=6), order=st.permutations(["start", "end", "keyframe"]))
def test_generated_well_formed_turns_parse(think, kind, s, e, k, w, order):
    payload = json.dumps({key: {"start": s, "end": e, "keyframe": k}[key] for key in order})
    text = (f"{w[0]}<think>{think}</think>{w[1]}<{kind}>{w[2]}<VTG>{payload}</VTG>{w[3]}<RefSeg>{w[4]}[SEG]"
            f"</RefSeg>{w[5]}</{kind}>")
    a = _ok(text)
    assert (a.kind, a.start, a.end, a.keyframe) == (kind, s, e, k)
    assert a.think == think.strip()


_pieces = st.sampled_from(list(PROTOCOL_TAGS) + [SEG_TOKEN, "{", "}", '"start"', '"end"', '"keyframe"',
                                                 ":", ",", "1", "-3", "step 1", "Action", "<|im_end|>", " ",
                                                 "\n", "null", "[", "]", "\\", '"'])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), st.lists(_pieces, max_size=40).map("".join)))
def test_fuzz_random_strings_never_raise(text):
    out = parse_turn(text)
    assert isinstance(out, (Action, ParseError))
    if isinstance(out, ParseError):
        assert out.code in ERROR_CODES and out.code != "internal", out


@st.composite
def _mutated(draw):
    base = draw(st.sampled_from([GOOD_SELECT, GOOD_ANSWER, format_turn(THINK, "select", 0, 99, 40)]))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "duplicate", "swap"]))
        i = draw(st.integers(0, len(base)))
        j = draw(st.integers(i, min(len(base), i + 25)))
        if op == "delete":
            base = base[:i] + base[j:]
        elif op == "insert":
            base = base[:i] + draw(st.one_of(_pieces, st.text(max_size=5))) + base[i:]
        elif op == "duplicate":
            base = base[:j] + base[i:j] + base[j:]
        else:
            base = base[i:j] + base[:i] + base[j:]
    return base


def _check_any(text: str) -> None:
    out = parse_turn(text)
    assert isinstance(out, (Action, ParseError))
    if isinstance(out, Action):
        # Whatever was accepted must re-serialise to a turn with the same meaning.
        again = _ok(format_turn(out.think, out.kind, out.start, out.end, out.keyframe))
        assert again == Action(out.kind, out.start, out.end, out.keyframe, again.think, again.step_markers)
        assert text.count(SEG_TOKEN) == 1
    else:
        assert out.code in ERROR_CODES and out.code != "internal", out


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_fuzz_mutated_turns_never_raise_and_accept_only_the_grammar(text):
    # Each example also feeds every 5th prefix: truncation is what max_new_tokens does to a turn.
    for cut in list(range(0, len(text), 5)) + [len(text)]:
        _check_any(text[:cut])


def test_every_truncation_of_a_good_turn_is_rejected():
    for text in (GOOD_SELECT, GOOD_ANSWER):
        for cut in range(len(text)):
            _err(text[:cut])
