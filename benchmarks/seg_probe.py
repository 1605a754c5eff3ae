"""Does a policy's [SEG] encode the target? A teacher-forced probe of an SFT or RL policy.

    python -m benchmarks.seg_probe --policy runs/sft/policy --trajectories runs/sft_data/oracle.jsonl \\
        [--out probe.json] [--preset debug_cpu] [overrides such as data.train=[...]]

(DeepSpeed also logs to stdout; --out writes the JSON alone to a file.)

Each VTS-CoT record is replayed on the env exactly as `learner.sft` replays it; the final turn's
[SEG] is read from the policy (last-layer hidden state, then the projector). Per video, the prompts
of all its expressions are decoded on one shared keyframe, so only the prompt differs. Reported:

  cross_target_pred_iou  mean IoU between the masks of expressions whose targets differ on that
                         frame (ground-truth IoU < 0.5); 1.0 means the masks ignore the expression
  own_iou                mean IoU of each mask with its own target on that frame
  prompt_spread          within-video std of the prompt tokens over the norm of their mean
  colour_probe           leave-one-out nearest-centroid accuracy of the colour word named by the
                         expression (those naming exactly one of env.synthetic's colours), from
                         the [SEG] hidden states; `colour_chance` is the majority-class rate

Use it as the gate before a learning-curve run: while the colour probe sits at chance, the [SEG]
carries no target identity and RL cannot move J&F through the masks.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys

import numpy as np

from segmentation.metrics import mask_iou


def nearest_centroid_loo(x: np.ndarray, labels: list[str]) -> tuple[float, float]:
    """(leave-one-out accuracy, majority-class rate) of a nearest-centroid classifier on
    standardised features `x` (N, D). A held-out point whose class has no other member counts as
    a miss."""
    if len(labels) != len(x) or len(set(labels)) < 2:
        raise ValueError("need one label per row and at least two classes")
    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
    labels_arr = np.asarray(labels)
    hits = 0
    for i in range(len(z)):
        rest = np.arange(len(z)) != i
        cents = {c: z[rest & (labels_arr == c)].mean(0) for c in set(labels) if (rest & (labels_arr == c)).any()}
        hits += min(cents, key=lambda c: float(np.linalg.norm(z[i] - cents[c]))) == labels[i]
    chance = max(labels.count(c) for c in set(labels)) / len(labels)
    return hits / len(labels), chance


def colour_of(expression: str) -> str | None:
    from env.synthetic import COLORS

    named = [c for c in COLORS if c in expression.split()]
    return named[0] if len(named) == 1 else None


def probe(cfg, policy: str, trajectories: str) -> dict:
    import torch

    from learner.losses import resize_mask
    from learner.sft import open_session

    session = open_session(cfg.model_copy(update={"model": cfg.model.model_copy(update={"policy": policy})}),
                           trajectories)
    env, core, source, examples, policy_dir = (session.env, session.core, session.source, session.examples,
                                               session.policy_dir)
    module = core.module.eval()
    by_video: dict[str, list] = {}
    for ex in examples:
        by_video.setdefault(ex.traj.sample.video_id, []).append(ex)
    cross, own, spread, hidden, colours = [], [], [], [], []
    with torch.no_grad():
        for group in by_video.values():
            prompts = []
            for ex in group:
                mb = core.collator([ex.traj], [0])
                h = core._hidden(module, mb)
                prompts.append(module.seg_embeddings(h, mb.seg_rows, mb.seg_cols)[-1])
                hidden.append(h[mb.seg_rows[-1], mb.seg_cols[-1]].float().cpu().numpy())
                colours.append(colour_of(ex.traj.sample.expression))
            if len(group) < 2:
                continue
            stacked = torch.stack(prompts)
            spread.append(float(stacked.std(0).norm() / stacked.mean(0).norm()))
            frame = group[0].mask_frames[-1][0]  # the first record's final keyframe, for every prompt
            out = core._decode_on_frames(stacked, [source.key(frame)] * len(group), source.get([frame]))
            best = out.all_ious.argmax(-1)
            masks = (out.all_logits[torch.arange(len(group), device=best.device), best] > 0).cpu().numpy()
            gts = [resize_mask(torch.as_tensor(env.gt_masks(ex.traj.sample, [frame[2]])[0])[None],
                               *masks.shape[-2:])[0].numpy() > 0.5 for ex in group]
            for a, b in itertools.combinations(range(len(group)), 2):
                if mask_iou(gts[a], gts[b]) < 0.5:
                    cross.append(mask_iou(masks[a], masks[b]))
            own += [mask_iou(m, g) for m, g in zip(masks, gts)]
    named = [(h, c) for h, c in zip(hidden, colours) if c]
    acc = chance = None
    if len({c for _, c in named}) >= 2:
        acc, chance = nearest_centroid_loo(np.stack([h for h, _ in named]), [c for _, c in named])
    return {"policy": str(policy_dir), "trajectories": str(trajectories), "records": len(examples),
            "skipped": len(session.skipped), "videos": len(by_video), "cross_target_pairs": len(cross),
            "cross_target_pred_iou": float(np.mean(cross)) if cross else None,
            "own_iou": float(np.mean(own)) if own else None,
            "prompt_spread": float(np.mean(spread)) if spread else None,
            "colour_probe": acc, "colour_chance": chance, "colour_records": len(named)}


def main(argv=None) -> int:
    from benchmarks.common import print_json
    from configs import ConfigError, available_presets, load_config

    ap = argparse.ArgumentParser(prog="python -m benchmarks.seg_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="a policy directory (SFT output, exported checkpoint) or tiny name")
    ap.add_argument("--trajectories", required=True, help="VTS-CoT records written for data.train")
    ap.add_argument("--out", default=None, help="write the result JSON here too")
    ap.add_argument("--preset", default="debug_cpu", help=f"one of {available_presets()}")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.train=[...] (the records' datasets)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.preset, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from env.errors import DataError

    try:
        result = probe(cfg, args.policy, args.trajectories)
    except (FileNotFoundError, ValueError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_json(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
