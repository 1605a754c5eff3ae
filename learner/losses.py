"""GRPO with SEG-aware logit calibration, as small pure functions (METHOD.md section 4).

Shapes: B sequences of length T. `mask` is the loss mask (1 on sampled tokens). Per-token tensors
are aligned with the input ids: entry t concerns token ids[t] (its log-prob given ids[<t]), entry 0
is always 0 and masked. Everything is torch and differentiable where it should be.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from learner.device_transfer import send_to_device

AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "dr_grpo")


# ------------------------------------------------------------------------------- advantages
def prompt_align_sum(embeds: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Sum over [SEG] tokens of the per-channel mean squared error to their teacher prompts."""
    return ((embeds.float() - goal.to(embeds.device, torch.float32)) ** 2).mean(dim=-1).sum()


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-4,
                     unbiased_std: bool = True) -> torch.Tensor:
    """A_i = (r_i - mean(r_g)) / (std(r_g) + eps) within each group g (one scalar per trajectory)."""
    rewards = rewards.to(torch.float64)
    adv = torch.zeros_like(rewards)
    for g in torch.unique(group_ids):
        idx = group_ids == g
        r = rewards[idx]
        std = r.std(unbiased=unbiased_std) if r.numel() > 1 else torch.zeros((), dtype=r.dtype)
        adv[idx] = (r - r.mean()) / (std + eps)
    return adv.to(torch.float32)


def zero_variance_groups(rewards: torch.Tensor, group_ids: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """Per trajectory: True when every member of its group got the same reward (no signal)."""
    out = torch.zeros_like(rewards, dtype=torch.bool)
    for g in torch.unique(group_ids):
        idx = group_ids == g
        r = rewards[idx]
        out[idx] = bool((r.max() - r.min()).abs() <= tol)
    return out


# ------------------------------------------------------------------------------- log-probs
def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits, (B, T) ids -> (B, T): out[:, t] = log p(ids[t] | ids[<t]), out[:, 0] = 0.

    Computed in float32 chunk-free via log_softmax on the shifted logits."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return F.pad(picked, (1, 0))


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution, aligned like token_logprobs (entry 0 is 0)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    return F.pad(ent, (1, 0))


# ------------------------------------------------------------------------------ KL and PPO
def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi (Schulman's k1, k2, k3)."""
    log_ratio = ref_logp - logp  # log(ref / pi)
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.pow(2)
    if kind == "k3":
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator '{kind}' (k1, k2, k3)")


def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                  clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate, as a loss (to minimise). `advantages` broadcasts (B, 1).

    Returns (loss, clipped) where clipped marks tokens whose gradient the clip removed."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = clipped_ratio * advantages
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = (clipped < unclipped).detach()
    return loss, was_clipped


def truncated_is_weights(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """min(pi_old / mu, cap): corrects for the sampler (vLLM, maybe an older policy) differing from
    the learner's policy at the start of the update. Detached: a weight, not a path for gradients."""
    return torch.clamp(torch.exp(old_logp - behaviour_logp), max=cap).detach()


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, num_sequences: int,
              num_tokens: int, max_tokens: int) -> torch.Tensor:
    """Sum of this micro-batch's share of the batch loss.

    The normalisers are global (whole batch, all ranks), so summing the micro-batch results gives
    exactly the batch loss of `mode`:
      seq_mean_token_mean: mean over sequences of each sequence's token mean (the paper);
      token_mean:          mean over all sampled tokens of the batch;
      dr_grpo:             sum over tokens / (num_sequences * max_tokens), a constant normaliser.
    """
    mask = mask.to(per_token.dtype)
    if mode == "seq_mean_token_mean":
        counts = mask.sum(-1)
        per_seq = (per_token * mask).sum(-1) / counts.clamp(min=1.0)
        return per_seq.sum() / max(num_sequences, 1)
    if mode == "token_mean":
        return (per_token * mask).sum() / max(num_tokens, 1)
    if mode == "dr_grpo":
        return (per_token * mask).sum() / max(num_sequences * max_tokens, 1)
    raise ValueError(f"unknown aggregation '{mode}'; known: {AGGREGATIONS}")


# ------------------------------------------------------------------------ masks (calibration)
def by_target_shape(loss_fn, rows: list[int], targets: list, device, max_group: int = 64) -> torch.Tensor:
    """loss_fn(rows, targets) -> (n, ...) applied to groups of same-shape targets; results in the
    order of `rows`.

    The per-[SEG] mask losses run once per group instead of once per mask (hundreds of small
    kernels and host-to-device copies per micro-batch otherwise). `targets` are arrays or tensors
    of (H, W), possibly of different sizes (videos differ); each group is stacked on the host and
    copied once. `rows` (ints) pass through to `loss_fn` as a LongTensor on `device`. Groups hold
    at most `max_group` masks, which bounds the full-resolution float copies the losses make."""
    if len(rows) != len(targets):
        raise ValueError(f"{len(rows)} rows but {len(targets)} targets")
    if not rows:
        raise ValueError("by_target_shape needs at least one target")
    groups: dict[tuple, list[int]] = {}
    for pos, target in enumerate(targets):
        groups.setdefault(tuple(target.shape), []).append(pos)
    parts, order = [], []
    for positions in groups.values():
        for start in range(0, len(positions), max_group):
            chunk = positions[start:start + max_group]
            stacked = send_to_device(torch.stack([torch.as_tensor(targets[p]) for p in chunk]), device)
            index = send_to_device(torch.tensor([rows[p] for p in chunk]), device)
            parts.append(loss_fn(index, stacked))
            order += chunk
    values = torch.cat(parts)
    if order == sorted(order):
        return values
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return values[send_to_device(inverse, values.device)]


def _resize_logits(logits: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(logits[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def resize_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, H, W) masks as (N, h, w) soft targets in [0, 1]: area averaging keeps the fraction of
    foreground in each cell (the identity when the sizes already match)."""
    return F.adaptive_avg_pool2d(mask[:, None].float(), (h, w))[:, 0]


def mask_log_likelihood(mask_logits: torch.Tensor, sampled_mask: torch.Tensor, size: int = 32) -> torch.Tensor:
    """SEG-aware calibration term per [SEG]: mean over pixels of m log s(z) + (1 - m) log(1 - s(z)).

    `mask_logits` (N, h, w) from the current (differentiable) [SEG] embedding on the keyframe,
    `sampled_mask` (N, H, W) the rollout-time binary keyframe mask (the 'sampled action'). Both
    are resized to size x size. Returns (N,), each <= 0."""
    z = _resize_logits(mask_logits, size)
    m = resize_mask(sampled_mask, size, size)
    ll = m * F.logsigmoid(z) + (1.0 - m) * F.logsigmoid(-z)
    return ll.flatten(1).mean(-1)


def bce_dice_loss(mask_logits: torch.Tensor, gt: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """BCE + Dice of (N, h, w) logits against (N, H, W) ground truth (resized to h x w). Returns (N,)."""
    target = resize_mask(gt, *mask_logits.shape[-2:])
    z = mask_logits.float()
    bce = F.binary_cross_entropy_with_logits(z, target, reduction="none").flatten(1).mean(-1)
    p = torch.sigmoid(z).flatten(1)
    t = target.flatten(1)
    dice = 1.0 - (2.0 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)
    return bce + dice


def decoder_score_loss(all_logits: torch.Tensor, all_ious: torch.Tensor, object_scores: torch.Tensor,
                       gt: torch.Tensor) -> torch.Tensor:
    """SAM2's own decoder-head losses for supervised masks. Returns (N,).

    The object-score head gates masks at inference (a negative score blanks the frame) and the IoU
    head picks one of the multimask candidates; the mask loss alone never trains either, so a
    fine-tuned decoder would gate and pick with whatever they held before. As in SAM2's training:
    BCE of the object score against "the target is on this frame", plus the MSE of each candidate's
    predicted IoU against its actual IoU (binarised at 0, both empty = 1, no gradient into masks).

    `all_logits` (N, M, h, w), `all_ious` (N, M), `object_scores` (N, 1) or (N,), `gt` (N, H, W)."""
    n, _, h, w = all_logits.shape
    target = resize_mask(gt, h, w)
    present = (gt.flatten(1) > 0).any(-1).float()
    obj = F.binary_cross_entropy_with_logits(object_scores.reshape(n).float(), present, reduction="none")
    with torch.no_grad():
        pred = (all_logits.float() > 0).flatten(2)
        t = (target > 0.5).flatten(1)[:, None, :]
        inter = (pred & t).sum(-1).float()
        union = (pred | t).sum(-1).float()
        actual = torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))
    iou = ((all_ious.float() - actual) ** 2).mean(-1)
    return obj + iou


# ------------------------------------------------------------------------------ full loss
@dataclass
class LossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.04
    kl_estimator: str = "k3"
    aggregation: str = "seq_mean_token_mean"
    use_tis: bool = True
    tis_cap: float = 2.0
    aux_weight: float = 0.2


@dataclass
class LossInputs:
    logp: torch.Tensor  # (B, T) current policy, differentiable
    old_logp: torch.Tensor  # (B, T) learner policy at the start of the update (detached)
    behaviour_logp: torch.Tensor  # (B, T) what the sampler reported
    ref_logp: torch.Tensor | None  # (B, T) reference policy; None disables the KL term
    advantages: torch.Tensor  # (B,)
    mask: torch.Tensor  # (B, T) loss mask
    calib: torch.Tensor | None = None  # (B, T) calibration term at [SEG] positions (differentiable)
    old_calib: torch.Tensor | None = None  # (B, T) same at the start of the update (detached)
    aux: torch.Tensor | None = None  # (K,) BCE+Dice of decoded masks (this micro-batch's masks)


def grpo_loss(x: LossInputs, cfg: LossConfig, num_sequences: int, num_tokens: int, max_tokens: int,
              num_aux: int) -> tuple[torch.Tensor, dict]:
    """This micro-batch's share of the batch loss and detached statistics (sums, for reduction)."""
    mask = x.mask.to(x.logp.dtype)
    logp_pg, old_pg = x.logp, x.old_logp
    if x.calib is not None:
        # The calibrated log-prob enters the policy-gradient term only; the KL uses the plain one.
        logp_pg = logp_pg + x.calib
        old_pg = old_pg + (x.old_calib if x.old_calib is not None else x.calib.detach())
    pg, clipped = ppo_clip_loss(logp_pg, old_pg, x.advantages[:, None].to(logp_pg.dtype),
                                cfg.clip_low, cfg.clip_high)
    if cfg.use_tis:
        pg = pg * truncated_is_weights(x.old_logp, x.behaviour_logp, cfg.tis_cap)
    per_token = pg
    kl = None
    if x.ref_logp is not None and cfg.kl_coef > 0:
        kl = kl_estimate(x.logp, x.ref_logp, cfg.kl_estimator)
        per_token = per_token + cfg.kl_coef * kl
    loss = aggregate(per_token, mask, cfg.aggregation, num_sequences, num_tokens, max_tokens)
    aux_sum = torch.zeros((), device=loss.device)
    if x.aux is not None and x.aux.numel() and cfg.aux_weight > 0:
        aux_sum = x.aux.sum()
        loss = loss + cfg.aux_weight * aux_sum / max(num_aux, 1)
    with torch.no_grad():
        stats = {
            "pg_loss_sum": float((pg * mask).sum()),
            "kl_sum": float((kl * mask).sum()) if kl is not None else 0.0,
            "clip_frac_sum": float((clipped.to(mask.dtype) * mask).sum()),
            "tokens": float(mask.sum()),
            "aux_sum": float(aux_sum),
            "calib_sum": float(x.calib.sum()) if x.calib is not None else 0.0,
        }
    return loss, stats
