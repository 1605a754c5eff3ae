"""How much held-out J&F a `[SEG]` token can reach with the tiny SAM2 the learning curve uses.

The learning curve freezes the text-pretrained SAM2 decoder in SFT and RL, so a policy changes
J&F only through the prompt its `[SEG]` projects to and the keyframe it puts it on. This script
replaces the policy's prompt with the text-prompt pre-training's own prompt for the expression
(the "teacher" that SFT's prompt anchor pulls `[SEG]` towards) and scores, on the samples of given
evaluation reports:
- `teacher_at_keyframe_of:<tag>`: the teacher prompt on the keyframe that policy chose;
- `teacher_at_best_keyframe`: the teacher prompt on the frame where the target is largest;
next to the policies' own J&F from the reports. Same propagation, thresholds and J/F code as the
evaluation. If the policies already sit at the teacher's level, RL with a frozen decoder has
little J&F left to gain on these videos.

    python -m benchmarks.prompt_ceiling --sam2 runs/lc/sam2_text.pt \
        --reports runs/lc/eval_train/sft_s0/report.json runs/lc/eval_train/rl_s0/report.json \
        --out benchmarks/results/prompt_ceiling.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _load_reports(paths: list[Path]) -> dict[str, dict]:
    reports = {}
    for p in paths:
        report = json.loads(Path(p).read_text())
        tag = report.get("tag") or Path(p).parent.name
        if tag in reports:
            raise ValueError(f"two reports are tagged {tag!r} ({p})")
        reports[tag] = report
    specs = {json.dumps(r["settings"]["datasets"], sort_keys=True) for r in reports.values()}
    if len(specs) != 1:
        raise ValueError("the reports were made on different held-out datasets; pass reports of one set")
    return reports


def ceiling(sam2_ckpt: Path, reports: dict[str, dict], batch: int = 16) -> dict:
    import torch

    from benchmarks.paired_delta import sample_jf
    from configs import load_config
    from env.service import EnvService
    from learner.eval_report import expression_score
    from segmentation.pretrain_text_prompt import PromptTeacher, words_path
    from segmentation.metrics import jf_mean
    from segmentation.propagation import Track, propagate_tracks
    from segmentation.reward_pool import RewardPoolCore

    first = next(iter(reports.values()))
    cfg = load_config("debug_cpu", [f"model.sam2_checkpoint={sam2_ckpt}",
                                    "data.eval=" + json.dumps(first["settings"]["datasets"])])
    datasets = cfg.data.eval
    env = EnvService(cfg.env, datasets, cache_dir=str(cfg.model.cache_dir))
    pool = RewardPoolCore(cfg.model, cfg.reward, 1, datasets=datasets, data_cache_dir=str(cfg.model.cache_dir))
    teacher = PromptTeacher(words_path(sam2_ckpt))
    ids = sorted({s["sample_id"] for r in reports.values() for s in r["samples"]})
    chosen = {tag: {s["sample_id"]: s for s in r["samples"]} for tag, r in reports.items()}

    # One propagation per (sample, keyframe): policies mostly agree on the keyframe.
    gts = {sid: env.gt_masks(env.sample(sid), list(range(env.sample(sid).num_frames))) for sid in ids}
    best, jobs = {}, set()
    for sid in ids:
        gt = gts[sid]
        best[sid] = int(gt.reshape(len(gt), -1).sum(1).argmax())
        jobs.add((sid, best[sid]))
        for tag in reports:
            row = chosen[tag].get(sid)
            if row is not None and row.get("final_keyframe") is not None:
                jobs.add((sid, int(row["final_keyframe"])))
    jobs = sorted(jobs)
    at: dict[tuple[str, int], float] = {}
    for start in range(0, len(jobs), batch):
        chunk = jobs[start:start + batch]
        tracks = []
        for sid, kf in chunk:
            s = env.sample(sid)
            prompt = torch.as_tensor(teacher(s.expression), dtype=torch.float32).reshape(-1)
            tracks.append(Track(s.dataset, s.video_id, s.num_frames, kf, prompt, s.height, s.width))
        masks = propagate_tracks(pool.model, pool.cache.get_many, tracks, pool.autocast,
                                 lookahead_frames=cfg.reward.batch_frames)
        for (sid, kf), pred in zip(chunk, masks):
            s = env.sample(sid)
            sc = expression_score(s.video_id, s.exp_id, gts[sid], pred)
            at[(sid, kf)] = jf_mean(sc.j, sc.f)
    scores = {"teacher_at_best_keyframe": {sid: at[(sid, best[sid])] for sid in ids}}
    for tag in reports:
        scores[f"teacher_at_keyframe_of:{tag}"] = {
            sid: at[(sid, int(row["final_keyframe"]))] for sid, row in chosen[tag].items()
            if row.get("final_keyframe") is not None}
    out: dict = {"samples": len(ids), "propagations": len(jobs), "variants": {}}
    for variant, per in sorted(scores.items()):
        out["variants"][variant] = {"jf": float(np.mean(list(per.values()))), "n": len(per)}
    for tag, rows in chosen.items():
        own = {sid: sample_jf(r) for sid, r in rows.items() if sample_jf(r) is not None}
        teach = scores[f"teacher_at_keyframe_of:{tag}"]
        gaps = [teach[sid] - jf for sid, jf in own.items() if sid in teach]
        out["variants"][f"policy:{tag}"] = {
            "jf": float(np.mean(list(own.values()))) if own else None, "n": len(own),
            "teacher_minus_policy_same_keyframe": float(np.mean(gaps)) if gaps else None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sam2", type=Path, required=True, help="the text-pretrained tiny SAM2 checkpoint (.pt; "
                    "its .words.pt must lie next to it)")
    ap.add_argument("--reports", type=Path, nargs="+", required=True, help="evaluation report.json files")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from segmentation.pretrain_text_prompt import words_path

    missing = [str(p) for p in [args.sam2, words_path(args.sam2), *args.reports] if not Path(p).is_file()]
    if missing:
        print(f"prompt_ceiling: missing file(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    t0 = time.time()
    result = ceiling(args.sam2, _load_reports(args.reports))
    result.update({"command": "python -m benchmarks.prompt_ceiling " + " ".join(sys.argv[1:] if argv is None else argv),
                   "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - t0, 1)})
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
