"""A light [SEG] scorer for evaluation: the policy without an optimizer, DeepSpeed or reference copy.

vLLM does not expose hidden states, so after greedy rollouts a no-grad policy forward over each
finished trajectory gives every turn's [SEG] hidden state (what LearnerCore.score does during
training, minus the log-probs). The reward pool then projects the states and decodes masks.

    scorer = SegScorer(cfg, policy_dir, frame_fetcher=env.frames_for)
    states = scorer.seg_hidden(trajectories)      # per trajectory, per turn: (H,) array or None
    heads = scorer.head_weights()                 # projector / prompt encoder / mask decoder
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from configs.schema import Config
from learner.batching import Collator, plan_micro_batches
from learner.policy import build_policy

log = logging.getLogger(__name__)


class SegScorer:
    def __init__(self, cfg: Config, policy_dir: str | Path, device: str | None = None, frame_fetcher=None):
        self.cfg = cfg
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.frame_fetcher = frame_fetcher
        self.dtype = torch.bfloat16 if cfg.learner.precision == "bf16" else torch.float32
        self.load(policy_dir)

    def load(self, policy_dir: str | Path) -> None:
        """(Re)load a policy directory: evaluation walks several checkpoints with one scorer."""
        from transformers import AutoProcessor

        self.policy_dir = Path(policy_dir)
        self.policy = build_policy(self.cfg.model, self.policy_dir, self.device, seed=self.cfg.run.seed).eval()
        self.collator = Collator(AutoProcessor.from_pretrained(str(self.policy_dir)), self.policy.rope_position_ids,
                                 self.device, self.dtype, self.frame_fetcher)

    def _autocast(self):
        return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16,
                              enabled=self.dtype == torch.bfloat16)

    @torch.no_grad()
    def seg_hidden(self, trajs: list) -> list[list[np.ndarray | None]]:
        out: list[list[np.ndarray | None]] = [[None] * t.num_turns for t in trajs]
        lengths = [len(t.token_ids) for t in trajs]
        for index in plan_micro_batches(lengths, self.cfg.learner.micro_batch_tokens):
            mb = self.collator(trajs, index)
            if not len(mb.seg_rows):
                continue
            with self._autocast():
                hidden = self.policy.hidden_states(mb.input_ids, mb.attention_mask, mb.pixel_values, mb.image_grid_thw,
                                                   mb.image_index, mb.unique_grid, mb.position_ids)
            seg = hidden[mb.seg_rows, mb.seg_cols].float().cpu().numpy()
            for k, (ti, turn) in enumerate(mb.seg_turns):
                out[ti][turn] = seg[k]
        return out

    def head_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.policy.head_state_dict().items()}


class SegScorerActor:
    """Ray shell: frames come from an env actor (the images the rollout showed, by FrameRef)."""

    def __init__(self, cfg: dict, policy_dir: str, env_handle, torch_threads: int | None = None):
        import ray

        logging.basicConfig(level=logging.INFO)
        if torch_threads:
            torch.set_num_threads(int(torch_threads))

        def frames(refs):
            return ray.get(env_handle.frames_for.remote(list(refs)))

        self.scorer = SegScorer(Config.model_validate(cfg), policy_dir, frame_fetcher=frames)

    def load(self, policy_dir: str) -> None:
        self.scorer.load(policy_dir)

    def seg_hidden(self, trajs: list) -> list:
        return self.scorer.seg_hidden(trajs)

    def head_weights(self) -> dict:
        return self.scorer.head_weights()
