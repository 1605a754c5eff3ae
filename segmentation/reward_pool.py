"""The SAM2 reward pool: [SEG] states in, masks, IoUs and rewards out.

`RewardPoolCore` is plain Python (no Ray): it holds SAM2, the [SEG] projector and the feature
cache, and scores batches of finished episodes. `SegRewardPoolActor` is the thin Ray shell around
one core; `RewardPool` drives M of them, routing every trajectory of a video to the same actor so
a group's G rollouts (and later visits to the video) hit one feature cache.

Scoring one batch (METHOD.md section 3, docs/CONTRACTS.md):
  1. gather the frames every trajectory needs (its sampled frames `initial_high` and each turn's
     `keyframe_seen`), encode the ones not cached, in batches;
  2. project each turn's [SEG] hidden state to a prompt token and decode it, batched over all
     (turn, frame) pairs, on its keyframe and on the sampled frames;
  3. threshold at probability 0.5 at the original resolution and take IoU against ground truth;
  4. evaluate the reward terms.
Scoring is a pure function of (request, weights version): a retried call returns the same result.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from configs.schema import ModelConfig, RewardConfig
from env.errors import DataError
from env.types import EpisodeState, Sample
from segmentation.data_sources import EnvDataSources, FrameSource, GtSource, PresenceSource
from segmentation.features import (FeatureCache, FrameFeatures, frame_key, memory_free_embedding,
                                   stack_decode_features)
from segmentation.language_decode import HIGH_RES_S0, HIGH_RES_S1, IMAGE_EMBED, language_decode
from segmentation.propagation import Track, propagate_tracks
from segmentation.rewards import RewardInputs, compute_rewards
from segmentation.sam2_models import autocast_context, sam2_from_model_config
from segmentation.seg_head import SegProjector, build_projector
from segmentation.types import PoolStatus, ScoreRequest, ScoreResult, TurnScore

# Modules the learner trains and pushes to the pool, by state-dict prefix.
WEIGHT_PREFIXES = ("projector.", "sam_prompt_encoder.", "sam_mask_decoder.")
IOU_CHUNK = 64  # masks upsampled to full resolution at once (bounds memory on long batches)


class StaleWeightsError(ValueError):
    pass


def pool_weights(projector, prompt_encoder, mask_decoder) -> dict[str, torch.Tensor]:
    """The state dict `update_weights` takes, from the learner's three trainable modules."""
    out = {}
    for prefix, module in zip(WEIGHT_PREFIXES, (projector, prompt_encoder, mask_decoder)):
        out.update({prefix + k: v.detach().cpu() for k, v in module.state_dict().items()})
    return out


def resolve_keyframe(episode: EpisodeState, turn: int) -> int:
    """The keyframe turn `turn`'s mask is judged on (docs/CONTRACTS.md)."""
    n = episode.sample.num_frames
    k = episode.turns[turn].keyframe_seen
    if k < 0:  # not recorded: derive it by the contract's rule
        if turn == 0:
            k = n // 2
        else:
            prev = episode.turns[turn - 1]
            if prev.clamped is not None:
                k = prev.clamped[2]
            elif prev.action is not None:
                k = min(max(prev.action.keyframe, 0), n - 1)
            else:
                raise ValueError(f"{episode.episode_id}: turn {turn} has no keyframe and turn {turn - 1} "
                                 "selected none")
    if not 0 <= k < n:
        raise ValueError(f"{episode.episode_id}: keyframe {k} of turn {turn} is outside {n} frames")
    return int(k)


def final_keyframe(episode: EpisodeState) -> int:
    """Where the final mask is placed: the last selected keyframe, else the answer's own."""
    n = episode.sample.num_frames
    parsed = [t for t in episode.turns if t.action is not None and t.error is None]
    selects = [t for t in parsed if t.action.kind == "select"]
    pick = selects[-1] if selects else (parsed[-1] if parsed else None)
    if pick is None:
        return n // 2  # nothing parsed: the middle frame, as turn 0 sees it
    k = pick.clamped[2] if pick.clamped is not None else pick.action.keyframe
    return min(max(int(k), 0), n - 1)


@dataclass
class _Plan:
    request: ScoreRequest
    sample: Sample
    sampled: list[int]
    keyframes: list[int]
    presence: tuple[bool, ...]


class RewardPoolCore:
    def __init__(self, model_cfg: ModelConfig, reward_cfg: RewardConfig, hidden_size: int,
                 frame_source: FrameSource | None = None, gt_source: GtSource | None = None,
                 presence_source: PresenceSource | None = None, datasets: Sequence | None = None,
                 device: str = "cpu", sam2_model=None, projector: SegProjector | None = None,
                 decode_batch: int = 256, data_cache_dir=None):
        self.model_cfg, self.reward_cfg = model_cfg, reward_cfg
        self.device = str(device)
        self.model = sam2_model if sam2_model is not None else sam2_from_model_config(model_cfg, self.device)
        self.model.to(self.device).eval()
        if model_cfg.seg_embed_dim != self.model.hidden_dim:
            raise ValueError(f"model.seg_embed_dim={model_cfg.seg_embed_dim} but this SAM2 takes "
                             f"{self.model.hidden_dim}-d prompt tokens")
        self.projector = projector if projector is not None else build_projector(
            hidden_size, model_cfg.seg_embed_dim, model_cfg.projector_checkpoint)
        self.projector.to(self.device).eval()
        self.hidden_size = hidden_size
        self.bf16 = model_cfg.dtype == "bf16" and self.device.startswith("cuda")
        self.autocast = autocast_context(self.device, self.bf16)
        if datasets is not None and (frame_source is None or gt_source is None):
            env_src = EnvDataSources(datasets, cache_dir=data_cache_dir)
            frame_source = frame_source or env_src.frames
            gt_source = gt_source or env_src.gt
            presence_source = presence_source or env_src.presence
        if frame_source is None or gt_source is None:
            raise ValueError("the reward pool needs frame_source and gt_source callables, or dataset specs "
                             "to read them through env.datasets")
        self.frame_source, self.gt_source, self.presence_source = frame_source, gt_source, presence_source
        self.image_size = int(self.model.image_size)
        self.cache = FeatureCache(self.model, self.image_size, reward_cfg.feature_cache_frames,
                                  reward_cfg.batch_frames, frame_source, self.autocast)
        self.decode_batch = max(1, int(decode_batch))
        self.version = 0

    # ----------------------------------------------------------------------------- scoring
    def score(self, batch: Sequence[ScoreRequest], return_features: bool = True,
              required_version: int | None = None) -> list[ScoreResult]:
        """Score a batch. A trajectory whose data cannot be read gets a result with `error` set
        instead of failing the batch. With `required_version`, refuse to score on older weights
        (a restarted actor starts from its initial weights until the learner pushes them again)."""
        if required_version is not None and self.version < required_version:
            raise StaleWeightsError(f"reward weights are version {self.version}, the step needs {required_version}")
        try:
            return self._score(batch, return_features)
        except DataError:
            if len(batch) == 1:
                raise
        # Isolate the bad trajectories: score one by one (a rare path; idempotent, so no harm).
        results = []
        for req in batch:
            try:
                results.extend(self._score([req], return_features))
            except DataError as exc:
                results.append(ScoreResult(req.trajectory_id, {}, 0.0, [], list(req.episode.initial_high), [],
                                           weights_version=self.version, policy_version=req.policy_version,
                                           error=f"{type(exc).__name__}: {exc}"))
        return results

    def _score(self, batch: Sequence[ScoreRequest], return_features: bool) -> list[ScoreResult]:
        plans = [self._plan(r) for r in batch]
        embeds = self._project(plans)
        jobs = self._jobs(plans, embeds)
        # Frames to encode: those decoded on, plus (for the learner) every frame of every episode.
        needed = [(plans[i].sample.dataset, plans[i].sample.video_id, f) for i, _, f in jobs]
        if return_features:
            for p in plans:
                needed += [(p.sample.dataset, p.sample.video_id, f) for f in p.sampled + p.keyframes]
        feats = self.cache.get_many(needed)
        logits = self._decode(plans, jobs, embeds, feats)
        ious = self._ious(plans, jobs, logits)
        exported: dict[str, object] = {}
        results = []
        for i, p in enumerate(plans):
            results.append(self._result(i, p, embeds, logits, ious, feats, exported, return_features))
        return results

    def _plan(self, req: ScoreRequest) -> _Plan:
        ep = req.episode
        sample = ep.sample
        n = sample.num_frames
        bad = [f for f in ep.initial_high if not 0 <= f < n]
        if bad:
            raise ValueError(f"{req.trajectory_id}: sampled frames {bad} outside the {n} frames of "
                             f"{sample.sample_id}")
        presence = tuple(sample.presence) if sample.presence else None
        if presence is None:
            if self.presence_source is None:
                raise ValueError(f"{sample.sample_id} carries no presence and the pool has no "
                                 "presence source")
            presence = tuple(bool(v) for v in self.presence_source(sample))
        keyframes = [resolve_keyframe(ep, t) for t in range(len(ep.turns))]
        return _Plan(req, sample, [int(f) for f in ep.initial_high], keyframes, presence)

    def _project(self, plans: list[_Plan]) -> dict[tuple[int, int], torch.Tensor]:
        keys, rows = [], []
        for i, p in enumerate(plans):
            for t, h in enumerate(p.request.seg_hidden):
                if h is None:
                    continue
                h = np.asarray(h, dtype=np.float32).reshape(-1)
                if h.shape[0] != self.hidden_size:
                    raise ValueError(f"{p.request.trajectory_id} turn {t}: [SEG] state has width "
                                     f"{h.shape[0]}, the pool's projector expects {self.hidden_size}")
                keys.append((i, t))
                rows.append(h)
        if not rows:
            return {}
        with torch.no_grad():
            out = self.projector(torch.from_numpy(np.stack(rows)).to(self.device)).float()
        return {k: out[j] for j, k in enumerate(keys)}

    def _jobs(self, plans, embeds) -> list[tuple[int, int, int]]:
        """(plan, turn, frame) pairs to decode, in a fixed order (so retries batch identically)."""
        jobs = []
        for i, p in enumerate(plans):
            for t, kf in enumerate(p.keyframes):
                if (i, t) not in embeds:
                    continue
                frames = list(dict.fromkeys(p.sampled + [kf]))
                jobs += [(i, t, f) for f in frames]
        return jobs

    def _key(self, plan: _Plan, frame: int) -> str:
        return frame_key(plan.sample.dataset, plan.sample.video_id, frame, self.image_size)

    def _decode(self, plans, jobs, embeds, feats) -> dict[tuple[int, int, int], torch.Tensor]:
        out = {}
        with torch.no_grad(), self.autocast():
            for start in range(0, len(jobs), self.decode_batch):
                chunk = jobs[start:start + self.decode_batch]
                keys = [self._key(plans[i], f) for i, _, f in chunk]
                distinct = list(dict.fromkeys(keys))  # a group's rollouts share most frames
                row = {k: r for r, k in enumerate(distinct)}
                index = torch.tensor([row[k] for k in keys], device=self.device)
                per_frame = stack_decode_features(self.model, [feats[k] for k in distinct])
                dec_feats = dict(per_frame, **{IMAGE_EMBED: per_frame[IMAGE_EMBED][index]})
                dec = language_decode(self.model.sam_prompt_encoder, self.model.sam_mask_decoder, dec_feats,
                                      torch.stack([embeds[(i, t)] for i, t, _ in chunk]),
                                      high_res_index=index if HIGH_RES_S0 in per_frame else None)
                for job, lo in zip(chunk, dec.low_res_logits.float()):
                    out[job] = lo
        return out

    def _ious(self, plans, jobs, logits) -> dict[tuple[int, int, int], tuple[float, bool, bool]]:
        """Per job: (IoU at original resolution, prediction empty, ground truth empty)."""
        by_sample: dict[str, list] = defaultdict(list)
        for job in jobs:
            by_sample[plans[job[0]].sample.sample_id].append(job)
        out = {}
        for jobs_s in by_sample.values():
            sample = plans[jobs_s[0][0]].sample
            frames = sorted({f for _, _, f in jobs_s})
            gt = np.require(self._gt(sample, frames), requirements=["C", "W"])  # torch wants writable
            gt = torch.from_numpy(gt).to(self.device)
            row = {f: r for r, f in enumerate(frames)}
            h, w = gt.shape[-2:]
            for start in range(0, len(jobs_s), IOU_CHUNK):
                chunk = jobs_s[start:start + IOU_CHUNK]
                lo = torch.stack([logits[j] for j in chunk])
                pred = F.interpolate(lo, size=(h, w), mode="bilinear", align_corners=False)[:, 0] > 0
                g = gt[[row[f] for _, _, f in chunk]]
                inter = (pred & g).sum(dim=(1, 2))
                union = (pred | g).sum(dim=(1, 2))
                pred_empty = pred.flatten(1).any(dim=1).logical_not()
                gt_empty = g.flatten(1).any(dim=1).logical_not()
                # One device-to-host copy per chunk, not one per job.
                stats = torch.stack([inter, union, pred_empty.long(), gt_empty.long()]).cpu().tolist()
                for k, job in enumerate(chunk):
                    u = stats[1][k]
                    out[job] = (1.0 if u == 0 else stats[0][k] / u, bool(stats[2][k]), bool(stats[3][k]))
        return out

    def _gt(self, sample: Sample, frames: list[int]) -> np.ndarray:
        gt = np.asarray(self.gt_source(sample, list(frames)), dtype=bool)
        if gt.ndim != 3 or gt.shape[0] != len(frames):
            raise ValueError(f"gt_source returned shape {gt.shape} for {len(frames)} frames of "
                             f"{sample.sample_id}")
        return gt

    def _result(self, i, plan: _Plan, embeds, logits, ious, feats, exported, return_features) -> ScoreResult:
        low = self.image_size // 4
        turns = []
        gt_empty_cache: dict[int, bool] = {}
        for t, kf in enumerate(plan.keyframes):
            has_seg = (i, t) in embeds
            if has_seg:
                iou_vid = [ious[(i, t, f)][0] for f in plan.sampled]
                iou_kf, pred_empty, gt_empty = ious[(i, t, kf)]
                kf_mask = (logits[(i, t, kf)][0] > 0).cpu().numpy()
            else:  # no [SEG]: empty masks everywhere, scored against the truth
                empties = self._gt_empty(plan, plan.sampled + [kf], gt_empty_cache)
                iou_vid = [1.0 if empties[f] else 0.0 for f in plan.sampled]
                iou_kf, pred_empty, gt_empty = (1.0 if empties[kf] else 0.0), True, empties[kf]
                kf_mask = np.zeros((low, low), dtype=bool)
            turns.append(TurnScore(kf, has_seg, float(iou_kf), bool(pred_empty and gt_empty), iou_vid,
                                   kf_mask, self._key(plan, kf)))
        inputs = RewardInputs(plan.request.episode.turns, plan.sample.num_frames, plan.presence,
                              [ts.iou_vid for ts in turns], [ts.iou_kf for ts in turns],
                              [ts.kf_both_empty for ts in turns])
        terms, total = compute_rewards(inputs, self.reward_cfg)
        sampled_keys = [self._key(plan, f) for f in plan.sampled]
        features = {}
        if return_features:
            for key in dict.fromkeys(sampled_keys + [ts.keyframe_feature for ts in turns]):
                if key not in exported:
                    exported[key] = self.export_features(feats[key])
                features[key] = exported[key]
        return ScoreResult(plan.request.trajectory_id, terms, total, turns, plan.sampled, sampled_keys,
                           features, self.version, plan.request.policy_version)

    def _gt_empty(self, plan: _Plan, frames: list[int], cache: dict[int, bool]) -> dict[int, bool]:
        todo = sorted({f for f in frames if f not in cache})
        if todo:
            gt = self._gt(plan.sample, todo)
            cache.update({f: not bool(gt[r].any()) for r, f in enumerate(todo)})
        return cache

    def export_features(self, feat: FrameFeatures) -> dict[str, torch.Tensor]:
        """A frame's decode-ready features on the CPU, batch dim 1 (what the learner decodes from)."""
        with torch.no_grad(), self.autocast():
            out = {IMAGE_EMBED: memory_free_embedding(self.model, feat.top[None]).detach().cpu()}
        if feat.s0 is not None:
            out[HIGH_RES_S0] = feat.s0[None].detach().cpu()
            out[HIGH_RES_S1] = feat.s1[None].detach().cpu()
        return out

    # ----------------------------------------------------------------- final predictions
    def predict(self, batch: Sequence[ScoreRequest]) -> list[np.ndarray]:
        """Masks for every frame of each episode's video: the last [SEG] placed on the final
        keyframe and propagated both ways. A request without any [SEG] gets empty masks."""
        tracks, owners, results = [], [], []
        hidden = []
        for r in batch:
            s = r.episode.sample
            results.append(np.zeros((s.num_frames, s.height, s.width), dtype=bool))
            last = [h for h in r.seg_hidden if h is not None]
            if last:
                hidden.append(np.asarray(last[-1], dtype=np.float32).reshape(-1))
                owners.append(len(results) - 1)
        if hidden:
            with torch.no_grad():
                embeds = self.projector(torch.from_numpy(np.stack(hidden)).to(self.device)).float()
            for row, idx in enumerate(owners):
                ep = batch[idx].episode
                s = ep.sample
                tracks.append(Track(s.dataset, s.video_id, s.num_frames, final_keyframe(ep), embeds[row],
                                    s.height, s.width))
            masks = propagate_tracks(self.model, self.cache.get_many, tracks, self.autocast,
                                     lookahead_frames=self.reward_cfg.batch_frames)
            for idx, m in zip(owners, masks):
                results[idx] = m
        return results

    # ---------------------------------------------------------------------- weights, status
    def update_weights(self, version: int, state_dict: dict) -> int:
        """Load projector / prompt-encoder / mask-decoder weights pushed by the learner.

        All keys are checked before anything is copied, so a bad update changes nothing. The same
        version may be applied again (a retried sync); an older one is refused.
        """
        if int(version) < self.version:
            raise StaleWeightsError(f"weights version {version} is older than the loaded {self.version}")
        modules = dict(zip(WEIGHT_PREFIXES, (self.projector, self.model.sam_prompt_encoder,
                                             self.model.sam_mask_decoder)))
        own = {prefix: m.state_dict() for prefix, m in modules.items()}
        staged = []
        for key, value in state_dict.items():
            prefix = next((p for p in WEIGHT_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                raise ValueError(f"weight '{key}' is not a projector/prompt-encoder/mask-decoder weight "
                                 f"(expected prefixes {WEIGHT_PREFIXES})")
            name = key[len(prefix):]
            if name not in own[prefix]:
                raise ValueError(f"unknown weight '{key}'")
            src = torch.as_tensor(value)
            dst = own[prefix][name]
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(f"weight '{key}' has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
            staged.append((dst, src))
        with torch.no_grad():
            for dst, src in staged:
                dst.copy_(src.to(device=dst.device, dtype=dst.dtype))
        self.version = int(version)
        return self.version

    def status(self) -> PoolStatus:
        return PoolStatus(self.version, len(self.cache), self.cache.stats.as_dict(), self.device,
                          self.image_size)


# ------------------------------------------------------------------------------ Ray shell
class SegRewardPoolActor:
    """One reward actor: a RewardPoolCore built inside the actor process.

    The only thing it adds is transport: image features go out as Ray ObjectRefs (one per frame
    per batch, shared by every result that uses the frame) instead of being copied into results.
    """

    def __init__(self, model_cfg: ModelConfig, reward_cfg: RewardConfig, hidden_size: int,
                 datasets: Sequence | None = None, frame_source=None, gt_source=None, presence_source=None,
                 device: str = "cpu", torch_threads: int | None = None, data_cache_dir=None):
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.core = RewardPoolCore(model_cfg, reward_cfg, hidden_size, frame_source, gt_source,
                                   presence_source, datasets, device, data_cache_dir=data_cache_dir)

    def score(self, batch: list[ScoreRequest], return_features: bool = True,
              required_version: int | None = None) -> list[ScoreResult]:
        import ray

        results = self.core.score(batch, return_features, required_version)
        refs: dict[str, object] = {}
        for r in results:
            for key, value in r.features.items():
                if key not in refs:
                    refs[key] = ray.put(value)
            r.features = {key: refs[key] for key in r.features}
        return results

    def predict(self, batch: list[ScoreRequest]) -> list[np.ndarray]:
        return self.core.predict(batch)

    def update_weights(self, version: int, state_dict: dict) -> int:
        return self.core.update_weights(version, state_dict)

    def version(self) -> int:
        return self.core.version

    def pid(self) -> int:
        import os

        return os.getpid()

    def status(self) -> PoolStatus:
        return self.core.status()


def route(request: ScoreRequest, num_actors: int) -> int:
    """Actor for a request: a stable hash of its video, so a video's frames stay in one cache."""
    s = request.episode.sample
    return zlib.crc32(f"{s.dataset}/{s.video_id}".encode()) % num_actors


class RewardPool:
    """M reward actors behind one interface: score, predict, update_weights, versions."""

    def __init__(self, actors: list):
        if not actors:
            raise ValueError("a reward pool needs at least one actor")
        self.actors = actors

    @classmethod
    def start(cls, model_cfg: ModelConfig, reward_cfg: RewardConfig, hidden_size: int,
              num_actors: int | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0,
              datasets: Sequence | None = None, frame_source=None, gt_source=None, presence_source=None,
              max_restarts: int = 0, data_cache_dir=None) -> "RewardPool":
        import ray

        n = num_actors or reward_cfg.num_actors
        device = "cuda" if num_gpus > 0 else "cpu"
        remote = ray.remote(SegRewardPoolActor).options(num_cpus=num_cpus, num_gpus=num_gpus,
                                                        max_restarts=max_restarts)
        threads = max(1, int(num_cpus)) if device == "cpu" else None
        actors = [remote.remote(model_cfg, reward_cfg, hidden_size, datasets, frame_source, gt_source,
                                presence_source, device, threads, data_cache_dir) for _ in range(n)]
        return cls(actors)

    def _split(self, batch: Sequence[ScoreRequest]) -> dict[int, list[int]]:
        parts: dict[int, list[int]] = defaultdict(list)
        for i, req in enumerate(batch):
            parts[route(req, len(self.actors))].append(i)
        return parts

    def score(self, batch: Sequence[ScoreRequest], return_features: bool = True,
              timeout_s: float | None = None, required_version: int | None = None) -> list[ScoreResult]:
        return self._scatter("score", batch, timeout_s, return_features, required_version)

    def predict(self, batch: Sequence[ScoreRequest], timeout_s: float | None = None) -> list[np.ndarray]:
        return self._scatter("predict", batch, timeout_s)

    def _scatter(self, method: str, batch, timeout_s, *args) -> list:
        import ray

        parts = self._split(batch)
        futures = {a: getattr(self.actors[a], method).remote([batch[i] for i in idx], *args)
                   for a, idx in parts.items()}
        out: list = [None] * len(batch)
        for a, fut in futures.items():
            for i, res in zip(parts[a], ray.get(fut, timeout=timeout_s)):
                out[i] = res
        return out

    def update_weights(self, version: int, state_dict: dict, timeout_s: float | None = None) -> list[int]:
        import ray

        ref = ray.put(state_dict)  # one copy in the object store for all actors
        return ray.get([a.update_weights.remote(version, ref) for a in self.actors], timeout=timeout_s)

    def versions(self) -> list[int]:
        import ray

        return ray.get([a.version.remote() for a in self.actors])

    def status(self) -> list[PoolStatus]:
        import ray

        return ray.get([a.status.remote() for a in self.actors])

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
