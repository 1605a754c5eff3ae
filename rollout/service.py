"""`RolloutService`: one vLLM engine plus the episode runner, as a plain object.

The Ray actor (rollout/actor.py) is a thin shell around it; tools and tests can use it in-process.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from configs.schema import Config, SamplingConfig
from env.prompts import SYSTEM_PROMPT
from env.types import Sample
from rollout.conversation import ConversationCodec
from rollout.engine import RolloutEngine, max_images_per_episode
from rollout.episode_runner import EpisodeRunner
from rollout.processor_config import image_token_count
from rollout.weight_transport import read_manifest

log = logging.getLogger(__name__)


class RayEnvClient:
    """Talks to env actors. All turns of an episode go to one actor (its frame cache is warm);
    if that actor fails, the call is retried on the next one (the env keeps no episode state)."""

    def __init__(self, handles: list, retries: int = 3, timeout_s: float = 120.0):
        if not handles:
            raise ValueError("RayEnvClient needs at least one env actor handle")
        self.handles = list(handles)
        self.retries = retries
        self.timeout_s = timeout_s

    def _pick(self, episode_id: str, attempt: int):
        h = int.from_bytes(hashlib.blake2b(episode_id.encode(), digest_size=4).digest(), "little")
        return self.handles[(h + attempt) % len(self.handles)]

    async def _call(self, episode_id: str, method: str, *args):
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        last = None
        for attempt in range(self.retries + 1):
            handle = self._pick(episode_id, attempt)
            try:
                ref = getattr(handle, method).remote(*args)
                return await asyncio.wait_for(ref, timeout=self.timeout_s)
            except (RayActorError, GetTimeoutError, asyncio.TimeoutError) as exc:
                last = exc
                log.warning("env actor call %s failed (attempt %d): %s", method, attempt + 1, exc)
                await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
        raise RuntimeError(f"env call {method} failed after {self.retries + 1} attempts: {last}") from last

    async def reset(self, sample, episode_id):
        return await self._call(episode_id, "reset", sample, episode_id)

    async def step(self, state, assistant_text):
        return await self._call(state.episode_id, "step", state, assistant_text)


class RolloutService:
    def __init__(self, cfg: Config, model_dir: str | Path, env_client, seed: int | None = None):
        from transformers import AutoTokenizer

        self.cfg = cfg
        seed = cfg.run.seed if seed is None else seed
        max_images = max_images_per_episode(
            cfg.env, (cfg.eval.initial_low_res_frames, cfg.eval.initial_high_res_frames))
        self.engine = RolloutEngine(model_dir, cfg.rollout, max_images, seed=seed, dtype=cfg.model.dtype)
        family = self.engine.family
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.codec = ConversationCodec(tokenizer, SYSTEM_PROMPT)
        self.runner = EpisodeRunner(
            self.engine, self.codec, env_client, cfg.rollout.sampling, cfg.rollout.max_model_len,
            cfg.rollout.max_episodes_in_flight, seed,
            image_tokens=lambda im: image_token_count(im.shape[0], im.shape[1], family),
        )

    async def generate(self, samples: list[Sample], group_size: int, rollout_step: int = 0,
                       sampling: SamplingConfig | None = None, env_client=None):
        runner = self.runner
        if sampling is not None or env_client is not None:
            runner = EpisodeRunner(
                self.engine, self.codec, env_client or self.runner.env, sampling or self.runner.sampling,
                self.runner.max_model_len, self.cfg.rollout.max_episodes_in_flight, self.runner.seed,
                image_tokens=self.runner.image_tokens)
        return await runner.run_batch(samples, group_size, rollout_step)

    async def update_weights(self, version_dir: str, version: int) -> dict:
        manifest = read_manifest(version_dir)
        if int(manifest["version"]) != int(version):
            raise ValueError(f"weight manifest in {version_dir} is version {manifest['version']}, expected {version}")
        return await self.engine.load_weights([f["path"] for f in manifest["files"]], version)

    @property
    def weight_version(self) -> int:
        return self.engine.weight_version

    def shutdown(self) -> None:
        self.engine.shutdown()
