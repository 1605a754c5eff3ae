"""The VTS-CoT oracle: it plays real episodes that end in a correct answer, in the protocol's format."""

import json

import numpy as np
import pytest

from configs.schema import QWEN_UNIT, DatasetSpec, EnvConfig
from env.protocol import parse_turn
from env.service import EnvService
from env.types import Action
from env.vtscot import read_vtscot
from env.vtscot_oracle import (best_keyframe, first_look_keyframe, generate_records, longest_run, main,
                               oracle_record, position_phrase, visible_runs, wide_window)

CFG = EnvConfig(initial_low_res_frames=4, low_res_pixels=2 * QWEN_UNIT, initial_high_res_frames=2,
                high_res_pixels=4 * QWEN_UNIT, select_reply_frames=3, keyframe_pixels=8 * QWEN_UNIT, max_turns=3)


@pytest.fixture(scope="module")
def env(synthetic_dir, tmp_path_factory):
    spec = DatasetSpec(name="syn", format="revos", root=synthetic_dir)
    return EnvService(CFG, [spec], cache_dir=str(tmp_path_factory.mktemp("oracle_cache")))


def test_runs_and_keyframe_choice():
    presence = [False, True, True, False, True, True, True, False]
    assert visible_runs(presence) == [(1, 2), (4, 6)]
    assert longest_run(presence) == (4, 6)
    assert longest_run([False] * 4) is None
    assert longest_run([True, False, True]) == (0, 0)  # equal lengths: the earliest
    assert best_keyframe({4: 10, 5: 30, 6: 30}, (4, 6)) == 5  # ties broken towards the middle
    assert best_keyframe({}, (2, 6)) == 4
    assert first_look_keyframe((4, 6), 5, tuple(presence)) in (4, 6)
    assert first_look_keyframe((3, 3), 3, (False, False, False, True)) == 3
    assert wide_window((10, 12), 40) == (5, 17) and wide_window((0, 39), 40) == (0, 39)


def test_position_phrase():
    m = np.zeros((30, 30), bool)
    m[0:5, 0:5] = True
    assert position_phrase(m) == "top left"
    m[:] = False
    m[12:18, 12:18] = True
    assert position_phrase(m) == "centre"
    m[:] = False
    m[25:, 12:18] = True
    assert position_phrase(m) == "bottom"
    assert position_phrase(np.zeros((4, 4), bool)) == "nowhere"


@pytest.mark.parametrize("n_turns", [1, 2, 3])
def test_oracle_episode_answers_on_a_visible_best_frame(env, n_turns):
    sample = env.sample(env.sample_ids()[0])
    record = oracle_record(env, sample, seed=0, n_turns=n_turns)
    assert record is not None and len(record.trace) == n_turns
    assert [t.action for t in record.trace] == ["select"] * (n_turns - 1) + ["answer"]
    presence = env.presence(sample)
    run = longest_run(presence)
    final = record.trace[-1]
    assert (final.start, final.end) == run
    areas = env.gt_masks(sample, [final.keyframe])[0].sum()
    assert presence[final.keyframe] and areas == max(env.gt_masks(sample, list(range(run[0], run[1] + 1))).sum((1, 2)))
    for msg in record.conversation:
        if msg["role"] == "assistant":
            action = parse_turn(msg["content"])
            assert isinstance(action, Action)
            think = msg["content"]
            # the three-step reasoning structure of the protocol, then the action
            assert think.index("Step 1: temporal") < think.index("Step 2: spatial") < think.index("Step 3: expression")
    # a select shows the keyframe it asked for at the keyframe budget
    for turn, trace in zip(record.shown[1:], record.trace):
        assert (trace.keyframe, CFG.keyframe_pixels) in [(f.index, f.pixels) for f in turn.frames]


def test_generated_file_reads_back_and_is_deterministic(env, tmp_path, synthetic_dir):
    records = list(generate_records(env, seed=3))
    visible = [sid for sid in env.sample_ids() if any(env.presence(env.sample(sid)))]
    assert len(records) == len(visible) > 0
    assert {len(r.trace) for r in records} <= {1, 2, 3}
    again = list(generate_records(env, seed=3))
    assert [r.trace for r in records] == [r.trace for r in again]
    # the CLI writes a file that passes the reader's validation
    out = tmp_path / "oracle.jsonl"
    rc = main(["--out", str(out), "--data", str(synthetic_dir), "--format", "revos", "--name", "syn",
               "--max-samples", "3", "env.initial_low_res_frames=4", f"env.low_res_pixels={2 * QWEN_UNIT}",
               f"env.high_res_pixels={4 * QWEN_UNIT}", f"env.keyframe_pixels={8 * QWEN_UNIT}",
               "model.cache_dir=" + str(tmp_path / "cache")])
    assert rc == 0
    read = list(read_vtscot(out))
    assert len(read) == 3 and all(r.sample_id.startswith("syn/") for r in read)
    assert json.loads(out.read_text().splitlines()[0])["extra"]["generator"].startswith("env.vtscot_oracle")


def test_cli_refuses_a_bad_override(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x.jsonl"), "env.max_turns=0"]) == 2
    assert "max_turns" in capsys.readouterr().err
