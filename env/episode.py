"""The episode state machine (METHOD.md section 2), as pure functions of (config, state, text).

    reset(sample)            -> turn-0 observation; state with the sampled frame indices
    step(state, turn text)   -> parse; then one of
        malformed     the turn does not parse (never retried)
        bad_interval  the VTG has end < start (judged on the values as written)
        answer        an <answer>: the episode is committed
        max_turns     a <select> on the last allowed turn: no reply is owed
        otherwise     the reply to the <select>: frames of [s, e] and the keyframe, clamped

`step` never mutates its input; the caller (a rollout worker) carries the returned state to the
next call, so the env actor holds nothing between calls and a restarted actor loses nothing.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from env.errors import DataError, EpisodeStateError
from env.frame_cache import make_frame_cache
from env.frames import FrameServer, as_lookup
from env.observations import initial_frames, interval_indices, select_reply_message, turn0_message
from env.prompts import SYSTEM_PROMPT
from env.protocol import clamp_action, parse_turn
from env.types import Action, EpisodeState, Sample, StepResult, TurnRecord

log = logging.getLogger(__name__)


# The episode settings the eval section overrides in the env config (same names in both).
EVAL_SETTING_KEYS = ("initial_low_res_frames", "initial_high_res_frames", "keyframe_pixels", "max_turns")


def eval_env_config(env_cfg, eval_cfg):
    """The env config for evaluation: the paper evaluates with more and sharper initial frames."""
    return env_cfg.model_copy(update={k: getattr(eval_cfg, k) for k in EVAL_SETTING_KEYS})


def keyframe_seen_for(state: EpisodeState) -> int:
    """The keyframe whose high-res view the model had when writing its next turn (CONTRACTS.md)."""
    for turn in reversed(state.turns):
        if turn.clamped is not None and turn.action is not None and turn.action.kind == "select":
            return turn.clamped[2]
    return state.sample.num_frames // 2


class EpisodeLogic:
    """Turn-0 observations, select replies and end conditions for one env configuration."""

    def __init__(self, env_cfg, dataset_lookup, frame_server: FrameServer | None = None):
        self.cfg = env_cfg
        self._lookup = as_lookup(dataset_lookup)
        if frame_server is None:
            frame_server = FrameServer(self._lookup, make_frame_cache(env_cfg.frame_cache))
        self.frames = frame_server

    # -------------------------------------------------------------------------- reset
    def initial_indices(self, sample: Sample) -> tuple[list[int], list[int]]:
        return initial_frames(sample.num_frames, self.cfg.initial_low_res_frames,
                              self.cfg.initial_high_res_frames)

    def reset(self, sample: Sample, episode_id: str) -> StepResult:
        if sample.num_frames <= 0:
            raise DataError(f"sample '{sample.sample_id}' has no frames")
        low, high = self.initial_indices(sample)
        builder = turn0_message(sample, low, high, self.cfg.low_res_pixels, self.cfg.high_res_pixels,
                                self.cfg.max_turns)
        obs = builder.build(self.frames.get_refs(builder.frames), system=SYSTEM_PROMPT)
        state = EpisodeState(sample=sample, episode_id=episode_id, initial_low=low, initial_high=high)
        return StepResult(state=state, observation=obs, done=False, end_reason=None)

    # --------------------------------------------------------------------------- step
    def step(self, state: EpisodeState, assistant_text: str) -> StepResult:
        if state.done:
            raise EpisodeStateError(f"episode {state.episode_id} already ended ({state.end_reason}); "
                                    "start a new one with reset")
        if state.num_turns >= self.cfg.max_turns:
            raise EpisodeStateError(f"episode {state.episode_id} has used all {self.cfg.max_turns} turns")
        n = state.sample.num_frames
        parsed = parse_turn(assistant_text)
        record = TurnRecord(text=assistant_text if isinstance(assistant_text, str) else repr(assistant_text),
                            action=parsed if isinstance(parsed, Action) else None,
                            error=None if isinstance(parsed, Action) else parsed,
                            keyframe_seen=keyframe_seen_for(state))
        turns = list(state.turns) + [record]
        if record.action is None:
            return self._end(state, turns, "malformed")
        action = record.action
        record.clamped = clamp_action(action, n)
        requested = (action.start, action.end, action.keyframe)
        if record.clamped != requested:
            log.info("episode %s turn %d: clamped %s to %s (video has %d frames)", state.episode_id,
                     len(turns), requested, record.clamped, n)
        if action.end < action.start:
            return self._end(state, turns, "bad_interval")
        if action.kind == "answer":
            return self._end(state, turns, "answer")
        if len(turns) >= self.cfg.max_turns:
            return self._end(state, turns, "max_turns")
        start, end, keyframe = record.clamped
        shown = interval_indices(start, end, self.cfg.select_reply_frames)
        builder = select_reply_message(state.sample, requested, record.clamped, shown,
                                       self.cfg.low_res_pixels, self.cfg.keyframe_pixels,
                                       turns_left=self.cfg.max_turns - len(turns))
        obs = builder.build(self.frames.get_refs(builder.frames))
        record.shown = list(obs.frames)
        new_state = replace(state, turns=turns)
        return StepResult(state=new_state, observation=obs, done=False, end_reason=None)

    @staticmethod
    def _end(state: EpisodeState, turns: list[TurnRecord], reason) -> StepResult:
        new_state = replace(state, turns=turns, done=True, end_reason=reason)
        return StepResult(state=new_state, observation=None, done=True, end_reason=reason)
