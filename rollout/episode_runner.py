"""Runs multi-turn episodes on one engine against the environment, many at once.

Per episode: ask the env for the turn-0 observation, sample one assistant turn (stop at
<|im_end|>), hand the text to the env, append its reply as tokens with loss mask 0, repeat until the
env ends the episode. Token ids are kept exactly as sampled; the history is never re-rendered.
All G episodes of a prompt run concurrently, and so do the groups of a batch (bounded by
`max_in_flight`), so the engine's continuous batching sees many sequences.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Protocol

from configs.schema import SamplingConfig
from env.types import Sample, StepResult, TurnRecord
from rollout.conversation import ConversationCodec
from rollout.trajectory import Trajectory, TurnTrace

log = logging.getLogger(__name__)

# Tokens that only the environment may place: a sampled image pad would desynchronise the images.
ENV_ONLY_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
MIN_TURN_TOKENS = 16


class EnvClient(Protocol):
    async def reset(self, sample: Sample, episode_id: str) -> StepResult: ...

    async def step(self, state, assistant_text: str) -> StepResult: ...


class LocalEnvClient:
    """In-process environment (plain EpisodeLogic); used in unit tests and single-process tools."""

    def __init__(self, logic):
        self.logic = logic

    async def reset(self, sample, episode_id):
        return await asyncio.to_thread(self.logic.reset, sample, episode_id)

    async def step(self, state, assistant_text):
        return await asyncio.to_thread(self.logic.step, state, assistant_text)


def episode_seed(base: int, sample_id: str, group_index: int, rollout_step: int, turn: int) -> int:
    key = f"{base}:{sample_id}:{group_index}:{rollout_step}:{turn}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")


def failed_trajectory(sample: Sample, group_index: int, rollout_step: int, error: str) -> Trajectory:
    return Trajectory(traj_id=f"{sample.sample_id}#{group_index}@{rollout_step}", sample=sample,
                      group_index=group_index, token_ids=[], loss_mask=[], logprobs=[], frames=[], turns=[],
                      initial_high=[], initial_low=[], end_reason="data_error", prompt_length=0,
                      rollout_step=rollout_step, error=error)


class EpisodeRunner:
    def __init__(self, engine, codec: ConversationCodec, env: EnvClient, sampling: SamplingConfig,
                 max_model_len: int, max_in_flight: int = 64, seed: int = 0, image_tokens=None):
        self.engine = engine
        self.codec = codec
        self.env = env
        self.sampling = sampling
        self.max_model_len = max_model_len
        self.seed = seed
        self.semaphore = asyncio.Semaphore(max_in_flight)
        self.stop_ids = [codec.im_end_id]
        self.banned = {codec.tokenizer.convert_tokens_to_ids(t) for t in ENV_ONLY_TOKENS}
        # Counts image tokens for the length budget before vLLM expands a prompt.
        self.image_tokens = image_tokens or (lambda img: 0)

    def _params(self, max_tokens: int, seed: int):
        params = self.engine.sampling_params(self.sampling, self.stop_ids, max_tokens, seed, self.codec.seg_id)
        params.logit_bias = {int(t): -100.0 for t in self.banned}
        return params

    async def run_batch(self, samples: list[Sample], group_size: int, rollout_step: int = 0) -> list[Trajectory]:
        jobs = [self.run_episode(s, g, rollout_step) for s in samples for g in range(group_size)]
        return list(await asyncio.gather(*jobs))

    async def run_episode(self, sample: Sample, group_index: int, rollout_step: int = 0) -> Trajectory:
        from env.errors import DataError

        async with self.semaphore:
            try:
                return await self._run(sample, group_index, rollout_step)
            except DataError as exc:
                # Unusable data (corrupt video, missing frames, bad annotation): report it with the
                # trajectory so the driver quarantines the sample; the rest of the batch goes on.
                log.warning("episode %s#%d: %s", sample.sample_id, group_index, exc)
                return failed_trajectory(sample, group_index, rollout_step, f"{type(exc).__name__}: {exc}")

    async def _run(self, sample: Sample, group_index: int, rollout_step: int) -> Trajectory:
        started = time.time()
        traj_id = f"{sample.sample_id}#{group_index}@{rollout_step}"
        res = await self.env.reset(sample, traj_id)
        state = res.state
        first = self.codec.first_prompt(res.observation)
        compact = list(first.token_ids)
        images = list(first.images)
        frames = list(res.observation.frames)
        expanded_len = len(compact) + sum(self.image_tokens(im) - 1 for im in images)
        prompt_length = None
        traces: list[TurnTrace] = []
        responses: list[tuple[int, list[int], list[float]]] = []
        last_prompt: list[int] = []
        env_seconds = time.time() - started
        end_reason = None
        turn = 0
        while True:
            budget = min(self.sampling.max_new_tokens, self.max_model_len - expanded_len - 1)
            if budget < MIN_TURN_TOKENS:
                end_reason = "context_limit"
                break
            seed = episode_seed(self.seed, sample.sample_id, group_index, rollout_step, turn)
            version = getattr(self.engine, "weight_version", 0)
            out = await self.engine.generate_turn(compact, images, self._params(budget, seed))
            last_prompt = out.prompt_token_ids
            if prompt_length is None:
                prompt_length = len(last_prompt)
            start = len(last_prompt)
            responses.append((start, out.token_ids, out.logprobs))
            ended = bool(out.token_ids) and out.token_ids[-1] == self.codec.im_end_id
            body = out.token_ids[:-1] if ended else out.token_ids
            text = self.codec.tokenizer.decode(body, skip_special_tokens=False)
            t0 = time.time()
            res = await self.env.step(state, text)
            env_seconds += time.time() - t0
            state = res.state
            record: TurnRecord = state.turns[-1]
            seg = [start + i for i, t in enumerate(out.token_ids) if t == self.codec.seg_id]
            traces.append(TurnTrace(
                start=start, end=start + len(out.token_ids),
                seg_position=seg[-1] if seg else -1, num_seg_tokens=len(seg),
                keyframe_seen=record.keyframe_seen, num_images_before=len(images),
                policy_version=version, num_cached_tokens=out.num_cached_tokens,
                prompt_tokens=len(last_prompt), finish_reason=out.finish_reason,
                gen_seconds=out.seconds, record=record,
            ))
            compact += out.token_ids
            expanded_len = len(last_prompt) + len(out.token_ids)
            turn += 1
            if res.done:
                end_reason = res.end_reason
                break
            reply = self.codec.env_reply(res.observation, turn_ended_with_im_end=ended)
            compact += reply.token_ids
            images += reply.images
            frames += res.observation.frames
            expanded_len += len(reply.token_ids) + sum(self.image_tokens(im) - 1 for im in reply.images)
        return self._assemble(traj_id, sample, group_index, rollout_step, state, traces, responses,
                              last_prompt, prompt_length or 0, frames, end_reason, started, env_seconds)

    def _assemble(self, traj_id, sample, group_index, rollout_step, state, traces, responses,
                  last_prompt, prompt_length, frames, end_reason, started, env_seconds) -> Trajectory:
        if responses:
            last_start, last_ids, _ = responses[-1]
            token_ids = list(last_prompt) + list(last_ids)
        else:
            token_ids = list(last_prompt)
        loss_mask = [0] * len(token_ids)
        logprobs = [0.0] * len(token_ids)
        for start, ids, lps in responses:
            if token_ids[start:start + len(ids)] != list(ids):
                raise RuntimeError(f"{traj_id}: engine prompt does not extend the previous turn")
            for i, lp in enumerate(lps):
                loss_mask[start + i] = 1
                logprobs[start + i] = lp
        traj = Trajectory(
            traj_id=traj_id, sample=sample, group_index=group_index, token_ids=token_ids,
            loss_mask=loss_mask, logprobs=logprobs, frames=frames, turns=traces,
            initial_high=list(state.initial_high), initial_low=list(state.initial_low),
            end_reason=end_reason or state.end_reason or "max_turns", prompt_length=prompt_length,
            rollout_step=rollout_step,
            timings={"episode_seconds": time.time() - started, "env_seconds": env_seconds,
                     "gen_seconds": sum(t.gen_seconds for t in traces)},
        )
        traj.check()
        return traj
