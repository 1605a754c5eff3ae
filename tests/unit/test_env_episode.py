"""The episode state machine: turn-0 prompt, select replies, clamping, every end condition."""

import logging

import numpy as np
import pytest

from configs.schema import QWEN_UNIT, DatasetSpec, EnvConfig, EvalConfig
from env import prompts
from env.datasets import load_dataset
from env.episode import EpisodeLogic, eval_env_config
from env.errors import EpisodeStateError
from env.observations import centred_indices, interval_indices, uniform_indices
from env.protocol import format_turn
from env.video import budget_shape, resize_to_budget

CFG = EnvConfig(initial_low_res_frames=6, low_res_pixels=2 * QWEN_UNIT, initial_high_res_frames=2,
                high_res_pixels=4 * QWEN_UNIT, select_reply_frames=3, keyframe_pixels=8 * QWEN_UNIT,
                max_turns=3)
THINK = "Step 1: frames. Step 2: where. Step 3: check. Action: go"


@pytest.fixture(scope="module")
def syn(synthetic_dir):
    return load_dataset(DatasetSpec(name="syn", format="revos", root=synthetic_dir))


@pytest.fixture
def logic(syn):
    return EpisodeLogic(CFG, {"syn": syn})


@pytest.fixture(scope="module")
def sample(syn):
    return syn.samples()[0]  # 16 frames of 64x96


def _turn(kind, s, e, k):
    return format_turn(THINK, kind, s, e, k)


def test_sampling_helpers():
    assert uniform_indices(16, 6) == [0, 3, 6, 9, 12, 15]
    assert uniform_indices(4, 6) == [0, 1, 2, 3] and uniform_indices(9, 1) == [4]
    assert centred_indices(16, 2) == [4, 12] and centred_indices(3, 5) == [0, 1, 2]
    assert interval_indices(3, 5, 5) == [3, 4, 5]
    assert interval_indices(10, 30, 5) == [10, 15, 20, 25, 30]
    assert interval_indices(7, 7, 3) == [7] and interval_indices(5, 3, 3) == []


def test_turn0_observation(logic, syn, sample):
    res = logic.reset(sample, "ep-1")
    obs, st = res.observation, res.state
    assert not res.done and res.end_reason is None and st.turns == []
    assert st.initial_low == [0, 3, 6, 9, 12, 15] and st.initial_high == [4, 12]
    assert obs.system == prompts.SYSTEM_PROMPT
    assert [(r.index, r.pixels) for r in obs.frames] == (
        [(i, CFG.low_res_pixels) for i in st.initial_low]
        + [(i, CFG.high_res_pixels) for i in st.initial_high])
    originals = syn.frames(sample.video_id, [r.index for r in obs.frames])
    for ref, img, orig in zip(obs.frames, obs.images, originals):
        assert img.shape[:2] == budget_shape(64, 96, ref.pixels)
        assert np.array_equal(img, resize_to_budget(orig, ref.pixels))
    text = obs.text_only()
    assert "The video has 16 frames, indexed 0 to 15." in text
    assert f'Query: "{sample.expression}"' in text and "[0, 3, 6, 9, 12, 15]" in text and "[4, 12]" in text
    # Every image is introduced by its frame index.
    for pos, (kind, value) in enumerate(obs.parts):
        if kind == "image":
            assert obs.parts[pos - 1][1].endswith(f"Frame {obs.frames[value].index}: ")
    assert [v for k, v in obs.parts if k == "image"] == list(range(len(obs.frames)))


def test_turn0_is_deterministic_across_a_group(logic, sample):
    a = logic.reset(sample, "g-0")
    b = logic.reset(sample, "g-1")
    assert a.observation.parts == b.observation.parts and a.observation.frames == b.observation.frames
    assert all(np.array_equal(x, y) for x, y in zip(a.observation.images, b.observation.images))
    stats = logic.frames.stats()
    assert stats["frames_decoded"] == len(set(r.index for r in a.observation.frames))
    assert stats["lru_hits"] >= len(a.observation.frames)  # the second reset came from the cache


def test_select_reply_and_keyframes_seen(logic, sample):
    r0 = logic.reset(sample, "ep")
    r1 = logic.step(r0.state, _turn("select", 2, 4, 3))
    assert not r1.done and r1.state.num_turns == 1
    t1 = r1.state.turns[0]
    assert t1.clamped == (2, 4, 3) and t1.error is None and t1.keyframe_seen == 8  # 16 // 2
    assert [(r.index, r.pixels) for r in r1.observation.frames] == [
        (2, CFG.low_res_pixels), (3, CFG.low_res_pixels), (4, CFG.low_res_pixels), (3, CFG.keyframe_pixels)]
    assert t1.shown == r1.observation.frames
    assert r1.observation.images[-1].shape == (64, 96, 3)  # keyframe budget exceeds the frame: unchanged
    text = r1.observation.text_only()
    assert "Frames 2 to 4 of the video (keyframe 3); showing frames [2, 3, 4]" in text
    assert f'the query is "{sample.expression}"' in text and "You have 2 replies left." in text
    assert r1.observation.system is None
    # Long interval: uniform frames with both ends; last reply is announced.
    r2 = logic.step(r1.state, _turn("select", 0, 15, 9))
    assert [r.index for r in r2.observation.frames] == [0, 8, 15, 9]
    assert prompts.LAST_TURN.strip() in r2.observation.text_only()
    assert r2.state.turns[1].keyframe_seen == 3
    r3 = logic.step(r2.state, _turn("answer", 6, 12, 9))
    assert r3.done and r3.end_reason == "answer" and r3.observation is None
    assert [t.keyframe_seen for t in r3.state.turns] == [8, 3, 9]
    assert r3.state.turns[-1].clamped == (6, 12, 9) and r3.state.turns[-1].shown == []


def test_clamping_is_logged_and_shown(logic, sample, caplog):
    r0 = logic.reset(sample, "ep-c")
    with caplog.at_level(logging.INFO, logger="env.episode"):
        r1 = logic.step(r0.state, _turn("select", -7, 400, 99))
    assert r1.state.turns[0].clamped == (0, 15, 15)
    assert "clamped (-7, 400, 99) to (0, 15, 15)" in caplog.text
    assert "reached outside the video (frames 0 to 15)" in r1.observation.text_only()
    assert [r.index for r in r1.observation.frames] == [0, 8, 15, 15]


def test_end_conditions(logic, syn, sample):
    r0 = logic.reset(sample, "ep-e")
    bad = logic.step(r0.state, "I think it is the red one.")
    assert bad.done and bad.end_reason == "malformed" and bad.state.turns[0].error.code == "missing_think"
    assert bad.state.turns[0].action is None and bad.state.turns[0].keyframe_seen == 8
    for kind in ("select", "answer"):
        r = logic.step(r0.state, _turn(kind, 9, 4, 6))
        assert r.done and r.end_reason == "bad_interval" and r.state.turns[0].clamped == (9, 4, 6)
    # Out-of-range values that clamp to the same frame are judged as written: 30 > 20 is fine.
    ok = logic.step(r0.state, _turn("select", 20, 30, 25))
    assert not ok.done and ok.state.turns[0].clamped == (15, 15, 15)
    two = EpisodeLogic(CFG.model_copy(update={"max_turns": 2}), {"syn": syn}, logic.frames)
    s0 = two.reset(sample, "ep-m")
    assert "You have 2 replies." in s0.observation.text_only()
    s1 = two.step(s0.state, _turn("select", 1, 5, 2))
    assert prompts.LAST_TURN.strip() in s1.observation.text_only()
    s2 = two.step(s1.state, _turn("select", 2, 3, 2))
    assert s2.done and s2.end_reason == "max_turns" and s2.state.num_turns == 2
    with pytest.raises(EpisodeStateError, match="already ended"):
        two.step(s2.state, _turn("answer", 1, 2, 1))


def test_step_does_not_mutate_its_input(logic, sample):
    r0 = logic.reset(sample, "ep-p")
    r1 = logic.step(r0.state, _turn("select", 1, 3, 2))
    before = (list(r1.state.turns), r1.state.done)
    r2a = logic.step(r1.state, _turn("answer", 1, 3, 2))
    r2b = logic.step(r1.state, "garbage")  # a retried call with another text starts from the same state
    assert (list(r1.state.turns), r1.state.done) == before
    assert r2a.end_reason == "answer" and r2b.end_reason == "malformed"
    assert r0.state.turns == []


def test_eval_config_and_real_davis_budgets(davis_revos_dir):
    cfg = eval_env_config(EnvConfig(), EvalConfig())
    assert (cfg.initial_low_res_frames, cfg.initial_high_res_frames) == (20, 8)
    assert cfg.keyframe_pixels == 512 * QWEN_UNIT and cfg.max_turns == 3
    davis = load_dataset(DatasetSpec(name="davis", format="revos", root=davis_revos_dir))
    logic = EpisodeLogic(EnvConfig(), {"davis": davis})  # the paper's RL budgets
    res = logic.reset(davis.sample("davis/dog/0"), "d")
    shapes = [img.shape for img in res.observation.images]
    assert shapes[:10] == [(118, 211, 3)] * 10
    assert shapes[10:] == [budget_shape(480, 854, 128 * QWEN_UNIT) + (3,)] * 5
    r1 = logic.step(res.state, _turn("select", 10, 20, 15))
    assert r1.observation.images[-1].shape == budget_shape(480, 854, 256 * QWEN_UNIT) + (3,)
