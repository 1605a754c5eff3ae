"""`LearnerCore`: one data-parallel learner rank as a plain object (the Ray actor wraps it).

It owns the policy under a DeepSpeed engine and a frozen reference copy, and does three things:
  - score(trajectories): a no-grad forward that yields each turn's [SEG] hidden state (vLLM does not
    expose hidden states), the learner's own log-probs of the sampled tokens (for the truncated
    importance weights) and the reference policy's (for the KL);
  - train(items): the GRPO update with SEG-aware calibration and the auxiliary mask loss;
  - weight export for the rollout engines and the reward pool, and checkpoints.
Frames and image features come through injected callables, so the core runs without Ray.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from configs.schema import Config
from learner.batching import Collator, MicroBatch, plan_micro_batches
from learner.device_transfer import send_to_device
from learner.losses import (LossConfig, LossInputs, bce_dice_loss, by_target_shape, decoder_score_loss, grpo_loss,
                            mask_log_likelihood, prompt_align_sum)
from learner.policy import build_policy, mm_token_types, reference_model, save_policy
from learner.token_head import TokenScores, score_tokens
from rollout.trajectory import Trajectory
from segmentation.language_decode import HIGH_RES_S0, HIGH_RES_S1, IMAGE_EMBED

log = logging.getLogger(__name__)

FrameFetcher = Callable[[list], list]  # FrameRefs -> RGB arrays
FeatureFetcher = Callable[[object], dict]  # a ScoreResult.features value -> feature dict
GtFetcher = Callable[[object, list], np.ndarray]  # (Sample, frame indices) -> bool (n, H, W)


@dataclass
class ScoreOutput:
    traj_id: str
    seg_hidden: list[np.ndarray | None]  # per turn
    old_logp: list[float]  # learner log-probs on the sampled tokens, in sequence order
    ref_logp: list[float] | None


@dataclass
class TrainItem:
    traj: Trajectory
    advantage: float
    old_logp: list[float]
    ref_logp: list[float] | None
    score: object | None = None  # segmentation.types.ScoreResult (calibration + aux inputs)


@dataclass
class BatchTotals:
    """Global normalisers of the loss (whole batch over all ranks), computed by the driver."""

    num_sequences: int
    num_tokens: int
    max_tokens: int
    num_aux: int


@dataclass
class TrainStats:
    loss: float = 0.0
    values: dict = field(default_factory=dict)


class _PhaseClock:
    """Accumulates wall time per phase of a step (synchronising the GPU first when asked)."""

    def __init__(self, device: str | None):
        self.sync = device is not None and device.startswith("cuda")
        self.totals: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.totals[name] = self.totals.get(name, 0.0) + now - self.last
        self.last = now


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _scatter_masked(values: list[float], mask: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(mask.shape, dtype=torch.float32)
    out[mask.bool()] = torch.tensor(values, dtype=torch.float32)
    return out


class LearnerCore:
    def __init__(self, cfg: Config, policy_dir: str | Path, rank: int = 0, world_size: int = 1,
                 device: str | None = None, frame_fetcher: FrameFetcher | None = None,
                 feature_fetcher: FeatureFetcher | None = None, gt_fetcher: GtFetcher | None = None):
        import deepspeed
        from transformers import AutoProcessor

        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.policy_dir = Path(policy_dir)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.feature_fetcher = feature_fetcher or (lambda v: v)
        self.gt_fetcher = gt_fetcher
        _seed_everything(cfg.run.seed + rank)
        lc = cfg.learner
        self.policy = build_policy(cfg.model, self.policy_dir, self.device, seed=cfg.run.seed,
                                   gradient_checkpointing=lc.gradient_checkpointing,
                                   checkpoint_fraction=lc.checkpoint_fraction,
                                   freeze_vision=lc.freeze_vision,
                                   freeze_sam_decoder=lc.sam_decoder_lr_scale == 0)
        self.reference = None
        if lc.kl_coef > 0 and lc.reference_policy == "frozen_copy":
            self.reference = reference_model(self.policy)
        if lc.compile_blocks:  # after the reference copy, which stays eager
            from learner.blocks import compile_blocks

            compile_blocks(self.policy.lm)
        self.dtype = torch.bfloat16 if lc.precision == "bf16" else torch.float32
        self.collator = Collator(AutoProcessor.from_pretrained(str(self.policy_dir)), self.policy.rope_position_ids,
                                 self.device, self.dtype, frame_fetcher)
        self.loss_cfg = LossConfig(clip_low=lc.clip_eps_low, clip_high=lc.clip_eps_high, kl_coef=lc.kl_coef,
                                   kl_estimator=lc.kl_estimator, aggregation=lc.loss_aggregation,
                                   use_tis=True, tis_cap=lc.tis_cap, aux_weight=lc.aux_mask_weight)
        optimizer = torch.optim.AdamW(self._param_groups(), lr=lc.lr, betas=tuple(lc.adam_betas),
                                      weight_decay=lc.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": lc.grad_clip,
            "zero_optimization": {"stage": lc.zero_stage},
            "bf16": {"enabled": lc.precision == "bf16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.policy, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config,
            dist_init_required=True)
        self.prompt_teacher, self.prompt_anchor_scale = None, 0.0
        if lc.prompt_align_weight > 0:
            from segmentation.pretrain_text_prompt import load_prompt_teacher

            self.prompt_teacher = load_prompt_teacher(lc.prompt_teacher, self.policy.projector.out_dim,
                                                      "learner.prompt_teacher")
        self.updates = 0
        self.sync_timing = False  # benchmarks set this for exact per-phase GPU times
        self._feature_memo: dict[str, dict] = {}

    def _param_groups(self) -> list[dict]:
        """The LM first (its lr is the one logged), then the [SEG] projector and the SAM2 decoder at
        their configured multiples of lr. Frozen parameters (build_policy) are left out."""
        lc = self.cfg.learner
        policy = self.policy
        sam = [*policy.sam_prompt_encoder.parameters(), *policy.sam_mask_decoder.parameters()]
        groups = [(list(policy.lm.parameters()), 1.0), (list(policy.projector.parameters()), lc.projector_lr_scale),
                  (sam, lc.sam_decoder_lr_scale)]
        return [{"params": [p for p in params if p.requires_grad], "lr": lc.lr * scale}
                for params, scale in groups if any(p.requires_grad for p in params)]

    def _lr_factor(self, step: int) -> float:
        lc = self.cfg.learner
        if lc.warmup_steps and step < lc.warmup_steps:
            return (step + 1) / lc.warmup_steps
        if lc.lr_schedule == "linear":
            total = max(1, self.cfg.run.steps - lc.warmup_steps)
            return max(0.0, 1.0 - (step - lc.warmup_steps) / total)
        return 1.0

    @property
    def module(self):
        return self.engine.module

    # -------------------------------------------------------------------------- inputs
    def _micro_batches(self, trajs: list[Trajectory], min_batches: int = 1) -> list[list[int]]:
        return plan_micro_batches([len(t.token_ids) for t in trajs], self.cfg.learner.micro_batch_tokens,
                                  min_batches)

    def _hidden(self, module, mb: MicroBatch):
        with self._autocast():
            return module.hidden_states(mb.input_ids, mb.attention_mask, mb.pixel_values, mb.image_grid_thw,
                                        mb.image_index, mb.unique_grid, mb.position_ids)

    # --------------------------------------------------------------------------- score
    @torch.no_grad()
    def score(self, trajs: list[Trajectory]) -> list[ScoreOutput]:
        module = self.module
        module.eval()
        out: list[ScoreOutput | None] = [None] * len(trajs)
        for index in self._micro_batches(trajs):
            mb = self.collator(trajs, index)
            hidden = self._hidden(module, mb)
            old = self._token_scores(module.lm.lm_head, hidden, mb).logp
            ref = None
            if self.reference is not None:
                with self._autocast():
                    rh = self._reference_hidden(mb)
                ref = self._token_scores(self.reference.lm_head, rh, mb).logp
            seg = hidden[mb.seg_rows, mb.seg_cols].float().cpu().numpy() if len(mb.seg_rows) else None
            per_traj_seg: dict[int, dict[int, np.ndarray]] = {}
            for k, (ti, turn) in enumerate(mb.seg_turns):
                per_traj_seg.setdefault(ti, {})[turn] = seg[k]
            sel = mb.loss_mask.bool()
            for r, ti in enumerate(index):
                m = sel[r]
                t = trajs[ti]
                out[ti] = ScoreOutput(
                    traj_id=t.traj_id,
                    seg_hidden=[per_traj_seg.get(ti, {}).get(k) for k in range(t.num_turns)],
                    old_logp=old[r][m].cpu().tolist(),
                    ref_logp=ref[r][m].cpu().tolist() if ref is not None else None,
                )
        module.train()
        return out  # type: ignore[return-value]

    def _reference_hidden(self, mb: MicroBatch):
        from learner.policy import _shared_vision

        if mb.pixel_values is None:
            return self.reference.model(input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                                        use_cache=False).last_hidden_state
        mm = {"pixel_values": mb.pixel_values, "image_grid_thw": mb.image_grid_thw,
              "mm_token_type_ids": mm_token_types(mb.input_ids, self.reference.config.image_token_id)}
        with _shared_vision(self.reference.model, mb.pixel_values, mb.unique_grid, mb.image_index):
            return self.reference.model(input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                                        use_cache=False, **mm).last_hidden_state

    def _token_scores(self, head, hidden: torch.Tensor, mb: MicroBatch, **wanted) -> TokenScores:
        """The micro-batch's assistant tokens (loss mask 1) scored through `head`, in chunks of
        learner.head_chunk_tokens (learner/token_head.py); `wanted`: with_entropy, with_top1."""
        return score_tokens(head, hidden, mb.input_ids, mb.loss_mask.bool(), self.cfg.learner.head_chunk_tokens,
                            **wanted)

    # --------------------------------------------------------------------------- train
    def _features(self, item: TrainItem, key: str) -> dict:
        """A frame's image features on the device, fetched once per train call (micro-batches and
        the G rollouts of a group share frames)."""
        if key not in self._feature_memo:
            feats = self.feature_fetcher(item.score.features[key])
            moved = {}
            for k, v in feats.items():
                t = torch.as_tensor(v)
                if self.device.startswith("cuda"):
                    t = t.pin_memory().to(self.device, non_blocking=True)
                moved[k] = t.to(self.device, self.dtype)
            self._feature_memo[key] = moved
        return self._feature_memo[key]

    def _autocast(self):
        return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16,
                              enabled=self.dtype == torch.bfloat16)

    def _seg_terms(self, items: list[TrainItem], mb: MicroBatch, hidden) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
        """Calibration log-likelihoods placed at [SEG] positions (B, T), and aux BCE+Dice losses."""
        lc = self.cfg.learner
        if not len(mb.seg_rows) or all(items[ti].score is None for ti, _ in mb.seg_turns):
            return None, None, 0
        module = self.module
        embeds = module.seg_embeddings(hidden, mb.seg_rows, mb.seg_cols)  # (S, 256)
        calib = None
        # One decode job per (embedding, frame): calibration on the rollout keyframe mask, aux on ground truth.
        jobs_feat, jobs_embed = [], []
        calib_jobs, calib_targets, calib_slots, aux_jobs, aux_targets = [], [], [], [], []

        def add_job(key, k: int) -> int:
            jobs_feat.append(key)
            jobs_embed.append(k)
            return len(jobs_feat) - 1

        for k, (ti, turn) in enumerate(mb.seg_turns):
            item = items[ti]
            if item.score is None:
                continue
            ts = item.score.turns[turn]
            kf_key = ts.keyframe_feature
            if lc.calibration:
                calib_jobs.append(add_job(kf_key, k))
                calib_targets.append(ts.keyframe_mask)
                calib_slots.append(k)
            if lc.aux_mask_weight > 0 and self.gt_fetcher is not None:
                frames = [ts.keyframe] + list(item.score.sampled_frames)
                keys = [kf_key] + list(item.score.sampled_features)
                for key, gt in zip(keys, self.gt_fetcher(item.traj.sample, frames)):
                    aux_jobs.append(add_job(key, k))
                    aux_targets.append(gt)
        if not jobs_feat:
            return None, None, 0
        # Decode every (embedding, frame) pair in one batch; features of a frame are loaded once.
        uniq = {key: i for i, key in enumerate(dict.fromkeys(jobs_feat))}
        owner = {key: next(items[ti] for ti, _ in mb.seg_turns if items[ti].score is not None
                           and key in items[ti].score.features) for key in uniq}
        loaded = [self._features(owner[key], key) for key in uniq]
        idx = send_to_device(torch.tensor([uniq[key] for key in jobs_feat]), self.device)
        out = self._decode_indexed(module, embeds[send_to_device(torch.tensor(jobs_embed), self.device)], loaded, idx)
        logits = out.low_res_logits[:, 0].float()
        if calib_jobs:
            values = by_target_shape(lambda r, t: mask_log_likelihood(logits[r], t, lc.calibration_size),
                                     calib_jobs, calib_targets, self.device)
            slots = send_to_device(torch.tensor(calib_slots), self.device)
            calib = torch.zeros(mb.loss_mask.shape, device=self.device, dtype=torch.float32)
            calib = calib.index_put((mb.seg_rows[slots], mb.seg_cols[slots]), values)
        aux = None
        if aux_jobs:
            aux = by_target_shape(lambda r, t: torch.add(*self._supervised_mask_loss(out, r, t)),
                                  aux_jobs, aux_targets, self.device)
        return calib, aux, len(aux_jobs)

    def set_prompt_pool(self, expressions: list[str]) -> float:
        """Fix the prompt anchor's normaliser from the training expressions; returns the teacher's
        prompt variance over them (an anchor loss of 1 = always writing their mean prompt)."""
        if self.prompt_teacher is None:
            raise RuntimeError("set_prompt_pool needs learner.prompt_align_weight > 0")
        spread = self.prompt_teacher.spread(expressions)
        self.prompt_anchor_scale = self.cfg.learner.prompt_align_weight / spread
        return spread

    def _prompt_anchor(self, items: list[TrainItem], mb: MicroBatch, hidden, n_segs: int) -> torch.Tensor | None:
        """Summed squared error between each projected [SEG] and the teacher's prompt for its expression,
        scaled by weight / spread / (segs on this rank)."""
        if self.prompt_teacher is None or not mb.seg_turns:
            return None
        embeds = self.module.seg_embeddings(hidden, mb.seg_rows, mb.seg_cols)
        goal = torch.stack([self.prompt_teacher(items[ti].traj.sample.expression) for ti, _ in mb.seg_turns])
        return prompt_align_sum(embeds, goal) / max(n_segs, 1)

    def train(self, items: list[TrainItem], totals: BatchTotals) -> dict:
        """One optimizer step on this rank's share of the batch. Returns summed statistics."""
        module = self.module
        module.train()
        if self.prompt_teacher is not None and not self.prompt_anchor_scale:
            raise RuntimeError("learner.prompt_align_weight is set but set_prompt_pool was never called")
        trajs = [it.traj for it in items]
        n_segs = sum(tr.seg_position >= 0 for t in trajs for tr in t.turns)
        groups = self._micro_batches(trajs)
        n_real = len(groups)
        if self.world_size > 1:
            # Every rank must take the same number of backward passes before the reducing one;
            # ranks with fewer micro-batches repeat one with zero weight.
            import torch.distributed as dist

            count = torch.tensor([n_real], dtype=torch.long, device=self.device)
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
            groups += [groups[-1]] * (int(count.item()) - n_real)
        sums: dict[str, float] = {}
        started = time.time()
        clock = _PhaseClock(self.device if self.sync_timing else None)
        self._feature_memo = {}
        for g, index in enumerate(groups):
            mb = self.collator(trajs, index)
            clock.lap("t_collate")
            hidden = self._hidden(module, mb)
            scored = self._token_scores(module.lm.lm_head, hidden, mb, with_entropy=True)
            logp, ent = scored.logp, scored.entropy
            clock.lap("t_forward")
            sub = [items[i] for i in index]
            host_mask = mb.loss_mask.cpu()  # one device-to-host copy, not one per sequence
            old = torch.stack([_scatter_masked(it.old_logp, host_mask[r]) for r, it in enumerate(sub)]).to(self.device)
            ref = None
            if all(it.ref_logp is not None for it in sub) and self.loss_cfg.kl_coef > 0:
                ref = torch.stack([_scatter_masked(it.ref_logp, host_mask[r]) for r, it in enumerate(sub)]).to(self.device)
            calib, aux, _ = self._seg_terms(items, mb, hidden)
            clock.lap("t_seg_heads")
            inputs = LossInputs(
                logp=logp, old_logp=old, behaviour_logp=mb.behaviour_logp, ref_logp=ref,
                advantages=torch.tensor([it.advantage for it in sub], device=self.device),
                mask=mb.loss_mask, calib=calib, old_calib=None, aux=aux)
            loss, stats = grpo_loss(inputs, self.loss_cfg, totals.num_sequences, totals.num_tokens,
                                    totals.max_tokens, totals.num_aux)
            anchor = self._prompt_anchor(items, mb, hidden, n_segs)
            if anchor is not None:
                loss = loss + self.prompt_anchor_scale * anchor
                stats["prompt_anchor"] = float(anchor.detach())
            if g >= n_real:
                loss = loss * 0.0
                stats = {k: 0.0 for k in stats}
            clock.lap("t_loss")
            self.engine.set_gradient_accumulation_boundary(g == len(groups) - 1)
            self.engine.backward(loss)
            clock.lap("t_backward")
            stats["loss_sum"] = float(loss.detach())
            stats["entropy_sum"] = float((ent * mb.loss_mask).sum()) if g < n_real else 0.0
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
        self.engine.step()
        self._feature_memo = {}
        clock.lap("t_optimizer")
        sums.update(clock.totals)
        self.updates += 1
        sums["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        sums["lr"] = float(self.scheduler.get_last_lr()[0])
        sums["micro_batches"] = float(len(groups))
        sums["ranks"] = 1.0  # the driver sums per-rank dicts; this sum is the rank count
        sums["train_seconds"] = time.time() - started
        return sums

    # ----------------------------------------------------------------------- SFT step
    def sft_step(self, trajs: list[Trajectory], targets: list[list[list[tuple[str, np.ndarray]]]],
                 features: dict[str, dict], lm_weight: float = 1.0, mask_weight: float = 1.0,
                 prompt_targets: list[torch.Tensor] | None = None, align_weight: float = 0.0) -> dict:
        """One supervised optimizer step (cold start on VTS-CoT): token-mean cross-entropy on the
        assistant tokens (loss mask 1) plus the mean BCE + Dice of every turn's [SEG] mask.

        `targets[i][turn]` lists (feature key, ground-truth mask) pairs for that turn's [SEG];
        `features[key]` holds the frame's decode-ready SAM2 features (RewardPoolCore.export_features).
        With `prompt_targets[i]` (a prompt-token vector per trajectory) and `align_weight` > 0, the
        mean squared error of every projected [SEG] token against its trajectory's vector is added.
        The normalisers cover the whole batch, so micro-batching does not change the loss."""
        module = self.module
        module.train()
        groups = self._micro_batches(trajs)
        n_tokens = max(1, sum(t.num_generated for t in trajs))
        n_masks = max(1, sum(len(pairs) for per_turn in targets for pairs in per_turn))
        n_segs = max(1, sum(sum(1 for turn in t.turns if turn.seg_position >= 0) for t in trajs))
        aligning = prompt_targets is not None and align_weight > 0
        sums = {"lm_loss": 0.0, "mask_loss": 0.0, "score_loss": 0.0, "align_loss": 0.0, "correct": 0.0,
                "tokens": 0.0, "masks": 0.0}
        for g, index in enumerate(groups):
            mb = self.collator(trajs, index)
            hidden = self._hidden(module, mb)
            scored = self._token_scores(module.lm.lm_head, hidden, mb, with_top1=True)
            nll = -scored.logp.sum()
            loss = lm_weight * nll / n_tokens
            keys, rows, gts = [], [], []
            for k, (ti, turn) in enumerate(mb.seg_turns):
                for key, gt in targets[ti][turn]:
                    keys.append(key)
                    rows.append(k)
                    gts.append(gt)
            mask_sum = torch.zeros((), device=self.device)
            score_sum = torch.zeros((), device=self.device)
            align_sum = torch.zeros((), device=self.device)
            all_embeds = None
            if mb.seg_turns and (aligning or (keys and mask_weight > 0)):
                all_embeds = module.seg_embeddings(hidden, mb.seg_rows, mb.seg_cols)
            if aligning and all_embeds is not None:
                align_sum = prompt_align_sum(all_embeds, torch.stack([prompt_targets[ti] for ti, _ in mb.seg_turns]))
                loss = loss + align_weight * align_sum / n_segs
            if keys and mask_weight > 0:
                embeds = all_embeds[torch.tensor(rows, device=self.device)]
                out = self._decode_on_frames(embeds, keys, features)
                per_mask = by_target_shape(lambda r, t: torch.stack(self._supervised_mask_loss(out, r, t), -1),
                                           list(range(len(gts))), [np.asarray(gt) for gt in gts], self.device)
                mask_sum, score_sum = per_mask.sum(0).unbind()
                loss = loss + mask_weight * (mask_sum + score_sum) / n_masks
            self.engine.set_gradient_accumulation_boundary(g == len(groups) - 1)
            self.engine.backward(loss)
            sums["lm_loss"] += float(nll.detach()) / n_tokens
            sums["mask_loss"] += float(mask_sum.detach()) / n_masks
            sums["score_loss"] += float(score_sum.detach()) / n_masks
            sums["align_loss"] += float(align_sum.detach()) / n_segs
            sums["correct"] += float(scored.top1.sum())
            sums["tokens"] += float(mb.loss_mask[:, 1:].sum())
            sums["masks"] += float(len(keys))
        self.engine.step()
        self.updates += 1
        return {"lm_loss": sums["lm_loss"], "mask_loss": sums["mask_loss"], "score_loss": sums["score_loss"],
                "align_loss": sums["align_loss"],
                "token_accuracy": sums["correct"] / max(sums["tokens"], 1.0), "tokens": sums["tokens"],
                "masks": sums["masks"], "grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
                "lr": float(self.scheduler.get_last_lr()[0])}

    def _supervised_mask_loss(self, out, rows: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(BCE + Dice, weighted decoder-score loss) of decode rows `rows` (n,) against ground-truth
        masks (n, H, W); both (n,), to be added."""
        mask = bce_dice_loss(out.low_res_logits[rows, 0].float(), target)
        weight = self.cfg.learner.score_head_weight
        if weight == 0:
            return mask, torch.zeros_like(mask)
        score = weight * decoder_score_loss(out.all_logits[rows], out.all_ious[rows],
                                            out.object_score_logits[rows], target)
        return mask, score

    def _decode_on_frames(self, embeds: torch.Tensor, keys: list[str], features: dict[str, dict]):
        """Decode (LanguageDecodeOutput) of embeds[j] on frame keys[j]; each distinct frame's features
        loaded once."""
        pos = {key: i for i, key in enumerate(dict.fromkeys(keys))}
        loaded = [{k: torch.as_tensor(v).to(self.device, self.dtype) for k, v in features[key].items()}
                  for key in pos]
        idx = torch.tensor([pos[k] for k in keys], device=self.device)
        return self._decode_indexed(self.module, embeds, loaded, idx)

    def _decode_indexed(self, module, embeds: torch.Tensor, loaded: list[dict], idx: torch.Tensor):
        """Decode (LanguageDecodeOutput) of embeds[j] on the frame whose features are loaded[idx[j]]."""
        feats = {IMAGE_EMBED: torch.cat([f[IMAGE_EMBED] for f in loaded])[idx]}
        hr_index = None
        if HIGH_RES_S0 in loaded[0]:
            # High-res maps stay one per distinct frame; the decoder indexes them (see SegPolicy.decode).
            feats[HIGH_RES_S0] = torch.cat([f[HIGH_RES_S0] for f in loaded])
            feats[HIGH_RES_S1] = torch.cat([f[HIGH_RES_S1] for f in loaded])
            hr_index = idx
        with self._autocast():
            return module.decode(embeds, feats, hr_index)

    # ------------------------------------------------------------------------- weights
    def _gathered(self, named):
        if self.cfg.learner.zero_stage == 3:
            import deepspeed

            params = [p for _, p in named]
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return {n: p.detach().cpu().clone() for n, p in named}
        # Views into DeepSpeed's flat buffer are fine here: safetensors writes only each view's bytes.
        return {n: p.detach().cpu() for n, p in named}

    def lm_weights(self) -> dict[str, torch.Tensor]:
        named = list(self.module.lm.named_parameters())
        state = self._gathered(named)
        # buffers (e.g. rotary tables) are not trained; the engine keeps its own
        return state

    def head_weights(self) -> dict[str, torch.Tensor]:
        # clone(): DeepSpeed keeps parameters as views into one flat buffer, and pickling a view
        # would ship the whole buffer once per tensor.
        return {k: v.detach().cpu().clone() for k, v in self.module.head_state_dict().items()}

    # ---------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, ckpt_dir: str | Path, tag: str, client_state: dict) -> None:
        client_state = dict(client_state, rng=rng_state(), updates=self.updates)
        self.engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state)

    def load_checkpoint(self, ckpt_dir: str | Path, tag: str) -> dict:
        _, client_state = self.engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                      load_lr_scheduler_states=True)
        if client_state is None:
            raise FileNotFoundError(f"no learner checkpoint '{tag}' under {ckpt_dir}")
        set_rng_state(client_state["rng"])
        self.updates = int(client_state.get("updates", 0))
        return client_state

    def export_policy(self, out_dir: str | Path) -> Path:
        """A complete HF policy directory with the current weights (loads in transformers and vLLM)."""
        lm_state = {k: v for k, v in self.module.lm.state_dict().items()}
        return save_policy(self.module, out_dir, self.policy_dir, lm_state=lm_state,
                           heads_state=self.head_weights())


def distributed_env(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0",
                       "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)})
