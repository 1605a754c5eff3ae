"""Can the policy's language model carry the target into its [SEG] state at all? A capacity probe.

    python -m benchmarks.route_probe --policy runs/sft/policy --trajectories runs/sft_data/oracle.jsonl \\
        [--steps 150] [--lr 1e-3] [--lm-weight 1.0] [--out route.json] [overrides such as data.train=[...]]

seg_probe shows whether a trained policy's [SEG] encodes the target. When it does not, this probe
separates "cannot" from "was not taught": it trains the policy (in memory, nothing is written)
with the SFT language loss plus a direct signal, a linear classifier from the final [SEG]'s
last-layer hidden state to the colour word the expression names, on the records of some videos,
and reports the held-out videos' colour accuracy (the linear head, and a leave-one-out
nearest-centroid probe on the hidden states) before and after. A plain AdamW over the policy and
the head is used, not the learner's DeepSpeed engine: nothing here is meant to be kept.

If held-out accuracy rises well above chance, the language model can route the query's words to
[SEG] within the budget, and a [SEG] that stays blind under SFT is a training-signal problem (the
mask loss reaching the language model through the projector and the SAM2 decoder), not capacity.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np


def last_seg_per_row(rows: list[int], cols: list[int]) -> dict[int, int]:
    """Batch row -> position of its last [SEG] (rows without one are absent)."""
    last: dict[int, int] = {}
    for r, c in zip(rows, cols):
        last[r] = max(c, last.get(r, -1))
    return last


def route(cfg, policy: str, trajectories: str, steps: int, lr: float, lm_weight: float, batch: int = 8,
          held_out_fraction: float = 0.25, seed: int = 0, eval_every: int = 50) -> dict:
    import torch

    from benchmarks.seg_probe import colour_of, nearest_centroid_loo
    from env.datasets import held_out_videos
    from env.synthetic import COLORS
    from learner.sft import open_session
    from learner.token_head import score_tokens

    session = open_session(cfg.model_copy(update={"model": cfg.model.model_copy(update={"policy": policy})}),
                           trajectories)
    core, module = session.core, session.core.module
    colours = list(COLORS)
    named = [(ex, colours.index(colour_of(ex.traj.sample.expression))) for ex in session.examples
             if colour_of(ex.traj.sample.expression)]
    held_videos = held_out_videos([ex.traj.sample.video_id for ex, _ in named], held_out_fraction, seed)
    train = [x for x in named if x[0].traj.sample.video_id not in held_videos]
    held = [x for x in named if x[0].traj.sample.video_id in held_videos]
    if not train or len({c for _, c in held}) < 2:
        raise ValueError("too few single-colour expressions to split into a training set and a held-out set "
                         "with two colours; give more videos")
    torch.manual_seed(seed)
    head = torch.nn.Linear(module.lm.lm_head.in_features, len(colours))
    params = [p for p in module.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def seg_states(items):
        module.eval()
        states = []
        with torch.no_grad():
            for ex, _ in items:
                mb = core.collator([ex.traj], [0])
                h = core._hidden(module, mb)
                states.append(h[mb.seg_rows[-1], mb.seg_cols[-1]].float().cpu())
        module.train()
        return torch.stack(states)

    def measure(step: int) -> dict:
        states = seg_states(held)
        labels = [c for _, c in held]
        with torch.no_grad():
            head_acc = float((head(states).argmax(-1).numpy() == np.asarray(labels)).mean())
        loo, chance = nearest_centroid_loo(states.numpy(), [str(c) for c in labels])
        return {"step": step, "held_out_head_accuracy": head_acc, "held_out_centroid_accuracy": loo,
                "chance": chance}

    curve = [measure(0)]
    rng = np.random.default_rng([seed, 1])
    losses = []
    module.train()
    for step in range(1, steps + 1):
        picked = [train[i] for i in rng.choice(len(train), size=min(batch, len(train)), replace=False)]
        mb = core.collator([ex.traj for ex, _ in picked], list(range(len(picked))))
        h = core._hidden(module, mb)
        scored = score_tokens(module.lm.lm_head, h, mb.input_ids, mb.loss_mask.bool())
        nll = -scored.logp.sum() / mb.loss_mask[:, 1:].sum().clamp(min=1)  # token mean
        last = last_seg_per_row(mb.seg_rows.tolist(), mb.seg_cols.tolist())
        rows = sorted(last)
        states = h[torch.tensor(rows, device=h.device), torch.tensor([last[r] for r in rows], device=h.device)]
        target = torch.tensor([picked[r][1] for r in rows])
        ce = torch.nn.functional.cross_entropy(head(states.float().cpu()), target)
        loss = lm_weight * nll + ce.to(nll.device)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append({"step": step, "lm_loss": float(nll.detach()), "colour_loss": float(ce.detach())})
        if step % eval_every == 0 or step == steps:
            curve.append(measure(step))
            logging.getLogger("benchmarks.route_probe").info("%s", curve[-1])
    return {"policy": str(session.policy_dir), "trajectories": str(trajectories), "train_records": len(train),
            "held_out_records": len(held), "held_out_videos": len(held_videos), "steps": steps, "lr": lr,
            "lm_weight": lm_weight, "batch": batch, "curve": curve, "losses": losses[-5:]}


def main(argv=None) -> int:
    from benchmarks.common import print_json
    from configs import ConfigError, available_presets, load_config

    ap = argparse.ArgumentParser(prog="python -m benchmarks.route_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="a policy directory (SFT output, exported checkpoint) or tiny name")
    ap.add_argument("--trajectories", required=True, help="VTS-CoT records written for data.train")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lm-weight", type=float, default=1.0, help="weight of the SFT language loss next to the probe's")
    ap.add_argument("--held-out-fraction", type=float, default=0.25, help="share of the videos held out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the result JSON here too")
    ap.add_argument("--preset", default="debug_cpu", help=f"one of {available_presets()}")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.train=[...] (the records' datasets)")
    args = ap.parse_args(argv)
    if args.steps < 1 or not 0 < args.lr < 1 or args.lm_weight < 0 or not 0 < args.held_out_fraction < 1:
        print("error: --steps must be at least 1, --lr and --held-out-fraction in (0, 1) and --lm-weight >= 0",
              file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.preset, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from env.errors import DataError

    try:
        result = route(cfg, args.policy, args.trajectories, args.steps, args.lr, args.lm_weight,
                       held_out_fraction=args.held_out_fraction, seed=args.seed)
    except (FileNotFoundError, ValueError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_json(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
