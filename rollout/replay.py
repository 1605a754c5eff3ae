"""Build a trajectory from given assistant texts, without an inference engine.

The episode is played against the real environment exactly as the rollout runner plays it, and the
token sequence is built the same way (the conversation codec's segments, image pads expanded to
each image's token count under the pinned processor settings), so the learner sees identical
inputs. Used by supervised cold-start training (the texts come from VTS-CoT trajectories) and by
tests that need trajectories with chosen content.
"""

from __future__ import annotations

from env.types import Sample
from rollout.conversation import ConversationCodec
from rollout.trajectory import Trajectory, TurnTrace


def expand_image_pads(ids: list[int], image_pad_id: int, counts: list[int]) -> list[int]:
    out, k = [], 0
    for t in ids:
        if t == image_pad_id:
            if k >= len(counts):
                raise ValueError("more image pads than images")
            out += [image_pad_id] * counts[k]
            k += 1
        else:
            out.append(t)
    if k != len(counts):
        raise ValueError(f"{len(counts)} images but {k} image pads")
    return out


def replay_episode(sample: Sample, texts: list[str], env, codec: ConversationCodec, image_tokens,
                   traj_id: str | None = None, group_index: int = 0, rollout_step: int = 0) -> Trajectory:
    """Play `texts` as the assistant turns (stopping where the env ends the episode).

    `env` has synchronous reset(sample, episode_id) / step(state, text) (EpisodeLogic, EnvService);
    `image_tokens(img)` gives an image's token count. Log-probs are left at 0 (not sampled)."""
    traj_id = traj_id or f"{sample.sample_id}#{group_index}@{rollout_step}"
    res = env.reset(sample, traj_id)
    seg = codec.first_prompt(res.observation)
    ids = expand_image_pads(seg.token_ids, codec.image_pad_id, [image_tokens(im) for im in seg.images])
    frames = list(res.observation.frames)
    prompt_length = len(ids)
    mask = [0] * len(ids)
    state = res.state
    traces = []
    for turn, text in enumerate(texts):
        body = codec.encode(text) + [codec.im_end_id]
        start = len(ids)
        ids += body
        mask += [1] * len(body)
        res = env.step(state, text)
        state = res.state
        record = state.turns[-1]
        segs = [start + i for i, t in enumerate(body) if t == codec.seg_id]
        traces.append(TurnTrace(start=start, end=start + len(body), seg_position=segs[-1] if segs else -1,
                                num_seg_tokens=len(segs), keyframe_seen=record.keyframe_seen,
                                num_images_before=len(frames), policy_version=0, num_cached_tokens=0,
                                prompt_tokens=start, finish_reason="stop", gen_seconds=0.0, record=record))
        if res.done:
            break
        reply = codec.env_reply(res.observation, turn_ended_with_im_end=True)
        more = expand_image_pads(reply.token_ids, codec.image_pad_id, [image_tokens(im) for im in reply.images])
        ids += more
        mask += [0] * len(more)
        frames += res.observation.frames
    traj = Trajectory(traj_id=traj_id, sample=sample, group_index=group_index, token_ids=ids, loss_mask=mask,
                      logprobs=[0.0] * len(ids), frames=frames, turns=traces,
                      initial_high=list(state.initial_high), initial_low=list(state.initial_low),
                      end_reason=state.end_reason or "max_turns", prompt_length=prompt_length,
                      rollout_step=rollout_step)
    traj.check()
    return traj
