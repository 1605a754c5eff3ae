"""Trajectory consistency checks and the Arrow/Parquet round trip."""

import pytest

from env.types import Action, FrameRef, ParseError, Sample, TurnRecord
from rollout.trajectory import Trajectory, TurnTrace, read_parquet, to_arrow, from_arrow, write_parquet


def _sample():
    return Sample("syn/v0/0", "syn", "v0", "0", "the red square", (1,), ("101",), 12, 64, 96, 0,
                  tuple([True] * 6 + [False] * 6))


def _traj():
    act = Action("select", 1, 4, 2, " Step 1: a Action: b ", (True, False, False, True))
    err = ParseError("no_action", "no <select> or <answer> found", " t ", (False, True, False, False))
    turns = [
        TurnTrace(10, 14, 12, 1, 6, 3, 0, 0, 10, "stop", 0.1,
                  TurnRecord("txt", act, None, (1, 4, 2), 6, [FrameRef("syn", "v0", 2, 100)])),
        TurnTrace(20, 23, -1, 0, 2, 5, 1, 16, 20, "stop", 0.2, TurnRecord("bad", None, err, None, 2, [])),
    ]
    ids = list(range(23))
    mask = [0] * 23
    for i in list(range(10, 14)) + list(range(20, 23)):
        mask[i] = 1
    lps = [(-0.125 * i if m else 0.0) for i, m in enumerate(mask)]
    return Trajectory("syn/v0/0#1@3", _sample(), 1, ids, mask, lps,
                      [FrameRef("syn", "v0", i, 50) for i in range(5)], turns, [0, 5], [0, 2, 4],
                      "malformed", 10, 3, {"episode_seconds": 1.5})


def test_check_accepts_consistent_and_rejects_broken():
    t = _traj()
    t.check()
    t.loss_mask[0] = 1
    with pytest.raises(AssertionError, match="prompt tokens carry loss"):
        t.check()
    t = _traj()
    t.turns[0].seg_position = 16
    with pytest.raises(AssertionError, match="outside its turn"):
        t.check()


def test_arrow_and_parquet_roundtrip(tmp_path):
    t = _traj()
    again = from_arrow(to_arrow([t, t]))
    assert again[0] == t and again[1] == t
    write_parquet([t], tmp_path / "t.parquet")
    assert read_parquet(tmp_path / "t.parquet") == [t]
