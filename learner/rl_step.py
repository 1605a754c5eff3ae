"""The pieces of one RL step between the actor calls: requests, advantages, totals, metrics."""

from __future__ import annotations

import logging

import numpy as np
import torch

from configs import Config
from learner.core import BatchTotals, ScoreOutput, TrainItem
from learner.losses import group_advantages, zero_variance_groups
from rollout.trajectory import Trajectory
from segmentation.types import ScoreRequest, ScoreResult

log = logging.getLogger(__name__)


def _quarantine_groups(trajs: list, bad: dict[str, str], ledger) -> list[int]:
    """Quarantine samples with unusable data; indices of trajectories to keep (whole groups go)."""
    for sid, reason in sorted(bad.items()):
        log.warning("quarantined %s: %s", sid, reason)
        ledger.quarantine(sid, reason)
    return [i for i, t in enumerate(trajs) if t.sample.sample_id not in bad]


def drop_failed_episodes(trajs: list[Trajectory], ledger) -> list[Trajectory]:
    """Episodes the env could not play (corrupt video, missing frames, bad annotation)."""
    bad = {t.sample.sample_id: t.error for t in trajs if t.error}
    return [trajs[i] for i in _quarantine_groups(trajs, bad, ledger)]


def drop_unscorable(trajs, outs, results, ledger, cfg: Config):
    """Trajectories the reward pool could not score (their ground truth is unreadable)."""
    bad = {t.sample.sample_id: r.error for t, r in zip(trajs, results) if r.error}
    keep = _quarantine_groups(trajs, bad, ledger)
    return [trajs[i] for i in keep], [outs[i] for i in keep], [results[i] for i in keep]


def check_quarantine(ledger, total_samples: int, cfg: Config) -> None:
    n = len(ledger.quarantined())
    if total_samples and n / total_samples > cfg.data.max_quarantine_fraction:
        raise RuntimeError(f"{n} of {total_samples} samples are quarantined (more than "
                           f"data.max_quarantine_fraction={cfg.data.max_quarantine_fraction}); the data needs "
                           "fixing - the reasons are in the ledger (quarantine table)")


def score_requests(trajs: list[Trajectory], outs: list[ScoreOutput]) -> list[ScoreRequest]:
    return [ScoreRequest(t.traj_id, t.episode_state(), o.seg_hidden, policy_version=_version(t))
            for t, o in zip(trajs, outs)]


def _version(t: Trajectory) -> int:
    return t.turns[0].policy_version if t.turns else -1


def advantages(trajs: list[Trajectory], results: list[ScoreResult], cfg: Config) -> tuple[list[float], list[bool]]:
    """Group-normalised advantages and, per trajectory, whether it stays in the batch."""
    rewards = torch.tensor([r.total for r in results], dtype=torch.float64)
    groups = {}
    gid = torch.tensor([groups.setdefault(t.sample.sample_id, len(groups)) for t in trajs])
    adv = group_advantages(rewards, gid, cfg.learner.advantage_eps)
    keep = [True] * len(trajs)
    if cfg.learner.drop_zero_variance_groups:
        keep = [not z for z in zero_variance_groups(rewards, gid).tolist()]
    return adv.tolist(), keep


def train_items(trajs, outs, results, adv, keep, cfg: Config) -> tuple[list[TrainItem], BatchTotals]:
    items = [TrainItem(t, a, o.old_logp, o.ref_logp, r)
             for t, o, r, a, k in zip(trajs, outs, results, adv, keep) if k and t.num_generated > 0]
    per_traj_aux = 0
    if cfg.learner.aux_mask_weight > 0:
        per_traj_aux = 1
    num_aux = sum((len(it.score.sampled_frames) + 1) * sum(1 for ts in it.score.turns if ts.has_seg)
                  for it in items) * per_traj_aux
    totals = BatchTotals(num_sequences=len(items), num_tokens=sum(it.traj.num_generated for it in items),
                         max_tokens=cfg.rollout.sampling.max_new_tokens * cfg.env.max_turns, num_aux=num_aux)
    return items, totals


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else 0.0


def sampler_gap(trajs: list[Trajectory], outs) -> tuple[float, float]:
    """Mean and max |learner log-prob - sampler log-prob| over generated tokens.

    Near zero when the engines hold the learner's weights (synchronous mode); it grows if a weight
    sync was missed, or by design with asynchronous (stale) rollouts."""
    diffs = []
    for t, o in zip(trajs, outs):
        behaviour = [lp for lp, m in zip(t.logprobs, t.loss_mask) if m]
        diffs += [abs(a - b) for a, b in zip(o.old_logp, behaviour)]
    return (float(np.mean(diffs)), float(np.max(diffs))) if diffs else (0.0, 0.0)


def step_metrics(step: int, version: int, trajs: list[Trajectory], results: list[ScoreResult],
                 train: dict, totals: BatchTotals, timings: dict, ledger_counts: dict, outs=None) -> dict:
    rec: dict = {"step": step, "policy_version": version, "episodes": len(trajs),
                 "reward/mean": _mean(r.total for r in results),
                 "reward/std": float(np.std([r.total for r in results])) if results else 0.0}
    for term in (results[0].terms if results else {}):
        rec[f"reward/{term}"] = _mean(r.terms[term] for r in results)
    rec["iou/keyframe_last"] = _mean(r.turns[-1].iou_kf for r in results if r.turns)
    rec["iou/video_last"] = _mean(float(np.mean(r.turns[-1].iou_vid)) for r in results if r.turns and r.turns[-1].iou_vid)
    rec["episode/turns"] = _mean(t.num_turns for t in trajs)
    rec["episode/generated_tokens"] = _mean(t.num_generated for t in trajs)
    rec["episode/format_ok"] = _mean(float(all(x.record.error is None for x in t.turns) and bool(t.turns)) for t in trajs)
    for reason in sorted({str(t.end_reason) for t in trajs}):
        rec[f"end/{reason}"] = sum(str(t.end_reason) == reason for t in trajs) / max(len(trajs), 1)
    tokens = max(train.get("tokens", 0.0), 1.0)
    rec["train/loss"] = train.get("loss_sum", 0.0)
    rec["train/pg_loss"] = train.get("pg_loss_sum", 0.0) / tokens
    rec["train/kl"] = train.get("kl_sum", 0.0) / tokens
    rec["train/entropy"] = train.get("entropy_sum", 0.0) / tokens
    rec["train/clip_frac"] = train.get("clip_frac_sum", 0.0) / tokens
    rec["train/aux_mask_loss"] = train.get("aux_sum", 0.0) / max(totals.num_aux, 1)
    rec["train/calibration"] = train.get("calib_sum", 0.0)
    if "prompt_anchor" in train:  # per-rank means, summed by the driver
        rec["train/prompt_anchor"] = train["prompt_anchor"] / max(train.get("ranks", 1.0), 1.0)
    rec["train/grad_norm"] = train.get("grad_norm", 0.0)
    rec["train/lr"] = train.get("lr", 0.0)
    rec["train/sequences"] = totals.num_sequences
    if outs is not None:
        rec["sync/logp_gap_mean"], rec["sync/logp_gap_max"] = sampler_gap(trajs, outs)
    rec["time"] = {k: round(v, 3) for k, v in timings.items()}
    rec["ledger"] = ledger_counts
    return rec
