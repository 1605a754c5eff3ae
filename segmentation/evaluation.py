"""Dataset-level J/F scoring: the DAVIS toolkit protocol and the MeViS / ReVOS expression loops.

Frame -> expression (temporal mean) -> dataset, exactly as METRICS_AND_FORMATS.md sections 1.1-1.3
and 1.6 describe. Predictions come as PNG folders (`<pred>/<video>/<exp_id>/<frame>.png`, DAVIS:
`<pred>/<seq>/<frame>.png`) or as a Sa2VA-style results.json of RLEs.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from env.errors import AnnotationError
from env.masks import foreground_areas
from segmentation.masks import MaskFormatError, decode_rle, read_binary_png, read_label_png
from segmentation.metrics import (davis_statistics, jf_mean, sequence_accuracy, sequence_jf,
                                  sequence_robustness)

MAX_UNSUPERVISED_PROPOSALS = 20  # the toolkit refuses more object ids than this


class ScoreError(ValueError):
    pass


class MissingPrediction(LookupError):
    pass


# ------------------------------------------------------------------------------------- DAVIS
def davis_annotation_dir(gt_root: Path, task: str) -> Path:
    names = ["Annotations_unsupervised", "Annotations"] if task == "unsupervised" else ["Annotations"]
    for name in names:
        for cand in (gt_root / name / "480p", gt_root / name):
            if cand.is_dir() and any(p.is_dir() for p in cand.iterdir()):
                return cand
    raise ScoreError(f"no DAVIS annotation folder ({' or '.join(names)}[/480p]/<seq>/) under {gt_root}")


def read_davis_labels(seq_dir: Path) -> tuple[np.ndarray, list[str]]:
    """(T, H, W) object-id labels of one sequence and its frame ids, the toolkit's way.

    The toolkit zeroes the value 255 (void in DAVIS 2017). DAVIS 2016 annotations are binary 0/255
    with 255 the object: a sequence whose only values are 0 and 255 is read as one object, id 1.
    """
    files = sorted(seq_dir.glob("*.png"))
    if not files:
        raise ScoreError(f"no PNG annotations in {seq_dir}")
    labels = np.stack([read_label_png(f) for f in files]).astype(np.int64)
    values = set(np.unique(labels).tolist())
    if values <= {0, 255} and 255 in values:
        labels = (labels == 255).astype(np.int64)
    else:
        labels[labels == 255] = 0
    return labels, [f.stem for f in files]


def _object_masks(labels: np.ndarray, count: int) -> np.ndarray:
    ids = np.arange(1, count + 1)[:, None, None, None]
    return labels[None] == ids  # (count, T, H, W)


def score_davis(gt_root: str | Path, pred_root: str | Path, task: str = "semi-supervised",
                sequences: list[str] | None = None) -> dict:
    """DAVIS 2017 toolkit protocol: per object M/R/D of J and F, pooled means over objects."""
    if task not in ("semi-supervised", "unsupervised"):
        raise ScoreError(f"unknown DAVIS task '{task}' (semi-supervised or unsupervised)")
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    anno_dir = davis_annotation_dir(gt_root, task)
    seqs = sequences or sorted(p.name for p in anno_dir.iterdir() if p.is_dir())
    missing = [s for s in seqs if not (pred_root / s).is_dir()]
    if missing:
        raise ScoreError(f"predictions missing for sequences {missing} under {pred_root}")
    per_object: dict[str, dict] = {}
    for seq in seqs:
        labels, frame_ids = read_davis_labels(anno_dir / seq)
        gt_objects = _object_masks(labels, int(labels[0].max()))  # object count from the first frame
        if task == "semi-supervised":  # the first frame is given, the last is not scored either
            gt_objects, frame_ids = gt_objects[:, 1:-1], frame_ids[1:-1]
        pred_labels = np.stack([_read_pred_label(pred_root / seq, f) for f in frame_ids]).astype(np.int64)
        if pred_labels.shape[1:] != gt_objects.shape[2:]:
            raise ScoreError(f"{seq}: predictions are {pred_labels.shape[1:]}, "
                             f"annotations {gt_objects.shape[2:]}")
        pred_objects = _object_masks(pred_labels, int(pred_labels.max()))
        if task == "semi-supervised":
            pairs = _semi_supervised(seq, gt_objects, pred_objects)
        else:
            pairs = _unsupervised(seq, gt_objects, pred_objects)
        for i, (j, f) in enumerate(pairs):
            jm, jr, jd = davis_statistics(j)
            fm, fr, fd = davis_statistics(f)
            per_object[f"{seq}_{i + 1}"] = {"J": jm, "F": fm, "J&F": jf_mean(jm, fm), "J_recall": jr,
                                            "J_decay": jd, "F_recall": fr, "F_decay": fd,
                                            "frames": list(frame_ids), "J_per_frame": j.tolist(),
                                            "F_per_frame": f.tolist()}
    j_mean = float(np.mean([o["J"] for o in per_object.values()]))
    f_mean = float(np.mean([o["F"] for o in per_object.values()]))
    summary = {"J-Mean": j_mean, "F-Mean": f_mean, "J&F-Mean": jf_mean(j_mean, f_mean),
               "J-Recall": float(np.mean([o["J_recall"] for o in per_object.values()])),
               "J-Decay": float(np.mean([o["J_decay"] for o in per_object.values()])),
               "F-Recall": float(np.mean([o["F_recall"] for o in per_object.values()])),
               "F-Decay": float(np.mean([o["F_decay"] for o in per_object.values()]))}
    return {"format": "davis", "task": task, "per_object": per_object, "summary": summary}


def _read_pred_label(seq_dir: Path, frame_id: str) -> np.ndarray:
    path = seq_dir / f"{frame_id}.png"
    if not path.is_file():
        raise ScoreError(f"prediction {path} is missing (one PNG per annotated frame is required)")
    return read_label_png(path)


def _semi_supervised(seq, gt_objects, pred_objects):
    if pred_objects.shape[0] != gt_objects.shape[0]:
        raise ScoreError(f"{seq}: predictions hold {pred_objects.shape[0]} object ids, the annotation "
                         f"{gt_objects.shape[0]} (semi-supervised ids must match)")
    return [sequence_jf(gt_objects[i], pred_objects[i]) for i in range(gt_objects.shape[0])]


def _unsupervised(seq, gt_objects, pred_objects):
    from scipy.optimize import linear_sum_assignment

    n_gt, n_pred = gt_objects.shape[0], pred_objects.shape[0]
    if n_pred > MAX_UNSUPERVISED_PROPOSALS:
        raise ScoreError(f"{seq}: {n_pred} predicted ids; at most {MAX_UNSUPERVISED_PROPOSALS} are allowed")
    if n_pred < n_gt:  # missing proposals count as empty masks
        pad = np.zeros((n_gt - n_pred, *pred_objects.shape[1:]), dtype=bool)
        pred_objects = np.concatenate([pred_objects, pad])
    scores = {}
    cost = np.zeros((pred_objects.shape[0], n_gt))
    for g in range(n_gt):
        for p in range(pred_objects.shape[0]):
            scores[p, g] = sequence_jf(gt_objects[g], pred_objects[p])
            cost[p, g] = (scores[p, g][0].mean() + scores[p, g][1].mean()) / 2
    rows, cols = linear_sum_assignment(-cost)
    # The toolkit lists matched pairs in proposal order and names them <seq>_1..n in that order.
    return [scores[p, g] for p, g in zip(rows, cols)]


# ------------------------------------------------------------------------- MeViS / ReVOS loop
@dataclass
class ExpressionScore:
    video: str
    exp_id: str
    j: float
    f: float
    type_id: int | None = None
    note: str = ""
    a: float | None = None  # ReVOS accuracy (ReVOS format only)
    r: float | None = None  # ReVOS robustness (needs mask_dict_foreground.json)

    @property
    def key(self) -> str:
        return f"{self.video}_{self.exp_id}"

    def as_dict(self) -> dict:
        d = {"J": self.j, "F": self.f, "J&F": jf_mean(self.j, self.f)}
        if self.a is not None:
            d["A"] = self.a
        if self.r is not None:
            d["R"] = self.r
        if self.type_id is not None:
            d["type_id"] = self.type_id
        if self.note:
            d["note"] = self.note
        return d


class PngPredictions:
    """`<root>/<video>/<exp_id>/<frame>.png`, nonzero = foreground."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ScoreError(f"prediction folder {self.root} does not exist")

    def has_video(self, video: str) -> bool:
        return (self.root / video).is_dir()

    def masks(self, video: str, exp_id: str, frames: list[str]) -> np.ndarray:
        out = []
        for name in frames:
            path = self.root / video / exp_id / f"{name}.png"
            if not path.is_file():
                raise MissingPrediction(f"prediction {path} is missing")
            out.append(read_binary_png(path))
        if len({m.shape for m in out}) > 1:
            raise MaskFormatError(f"{self.root / video / exp_id}: frames of different sizes "
                                  f"{sorted({m.shape for m in out})}")
        return np.stack(out)


class RlePredictions:
    """Sa2VA-style results.json: {video: {exp_id: {"prediction_masks": [RLE per frame]}}}."""

    def __init__(self, path: str | Path):
        try:
            self.data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ScoreError(f"cannot read RLE results {path}: {exc}") from None

    def has_video(self, video: str) -> bool:
        return video in self.data

    def masks(self, video: str, exp_id: str, frames: list[str]) -> np.ndarray:
        entry = self.data.get(video, {}).get(str(exp_id))
        if entry is None:
            raise MissingPrediction(f"results hold no masks for {video}/{exp_id}")
        rles = entry["prediction_masks"] if isinstance(entry, dict) else entry
        if len(rles) != len(frames):
            raise MissingPrediction(f"{video}/{exp_id}: {len(rles)} masks for {len(frames)} frames")
        return np.stack([decode_rle(r) for r in rles])


def open_predictions(path: str | Path):
    path = Path(path)
    return RlePredictions(path) if path.is_file() and path.suffix == ".json" else PngPredictions(path)


def load_meta(gt_dir: Path, meta_file: str | None, candidates: tuple[str, ...]) -> dict:
    names = [meta_file] if meta_file else list(candidates)
    for name in names:
        path = gt_dir / name
        if path.is_file():
            return json.loads(path.read_text())["videos"]
    raise ScoreError(f"no meta expressions file ({', '.join(names)}) in {gt_dir}")


def expression_gt(mask_dict: dict, anno_ids, num_frames: int, shape: tuple[int, int] | None) -> np.ndarray:
    """(T, H, W) union of the expression's objects; null entries are absent objects."""
    ids = anno_ids if isinstance(anno_ids, (list, tuple)) else [anno_ids]
    masks = None
    for anno in ids:
        track = mask_dict.get(str(anno))
        if track is None:
            raise ScoreError(f"anno_id {anno} is not in mask_dict")
        if len(track) != num_frames:
            raise ScoreError(f"anno_id {anno} has {len(track)} masks for {num_frames} frames")
        for t, rle in enumerate(track):
            if rle is None:
                continue
            m = decode_rle(rle)
            if masks is None:
                masks = np.zeros((num_frames, *m.shape), dtype=bool)
            masks[t] |= m
    if masks is None:  # absent on every frame
        if shape is None:
            raise ScoreError(f"objects {ids} are never present and the frame size is unknown")
        masks = np.zeros((num_frames, *shape), dtype=bool)
    return masks


def foreground_pixels(foreground: dict, video: str, num_frames: int) -> np.ndarray | None:
    """Per-frame pixel counts of a video's foreground (mask_dict_foreground.json: {video:
    {"masks_rle": [RLE, list of RLEs, or null per frame]}}); channels of one frame are summed, as
    the ReVOS script sums a multi-channel mask. None when the file has no entry for the video."""
    entry = foreground.get(video)
    if entry is None:
        return None
    rles = entry.get("masks_rle") if isinstance(entry, dict) else None
    if not isinstance(rles, list) or len(rles) != num_frames:
        got = len(rles) if isinstance(rles, list) else "no"
        raise ScoreError(f"mask_dict_foreground.json: {video} has {got} masks_rle for {num_frames} frames")
    try:
        return foreground_areas(rles, f"mask_dict_foreground.json: {video}")
    except AnnotationError as exc:
        raise ScoreError(str(exc)) from None


def accuracy_robustness(gt: np.ndarray, pred: np.ndarray, foreground: np.ndarray | None) -> dict:
    """ReVOS temporal means {"a": A, "r": R} of one expression; R is None without the foreground."""
    r = None if foreground is None else float(sequence_robustness(gt, pred, foreground).mean())
    return {"a": float(sequence_accuracy(gt, pred).mean()), "r": r}


def score_expressions(gt_dir: str | Path, pred: str | Path, fmt: str,
                      meta_file: str | None = None) -> list[ExpressionScore]:
    """Per-expression temporal means of J and F over every frame listed in the meta file."""
    gt_dir = Path(gt_dir)
    candidates = ("meta_expressions_valid_.json", "meta_expressions.json") if fmt == "revos" else \
        ("meta_expressions.json",)
    videos = load_meta(gt_dir, meta_file, candidates)
    mask_dict = json.loads((gt_dir / "mask_dict.json").read_text())
    fg_path = gt_dir / "mask_dict_foreground.json"
    foreground = json.loads(fg_path.read_text()) if fmt == "revos" and fg_path.is_file() else None
    if fmt == "revos" and foreground is None:
        warnings.warn(f"{fg_path} is missing: ReVOS robustness R is not scored", stacklevel=2)
    preds = open_predictions(pred)
    scores = []
    for video, rec in videos.items():
        frames = list(rec["frames"])
        shape = (int(rec["height"]), int(rec["width"])) if "height" in rec and "width" in rec else None
        fg = None if foreground is None else foreground_pixels(foreground, video, len(frames))
        zero_ar = {"a": 0.0, "r": None if fg is None else 0.0} if fmt == "revos" else {}
        for exp_id, exp in rec["expressions"].items():
            if "anno_id" not in exp:
                raise ScoreError(f"{video}/{exp_id} has no anno_id: this split has no local ground truth "
                                 "(MeViS 'valid' is scored by the challenge server)")
            type_id = exp.get("type_id") if fmt == "revos" else None
            if not preds.has_video(video):  # both official scripts score a missing video 0
                scores.append(ExpressionScore(video, exp_id, 0.0, 0.0, type_id, "no predictions", **zero_ar))
                continue
            try:
                pm = preds.masks(video, exp_id, frames)
                size = pm.shape[1:] if shape is None else shape
                gm = expression_gt(mask_dict, exp["anno_id"], len(frames), size)
                if gm.shape != pm.shape:
                    raise MaskFormatError(f"{video}/{exp_id}: predictions {pm.shape[1:]} vs ground truth "
                                          f"{gm.shape[1:]}")
                j, f = sequence_jf(gm, pm)
                extra = accuracy_robustness(gm, pm, fg) if fmt == "revos" else {}
                scores.append(ExpressionScore(video, exp_id, float(j.mean()), float(f.mean()), type_id, **extra))
            except (MissingPrediction, MaskFormatError) as exc:
                if fmt == "mevis" and isinstance(exc, MaskFormatError):
                    raise ScoreError(str(exc)) from None
                # ReVOS scores any failure as zeros; MeViS crashes on a missing frame PNG, we score
                # it zero too but say so in the output.
                warnings.warn(f"{video}/{exp_id} scored 0: {exc}", stacklevel=2)
                scores.append(ExpressionScore(video, exp_id, 0.0, 0.0, type_id, str(exc), **zero_ar))
    return scores


def mean_over_expressions(scores: list[ExpressionScore]) -> dict:
    """Means of J, F (and of ReVOS A and R when every expression has them) over expressions."""
    if not scores:
        return {"J": None, "F": None, "J&F": None, "count": 0}
    j = float(np.mean([s.j for s in scores]))
    f = float(np.mean([s.f for s in scores]))
    out = {"J": j, "F": f, "J&F": jf_mean(j, f), "count": len(scores)}
    for key, attr in (("A", "a"), ("R", "r")):
        values = [getattr(s, attr) for s in scores]
        if all(v is not None for v in values):
            out[key] = float(np.mean(values))
    return out


def _visa_round(v: float | None) -> float | None:
    return None if v is None else round(v * 100, 2) / 100


def revos_summary(scores: list[ExpressionScore], round_like_visa: bool = False) -> dict:
    """Referring (type 0), reasoning (type 1), overall = mean of the two; type 2 is dropped.

    `round_like_visa` rounds each expression to 2 decimals in percent first, as VISA's script does.
    """
    if round_like_visa:
        scores = [ExpressionScore(s.video, s.exp_id, _visa_round(s.j), _visa_round(s.f), s.type_id, s.note,
                                  _visa_round(s.a), _visa_round(s.r)) for s in scores]
    referring = mean_over_expressions([s for s in scores if s.type_id == 0])
    reasoning = mean_over_expressions([s for s in scores if s.type_id == 1])
    present = [m for m in (referring, reasoning) if m["count"]]
    overall = {"J": None, "F": None, "J&F": None}
    if present:
        for k in ("J", "F"):
            overall[k] = float(np.mean([m[k] for m in present]))
        overall["J&F"] = jf_mean(overall["J"], overall["F"])
        for k in ("A", "R"):  # the ReVOS overall of A and R is the same mean of the two types
            if all(k in m for m in present):
                overall[k] = float(np.mean([m[k] for m in present]))
    return {"referring": referring, "reasoning": reasoning, "overall": overall,
            "dropped_type_2": sum(1 for s in scores if s.type_id == 2)}
