"""Text-prompt pre-training of the tiny SAM2 decoder: the debug-size stand-in for a pretrained,
promptable SAM2 checkpoint.

The method's [SEG] is one extra sparse prompt of a pretrained SAM2 whose decoder already turns a
prompt into one object's mask. The debug-size SAM2 starts random, and a random decoder trained
jointly with a random tiny policy settles on one prompt-blind mask per frame
(benchmarks/results/seg_probe.md). This module gives it the missing skill on the training videos,
the way text-promptable SAM variants are trained: a bag-of-words expression encoder (a learned
vector per word, averaged) fills the [SEG] slot of the language decode (segmentation.language_decode,
the policy's own layout), and the prompt encoder and mask decoder learn the referred object's mask
plus the IoU and object-score heads. The image encoder stays frozen (the reward pool's features).
The checkpoint holds SAM2's weights only. The word vectors go to `<checkpoint>.words.pt`: they are
the prompt language the decoder learned, and `PromptTeacher` reads them so SFT can pull the
policy's projected [SEG] tokens towards the expression's prompt (sft.prompt_align_weight). The mask
loss alone does not teach a tiny random policy that language in a few hundred steps
(benchmarks/results/seg_probe.md); a pretrained VLM brings it from its own grounding pre-training.

The JSON report next to the checkpoint measures, on held-out videos, whether masks follow the
expression: cross-target IoU (the masks of two expressions whose targets differ, on one shared
frame; 1.0 means the prompt is ignored) and own IoU, before and after. The learning rate matters:
at 1e-3 the decoder collapses to a prompt-blind mask (cross-target 1.0); 1e-4 to 3e-4 learns to
follow the prompt (benchmarks/results/seg_probe.md).

`--candidate-loss best` pulls only the best of the three multimask candidates towards the target
(SAM's rule for ambiguous prompts); `all` pulls every candidate.

Usage:
    python -m segmentation.pretrain_text_prompt --out runs/sam2_text/sam2_tiny_text.pt \
        [--steps 600] [--batch 16] [--lr 3e-4] [--seed 0] [--preset debug_cpu] [overrides ...]
    then: model.sam2_checkpoint=runs/sam2_text/sam2_tiny_text.pt (with model.sam2_config=tiny)
    and, for SFT: sft.prompt_teacher=runs/sam2_text/sam2_tiny_text.words.pt sft.prompt_align_weight=1
Frames and expressions come from the config's data.train (synthetic by default).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

log = logging.getLogger("segmentation.pretrain_text_prompt")


def expression_words(text: str) -> list[str]:
    """Lower-case word tokens of an expression (punctuation dropped)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def words_path(checkpoint: str | Path) -> Path:
    """Where the word vectors of `checkpoint` are written: next to it, suffix .words.pt."""
    return Path(checkpoint).with_suffix(".words.pt")


def word_index(vocabulary: list[str]) -> dict[str, int]:
    """Word -> row of the word-vector table, in vocabulary order from row 1 (row 0: unknown words)."""
    return {w: i + 1 for i, w in enumerate(vocabulary)}


def bag_of_words(index: dict[str, int], vectors, text: str):
    """(C,) mean of the word vectors of `text`; words not in `index` use row 0."""
    import torch

    ids = [index.get(w, 0) for w in expression_words(text)] or [0]
    return vectors[torch.tensor(ids)].mean(0)


class PromptTeacher:
    """The expression -> prompt-vector map learned by text-prompt pre-training (read-only)."""

    def __init__(self, path: str | Path):
        import torch

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"prompt teacher {path} does not exist; python -m "
                                    f"segmentation.pretrain_text_prompt --out CKPT writes CKPT's .words.pt")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            vocabulary, vectors = list(state["vocabulary"]), state["vectors"].float()
        except Exception as exc:  # a truncated or foreign file
            raise ValueError(f"{path} is not a word-vector file of pretrain_text_prompt: {exc}") from exc
        if vectors.ndim != 2 or vectors.shape[0] != len(vocabulary) + 1:
            raise ValueError(f"{path}: {vectors.shape[0]} vectors for {len(vocabulary)} words (expected one more, "
                             f"for unknown words)")
        self.index = word_index(vocabulary)
        self.vectors = vectors
        self.width = vectors.shape[1]

    def __call__(self, expression: str):
        return bag_of_words(self.index, self.vectors, expression)

    def spread(self, expressions: list[str]) -> float:
        """Mean per-channel variance of the prompts of the distinct `expressions`: the squared error
        of always answering their mean prompt. Raises ValueError when fewer than two prompts differ."""
        import torch

        prompts = torch.stack([self(e) for e in sorted(set(expressions))])
        value = float(prompts.var(0, unbiased=False).mean()) if len(prompts) > 1 else 0.0
        if value <= 1e-12:
            raise ValueError("the prompt teacher gives every expression the same prompt (fewer than two "
                             "distinct expressions, or none of their words is in its vocabulary)")
        return value


def load_prompt_teacher(path: str | Path, projector_width: int, setting: str) -> PromptTeacher:
    """The teacher at `path`, refused unless its prompts have the [SEG] projector's width
    (`setting` names the config field in the message)."""
    teacher = PromptTeacher(path)
    if teacher.width != projector_width:
        raise ValueError(f"{setting} {path} has {teacher.width}-d prompts, the [SEG] projector writes "
                         f"{projector_width}-d ones (another SAM2 config?)")
    return teacher


def referred_frames(env, sample_ids: list[str], stride: int = 1) -> list[tuple]:
    """(sample, frame index, (H, W) bool mask) for every `stride`-th frame where the sample's target
    is visible."""
    items = []
    for sid in sample_ids:
        sample = env.sample(sid)
        frames = [f for f, seen in enumerate(env.presence(sample)) if seen][::stride]
        if frames:
            items += [(sample, f, m) for f, m in zip(frames, env.gt_masks(sample, frames)) if m.any()]
    return items


class TextPromptTrainer:
    """Trains `model`'s prompt encoder and mask decoder, plus a word-vector table, on expression
    prompts. `features_of` maps a list of (sample, frame) to a decode-ready feature dict with
    batch dim N."""

    def __init__(self, model, features_of, vocabulary: list[str], lr: float, seed: int, all_candidates: bool = False):
        import torch

        self.all_candidates = all_candidates
        self.model = model
        self.features_of = features_of
        self.index = word_index(sorted(set(vocabulary)))
        gen = torch.Generator().manual_seed(seed)
        width = model.sam_prompt_encoder.embed_dim
        self.words = torch.nn.Parameter(torch.randn(len(self.index) + 1, width, generator=gen))
        self.params = [*model.sam_prompt_encoder.parameters(), *model.sam_mask_decoder.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        self.params.append(self.words)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)

    def prompts(self, expressions: list[str]):
        """(N, C) prompt vectors: the mean word vector of each expression."""
        import torch

        return torch.stack([bag_of_words(self.index, self.words, text) for text in expressions])

    def save_words(self, path: Path) -> None:
        """The word table (vocabulary in index order, vectors with row 0 for unknown words)."""
        import torch

        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"vocabulary": list(self.index), "vectors": self.words.detach().clone()}, tmp)
        os.replace(tmp, path)

    def decode(self, frames: list[tuple], expressions: list[str]):
        from segmentation.language_decode import language_decode

        return language_decode(self.model.sam_prompt_encoder, self.model.sam_mask_decoder,
                               self.features_of(frames), self.prompts(expressions),
                               multimask=True, gate_by_object_score=False)

    def step(self, items) -> float:
        import torch

        from learner.losses import bce_dice_loss, decoder_score_loss

        out = self.decode([(s, f) for s, f, _ in items], [s.expression for s, _, _ in items])
        gt = torch.as_tensor(np.stack([m for _, _, m in items]).astype(np.float32))
        n, k = out.all_logits.shape[:2]
        per_candidate = bce_dice_loss(out.all_logits.flatten(0, 1), gt.repeat_interleave(k, 0)).view(n, k)
        pulled = per_candidate.mean(dim=1) if self.all_candidates else per_candidate.min(dim=1).values
        loss = pulled + decoder_score_loss(out.all_logits, out.all_ious, out.object_score_logits, gt)
        loss = loss.mean()
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return float(loss.detach())


def referring_scores(trainer: TextPromptTrainer, env, sample_ids: list[str]) -> dict:
    """Per video, every expression decoded on one shared frame (the first frame where the first
    expression's target is visible): mean IoU between masks of expressions whose targets differ
    there (ground-truth IoU < 0.5) and mean IoU of each mask with its own target."""
    import torch

    from learner.losses import resize_mask
    from segmentation.metrics import mask_iou

    by_video: dict[str, list] = {}
    for sid in sample_ids:
        sample = env.sample(sid)
        by_video.setdefault(sample.video_id, []).append(sample)
    cross, own = [], []
    with torch.no_grad():
        for group in by_video.values():
            seen = [f for f, v in enumerate(env.presence(group[0])) if v]
            if len(group) < 2 or not seen:
                continue
            frame = seen[0]
            out = trainer.decode([(s, frame) for s in group], [s.expression for s in group])
            pred = (out.low_res_logits[:, 0] > 0).numpy()
            gts = [resize_mask(torch.as_tensor(env.gt_masks(s, [frame])[0])[None], *pred.shape[-2:])[0].numpy() > 0.5
                   for s in group]
            own += [mask_iou(p, g) for p, g in zip(pred, gts)]
            cross += [mask_iou(pred[a], pred[b]) for a, b in itertools.combinations(range(len(group)), 2)
                      if mask_iou(gts[a], gts[b]) < 0.5]
    return {"cross_target_iou": float(np.mean(cross)) if cross else None,
            "own_iou": float(np.mean(own)) if own else None, "cross_target_pairs": len(cross)}


def pretrain(cfg, out_path: Path | None, steps: int, batch: int, lr: float, seed: int, all_candidates: bool = False,
             held_out_fraction: float = 0.15, frame_stride: int = 2, memo_frames: int = 1024) -> dict:
    """Train on cfg.data.train's non-held-out videos; with `out_path`, write the checkpoint
    (atomically) and `<out>.json`. Returns the report. Decode-ready features of the last
    `memo_frames` frames used stay in memory (the least recently used go first)."""
    if memo_frames < 1:  # checked before the datasets and the encoder are built
        raise ValueError(f"memo_frames must be >= 1, got {memo_frames}")
    import torch

    from env.datasets import held_out_videos
    from env.service import EnvService
    from learner.system import prepare_sam2, resolve_paths
    from segmentation.features import frame_key
    from segmentation.reward_pool import RewardPoolCore
    from segmentation.sam2_models import sam2_from_model_config

    started = time.time()
    cfg = prepare_sam2(resolve_paths(cfg))
    cache_dir = str(cfg.model.cache_dir)
    env = EnvService(cfg.env, cfg.data.train, cache_dir=cache_dir)
    ids = env.sample_ids()
    videos = sorted({env.sample(s).video_id for s in ids})
    held_videos = held_out_videos(videos, held_out_fraction, seed)
    held_ids = [s for s in ids if env.sample(s).video_id in held_videos]
    train_ids = [s for s in ids if env.sample(s).video_id not in held_videos]
    train = referred_frames(env, train_ids, frame_stride)
    if not train:
        raise ValueError("no visible targets in the training videos: nothing to learn from")
    # The reward pool's frozen encoder; its hidden size is irrelevant here. Its own feature cache is
    # off (capacity 0): `exported` below is the one memo, so a frame is not held twice.
    pool = RewardPoolCore(cfg.model, cfg.reward.model_copy(update={"feature_cache_frames": 0}), 1,
                          datasets=cfg.data.train, data_cache_dir=cache_dir)
    # Bounded: unbounded, it held every frame ever touched and a 240-video pool outgrew 24 GiB.
    exported: OrderedDict[str, dict] = OrderedDict()

    def features_of(frames):
        refs = [(s.dataset, s.video_id, f) for s, f in frames]
        keys = [frame_key(*r, pool.image_size) for r in refs]
        missing = [r for r, k in zip(refs, keys) if k not in exported]
        if missing:
            for key, feat in pool.cache.get_many(list(dict.fromkeys(missing))).items():
                exported[key] = pool.export_features(feat)
        batch = {name: torch.cat([exported[k][name] for k in keys]) for name in exported[keys[0]]}
        for k in keys:
            exported.move_to_end(k)
        while len(exported) > memo_frames:
            exported.popitem(last=False)
        return batch

    torch.manual_seed(seed)
    model = sam2_from_model_config(cfg.model, "cpu")
    model.train()
    vocabulary = [w for s in train_ids for w in expression_words(env.sample(s).expression)]
    trainer = TextPromptTrainer(model, features_of, vocabulary, lr, seed, all_candidates)
    before = referring_scores(trainer, env, held_ids)
    log.info("text-prompt pre-training on %d frames of %d videos (%d held out); held-out %s",
             len(train), len(videos) - len(held_videos), len(held_videos), before)
    losses = []
    rng = np.random.default_rng([seed, 1])
    for step in range(steps):
        pick = rng.choice(len(train), size=min(batch, len(train)), replace=False)
        losses.append(trainer.step([train[i] for i in pick]))
        if step % 50 == 0 or step + 1 == steps:
            log.info("step %d/%d loss %.4f", step + 1, steps, losses[-1])
    after = referring_scores(trainer, env, held_ids)
    report = {"checkpoint": str(out_path) if out_path else None,
              "prompt_teacher": str(words_path(out_path)) if out_path else None, "sam2_config": cfg.model.sam2_config,
              "image_size": model.image_size,
              "train_frames": len(train), "train_videos": len(videos) - len(held_videos),
              "held_out_videos": len(held_videos), "steps": steps, "batch": batch, "lr": lr, "seed": seed,
              "candidate_loss": "all" if all_candidates else "best",
              "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:])),
              "held_out_before": before, "held_out_after": after, "seconds": time.time() - started}
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"model": model.state_dict()}, tmp)
        os.replace(tmp, out_path)
        trainer.save_words(words_path(out_path))
        out_path.with_suffix(".json").write_text(json.dumps(report, indent=1))
    log.info("held-out %s -> %s", before, after)
    return report


def main(argv=None) -> int:
    from configs import ConfigError, available_presets, load_config

    ap = argparse.ArgumentParser(prog="python -m segmentation.pretrain_text_prompt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="checkpoint to write (a .json report goes next to it); "
                                                "without it the run only measures")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memo-frames", type=int, default=1024,
                    help="decode-ready frame features kept in memory (least recently used evicted first)")
    ap.add_argument("--candidate-loss", choices=("best", "all"), default="best")
    ap.add_argument("--preset", default="debug_cpu", help=f"one of {available_presets()}")
    ap.add_argument("--config", default=None)
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.train=[...]")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.memo_frames < 1 or not 0 < args.lr < 1:
        print("error: --steps, --batch and --memo-frames must be at least 1 and --lr in (0, 1)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.preset, args.overrides, args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from env.errors import DataError

    try:
        report = pretrain(cfg, Path(args.out) if args.out else None, args.steps, args.batch, args.lr, args.seed,
                          args.candidate_loss == "all", memo_frames=args.memo_frames)
    except (FileNotFoundError, ValueError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
