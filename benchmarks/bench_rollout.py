"""Rollout benchmark: multi-turn episodes vs single-pass generation on the same vLLM engine.

    python -m benchmarks.bench_rollout [--quick] [--policy tiny-qwen2.5-vl] [--out PATH]

Workload: G=4 episodes for each of P synthetic prompts with the debug preset's frame budgets,
sampled under the action grammar (a random tiny policy otherwise never gets past turn 0), against
the real environment in-process. Then, on the same engine, the baseline: one request per
trajectory with its turn-0 prompt, generating as many tokens as that episode generated in total,
under a grammar of repeated turns (so per-token constraint costs match), all concurrently.

Reported (never asserted):
- generated tokens/s of both and their ratio (goal: multi-turn / single-pass >= 0.85);
- prefix-cache hit fraction of history tokens on turns >= 2: of the tokens that existed before the
  env reply (previous prompt + previous response), the share vLLM served from its prefix cache
  (goal >= 0.90);
- turns per episode, episode latency percentiles, engine start time, peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import numpy as np

from benchmarks.common import peak_rss_mb, write_result


def _history_hits(trajectories) -> tuple[int, int]:
    hit = total = 0
    for t in trajectories:
        for prev, cur in zip(t.turns, t.turns[1:]):
            history = prev.prompt_tokens + (prev.end - prev.start)
            hit += min(cur.num_cached_tokens, history)
            total += history
    return hit, total


async def _single_pass(service, trajectories, env_service) -> tuple[int, float]:
    """One request per trajectory: its turn-0 prompt, as many tokens as the episode generated."""
    from vllm.sampling_params import StructuredOutputsParams

    from rollout.format_grammar import turn_grammar

    codec, engine = service.codec, service.engine
    jobs = []
    for t in trajectories:
        res = env_service.reset(t.sample, t.traj_id + "-single")
        first = codec.first_prompt(res.observation)
        params = engine.sampling_params(service.cfg.rollout.sampling, [codec.im_end_id],
                                        max(1, t.num_generated), seed=t.group_index, seg_token_id=codec.seg_id)
        params.structured_outputs = StructuredOutputsParams(grammar=turn_grammar(codec.seg_id, repeated=True))
        jobs.append(engine.generate_turn(first.token_ids, first.images, params))
    started = time.perf_counter()
    outs = await asyncio.gather(*jobs)
    return sum(len(o.token_ids) for o in outs), time.perf_counter() - started


async def run(quick: bool, policy: str) -> dict:
    from configs import load_config
    from env.service import EnvService
    from rollout.episode_runner import LocalEnvClient
    from rollout.service import RolloutService
    from rollout.tiny_policy import build_tiny_policy

    prompts = 4 if quick else 12
    cfg = load_config(overrides=[
        f"model.policy={policy}", "rollout.constrain_format=true", "rollout.max_episodes_in_flight=64",
        f"data.train=[{{name: synthetic, format: synthetic, videos: {prompts}, seed: 11, frames_per_video: 24}}]",
    ])
    model_dir = build_tiny_policy(policy, cfg.model.cache_dir) if cfg.model.is_tiny_policy else policy
    env_service = EnvService(cfg.env, cfg.data.train, cache_dir=str(cfg.model.cache_dir))
    by_video = {}
    for sid in env_service.sample_ids():
        s = env_service.sample(sid)
        by_video.setdefault(s.video_id, s)
    samples = list(by_video.values())[:prompts]
    service = RolloutService(cfg, model_dir, LocalEnvClient(env_service))
    try:
        await service.generate(samples[:1], 2, rollout_step=999)  # warm-up (compiles, caches)
        started = time.perf_counter()
        trajs = await service.generate(samples, cfg.learner.group_size, rollout_step=0)
        multi_s = time.perf_counter() - started
        multi_tokens = sum(t.num_generated for t in trajs)
        single_tokens, single_s = await _single_pass(service, trajs, env_service)
    finally:
        service.shutdown()
    hit, hist = _history_hits(trajs)
    lat = np.array([t.timings["episode_seconds"] for t in trajs])
    turns = [t.num_turns for t in trajs]
    multi_tps, single_tps = multi_tokens / multi_s, single_tokens / single_s
    return {
        "config": {"policy": policy, "prompts": len(samples), "group_size": cfg.learner.group_size,
                   "episodes": len(trajs), "max_new_tokens": cfg.rollout.sampling.max_new_tokens,
                   "block_size": cfg.rollout.block_size, "constrained": True},
        "engine_start_s": round(service.engine.startup_seconds, 1),
        "multi_turn": {"seconds": round(multi_s, 3), "generated_tokens": multi_tokens,
                       "tokens_per_s": round(multi_tps, 1),
                       "turns_per_episode": {str(k): turns.count(k) for k in sorted(set(turns))},
                       "end_reasons": {r: sum(t.end_reason == r for t in trajs) for r in sorted({t.end_reason for t in trajs})},
                       "episode_p50_s": round(float(np.percentile(lat, 50)), 3),
                       "episode_p99_s": round(float(np.percentile(lat, 99)), 3)},
        "single_pass": {"seconds": round(single_s, 3), "generated_tokens": single_tokens,
                        "tokens_per_s": round(single_tps, 1)},
        "ratio_multi_over_single": round(multi_tps / single_tps, 3),
        "goal_ratio": 0.85,
        "prefix_cache_history_hit_fraction": round(hit / hist, 4) if hist else None,
        "history_tokens_turn_ge2": hist,
        "goal_hit_fraction": 0.90,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--policy", default="tiny-qwen2.5-vl")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = asyncio.run(run(args.quick, args.policy))
    path = write_result("rollout", result, args.out)
    print(f"multi-turn {result['multi_turn']['tokens_per_s']} tok/s, single-pass "
          f"{result['single_pass']['tokens_per_s']} tok/s, ratio {result['ratio_multi_over_single']}, "
          f"history hit {result['prefix_cache_history_hit_fraction']} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
