"""Point-prompt pre-training of a SAM2 decoder: a stand-in for the public SAM2 checkpoint.

The method starts from a pretrained, promptable SAM2 and teaches the [SEG] projector to speak its
prompt language. Nothing can be downloaded here, so the debug-size SAM2 starts random, and a random
mask decoder ignores its prompt: fine-tuning then settles on one mask per frame whatever [SEG]
says. This module gives the tiny SAM2 SAM's own skill on our data, promptable segmentation from a
click: for frames of the training videos, one positive point drawn inside an object gives a
token that fills the [SEG] slot of the language decode (segmentation.language_decode, the exact
layout the policy's prompt uses), and the decoder learns that object's mask (best of the
multimask candidates, as SAM trains) plus its IoU and object-score heads.

The image encoder stays frozen (the features are the reward pool's). Only the prompt encoder and
mask decoder change; the output is a full SAM2 checkpoint for `model.sam2_checkpoint`, with a JSON
report of point-prompt IoU on held-out frames before and after.

Usage:
    python -m segmentation.pretrain_promptable --out runs/sam2_points/sam2_tiny_points.pt \\
        [--steps 600] [--batch 16] [--lr 1e-3] [--seed 0] [--preset debug_cpu] [overrides ...]
The frames come from the config's data.train (synthetic by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("segmentation.pretrain_promptable")


def object_frames(env, max_items: int | None = None) -> list[tuple]:
    """(sample, frame index, (H, W) bool mask) for every frame where a single-object target is visible."""
    items = []
    for sid in env.sample_ids():
        sample = env.sample(sid)
        if len(sample.obj_ids) != 1:
            continue  # a click picks one object
        frames = [f for f, seen in enumerate(env.presence(sample)) if seen]
        if not frames:
            continue
        for frame, mask in zip(frames, env.gt_masks(sample, frames)):
            if mask.any():
                items.append((sample, frame, mask))
    if not items:
        raise ValueError("no visible single-object targets in the training data: nothing to click on")
    return items[:max_items] if max_items else items


def sample_clicks(masks: list[np.ndarray], image_size: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 2) x, y in SAM2's input pixel space: one uniformly drawn pixel of each mask."""
    out = np.zeros((len(masks), 2), dtype=np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        j = rng.integers(len(xs))
        h, w = m.shape
        out[i] = (xs[j] * image_size / w, ys[j] * image_size / h)  # the encoder adds the half pixel
    return out


def click_tokens(prompt_encoder, clicks):
    """(N, 1, C) prompt tokens of positive clicks, without the encoder's padding point."""
    import torch

    labels = torch.ones(clicks.shape[0], 1, dtype=torch.int32, device=clicks.device)
    return prompt_encoder._embed_points(clicks[:, None, :], labels, pad=False)


class ClickTrainer:
    """Trains `model`'s prompt encoder and mask decoder on clicks; features come from `features_of`
    (a callable: list of (sample, frame) -> decode-ready feature dict with batch dim N)."""

    def __init__(self, model, features_of, lr: float, seed: int):
        import torch

        self.model = model
        self.features_of = features_of
        self.params = [*model.sam_prompt_encoder.parameters(), *model.sam_mask_decoder.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.rng = np.random.default_rng(seed)
        self.image_size = int(model.image_size)

    def _decode(self, items, rng):
        import torch

        from segmentation.language_decode import language_decode

        feats = self.features_of([(s, f) for s, f, _ in items])
        clicks = torch.as_tensor(sample_clicks([m for _, _, m in items], self.image_size, rng))
        tokens = click_tokens(self.model.sam_prompt_encoder, clicks)
        return language_decode(self.model.sam_prompt_encoder, self.model.sam_mask_decoder, feats, tokens,
                               multimask=True, gate_by_object_score=False)

    def step(self, items) -> float:
        import torch

        from learner.losses import bce_dice_loss, decoder_score_loss

        out = self._decode(items, self.rng)
        gt = torch.as_tensor(np.stack([m for _, _, m in items]).astype(np.float32))
        n, k = out.all_logits.shape[:2]
        per_candidate = bce_dice_loss(out.all_logits.flatten(0, 1), gt.repeat_interleave(k, 0)).view(n, k)
        # SAM's rule for an ambiguous click: only the best candidate is pulled towards the mask.
        loss = per_candidate.min(dim=1).values + decoder_score_loss(out.all_logits, out.all_ious,
                                                                    out.object_score_logits, gt)
        loss = loss.mean()
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return float(loss.detach())

    def click_iou(self, items, seed: int = 12345) -> float:
        """Mean IoU of the decoder's chosen mask (its IoU head picks) for one click per item."""
        import torch
        import torch.nn.functional as F

        rng = np.random.default_rng(seed)
        ious = []
        with torch.no_grad():
            for start in range(0, len(items), 32):
                chunk = items[start:start + 32]
                out = self._decode(chunk, rng)
                pred = out.low_res_logits[:, 0] > 0
                gt = F.adaptive_avg_pool2d(torch.as_tensor(np.stack([m for _, _, m in chunk]),
                                                           dtype=torch.float32)[:, None], pred.shape[-2:])[:, 0] > 0.5
                inter = (pred & gt).flatten(1).sum(-1).float()
                union = (pred | gt).flatten(1).sum(-1).float()
                ious += torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).tolist()
        return float(np.mean(ious))


def pretrain(cfg, out_path: Path, steps: int, batch: int, lr: float, seed: int, held_out_fraction: float = 0.1) -> dict:
    """Train, write the checkpoint (atomically) and `<out>.json`; returns the report."""
    import torch

    from env.service import EnvService
    from learner.system import prepare_sam2, resolve_paths
    from segmentation.reward_pool import RewardPoolCore
    from segmentation.sam2_models import sam2_from_model_config

    started = time.time()
    cfg = prepare_sam2(resolve_paths(cfg))
    cache_dir = str(cfg.model.cache_dir)
    env = EnvService(cfg.env, cfg.data.train, cache_dir=cache_dir)
    items = object_frames(env)
    order = np.random.default_rng(seed).permutation(len(items))
    n_held = max(1, int(len(items) * held_out_fraction))
    held = [items[i] for i in order[:n_held]]
    train = [items[i] for i in order[n_held:]] or held
    # The reward pool's frozen encoder and feature cache; its hidden size is irrelevant here.
    pool = RewardPoolCore(cfg.model, cfg.reward, 1, datasets=cfg.data.train, data_cache_dir=cache_dir)

    def features_of(frames):
        refs = [(s.dataset, s.video_id, f) for s, f in frames]
        got = pool.cache.get_many(list(dict.fromkeys(refs)))
        from segmentation.features import frame_key

        rows = [pool.export_features(got[frame_key(*r, pool.image_size)]) for r in refs]
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}

    torch.manual_seed(seed)
    model = sam2_from_model_config(cfg.model, "cpu")
    model.train()
    trainer = ClickTrainer(model, features_of, lr, seed)
    before = trainer.click_iou(held)
    log.info("point-prompt pre-training on %d object frames (%d held out); held-out click IoU %.3f",
             len(train), len(held), before)
    losses = []
    rng = np.random.default_rng([seed, 1])
    for step in range(steps):
        pick = rng.choice(len(train), size=min(batch, len(train)), replace=False)
        losses.append(trainer.step([train[i] for i in pick]))
        if step % 50 == 0 or step + 1 == steps:
            log.info("step %d/%d loss %.4f", step + 1, steps, losses[-1])
    after = trainer.click_iou(held)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"model": model.state_dict()}, tmp)
    os.replace(tmp, out_path)
    report = {"checkpoint": str(out_path), "sam2_config": cfg.model.sam2_config, "image_size": model.image_size,
              "train_frames": len(train), "held_out_frames": len(held), "steps": steps, "batch": batch, "lr": lr,
              "seed": seed, "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:])),
              "held_out_click_iou_before": before, "held_out_click_iou_after": after,
              "seconds": time.time() - started}
    out_path.with_suffix(".json").write_text(json.dumps(report, indent=1))
    log.info("held-out click IoU %.3f -> %.3f; wrote %s", before, after, out_path)
    return report


def main(argv=None) -> int:
    from configs import ConfigError, available_presets, load_config

    ap = argparse.ArgumentParser(prog="python -m segmentation.pretrain_promptable", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="checkpoint path to write (a .json report goes next to it)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="debug_cpu", help=f"one of {available_presets()}")
    ap.add_argument("--config", default=None)
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.train=[...] model.sam2_config=tiny")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or not 0 < args.lr < 1:
        print("error: --steps and --batch must be at least 1 and --lr in (0, 1)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.preset, args.overrides, args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from env.errors import DataError

    try:
        report = pretrain(cfg, Path(args.out), args.steps, args.batch, args.lr, args.seed)
    except (FileNotFoundError, ValueError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("checkpoint", "held_out_click_iou_before", "held_out_click_iou_after")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
