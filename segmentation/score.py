"""Score a folder of predicted masks (or a results.json of RLEs) against ground truth.

    python -m segmentation.score --format davis --gt DAVIS_ROOT --pred PRED_DIR --json OUT.json
        [--davis-task semi-supervised|unsupervised] [--sequences a b ...]
        GT: DAVIS_ROOT/Annotations[/480p]/<seq>/<frame>.png; predictions: PRED_DIR/<seq>/<frame>.png
    python -m segmentation.score --format mevis --gt DIR --pred PRED --json OUT.json [--meta FILE]
    python -m segmentation.score --format revos --gt DIR --pred PRED --json OUT.json [--meta FILE]
        GT: DIR/meta_expressions*.json + DIR/mask_dict.json; PRED: <video>/<exp_id>/<frame>.png
        folders or a Sa2VA-style results.json.

Writes per-object (DAVIS) or per-expression (MeViS, ReVOS) J, F, J&F and the dataset means. ReVOS
also gets accuracy A and robustness R (R only when DIR/mask_dict_foreground.json exists), on 0/1
masks as the Sa2VA RLE route computes them (METRICS_AND_FORMATS.md 1.3 and 1.6).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segmentation.evaluation import (ScoreError, mean_over_expressions, revos_summary, score_davis,
                                     score_expressions)


def run(fmt: str, gt: str | Path, pred: str | Path, meta: str | None = None,
        davis_task: str = "semi-supervised", sequences: list[str] | None = None,
        visa_rounding: bool = False) -> dict:
    if fmt == "davis":
        out = score_davis(gt, pred, davis_task, sequences)
    elif fmt in ("mevis", "revos"):
        scores = score_expressions(gt, pred, fmt, meta)
        out = {"format": fmt, "per_expression": {s.key: s.as_dict() for s in scores}}
        out["summary"] = (revos_summary(scores, visa_rounding) if fmt == "revos"
                          else mean_over_expressions(scores))
    else:
        raise ScoreError(f"unknown format '{fmt}' (davis, mevis, revos)")
    out.update({"gt": str(gt), "pred": str(pred)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m segmentation.score", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", required=True, choices=["davis", "mevis", "revos"])
    ap.add_argument("--gt", required=True, help="ground-truth root")
    ap.add_argument("--pred", required=True, help="prediction folder, or results.json (mevis/revos)")
    ap.add_argument("--json", required=True, help="where to write the scores")
    ap.add_argument("--meta", default=None, help="meta expressions file name inside --gt")
    ap.add_argument("--davis-task", default="semi-supervised", choices=["semi-supervised", "unsupervised"])
    ap.add_argument("--sequences", nargs="*", default=None, help="DAVIS: score only these sequences")
    ap.add_argument("--visa-rounding", action="store_true",
                    help="ReVOS: round each expression to 2 decimals in percent before averaging")
    args = ap.parse_args(argv)
    try:
        out = run(args.format, args.gt, args.pred, args.meta, args.davis_task, args.sequences,
                  args.visa_rounding)
    except (ScoreError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    summary = out["summary"]
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
