"""Reader of the MeViS-style layout: ReVOS, MeViS, Ref-SAV (and the synthetic and converted DAVIS data).

    ROOT/meta_expressions*.json   {"videos": {vid: {"frames": [stems], "expressions": {eid: EXP},
                                   optional "height", "width"}}}
    ROOT/mask_dict.json           {str(anno_id): [COCO RLE or null, one per frame]}
    ROOT/JPEGImages/<vid>/<stem>.jpg   or   ROOT/JPEGImages/<vid>.mp4

EXP = {"exp": text, "obj_id": [ints] | int | str, "anno_id": [ids] | id, "type_id": int}. The ground
truth of an expression is the union of its anno_id masks (METRICS_AND_FORMATS.md section 3.1).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from env.datasets.base import Dataset, VideoInfo, make_sample_id
from env.errors import AnnotationError, DataError, DatasetFormatError, MissingAnnotationError
from env.masks import decode_rle, foreground_areas, rle_area
from env.types import Sample
from env.video import find_video

log = logging.getLogger(__name__)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def normalise_expression(raw: Any, where: str) -> dict:
    """One EXP record as {exp, obj_ids (ints), anno_ids (strs), type_id}; AnnotationError if unusable."""
    if not isinstance(raw, dict):
        raise AnnotationError(f"{where}: expression record is {type(raw).__name__}, expected an object")
    text = raw.get("exp")
    if not isinstance(text, str) or not text.strip():
        raise AnnotationError(f"{where}: missing or empty 'exp' text")
    try:
        obj_ids = tuple(int(o) for o in _as_list(raw.get("obj_id")))
    except (TypeError, ValueError, OverflowError) as exc:
        raise AnnotationError(f"{where}: obj_id {raw.get('obj_id')!r} is not a list of integers") from exc
    anno_ids = tuple(str(a) for a in _as_list(raw.get("anno_id")))
    try:
        type_id = int(raw.get("type_id", 0))
    except (TypeError, ValueError, OverflowError) as exc:
        raise AnnotationError(f"{where}: type_id {raw.get('type_id')!r} is not an integer") from exc
    return {"exp": text.strip(), "obj_ids": obj_ids, "anno_ids": anno_ids, "type_id": type_id}


def read_json(path: Path, what: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetFormatError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{what} {path} is not valid JSON ({exc})") from exc


FOREGROUND_FILE = "mask_dict_foreground.json"


class MaskDictDataset(Dataset):
    """Videos and expressions from a meta dict, masks from a mask_dict.json (loaded on first use)."""

    def __init__(self, name: str, root: Path, meta: dict, mask_dict_path: Path | None, fingerprint: str,
                 format: str = "revos", frames_root: Path | None = None, video_threads: int = 1):
        super().__init__(name, root, fingerprint, video_threads)
        self.format = format
        self.frames_root = Path(frames_root) if frames_root else self.root / "JPEGImages"
        self._mask_dict_path = mask_dict_path
        self._mask_dict: dict | None = None
        self._foreground: dict | None = None
        self._expressions: dict[str, dict] = {}
        self._paths: dict[str, Path] = {}
        videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(videos, dict):
            raise DatasetFormatError(f"dataset '{name}': the meta file has no 'videos' object")
        for vid, video in videos.items():
            frames = video.get("frames") if isinstance(video, dict) else None
            if not isinstance(frames, list) or not frames:
                log.warning("dataset %s: video '%s' has no frame list; left out", name, vid)
                self.skipped.append((make_sample_id(name, vid, "*"), "video has no frame list"))
                continue
            try:
                height, width = int(video.get("height") or 0), int(video.get("width") or 0)
                exps = video.get("expressions") or {}
                if not isinstance(exps, (dict, list)):
                    raise TypeError(f"'expressions' is a {type(exps).__name__}")
            except (TypeError, ValueError, OverflowError) as exc:
                log.warning("dataset %s: video '%s' has a malformed entry (%s); left out", name, vid, exc)
                self.skipped.append((make_sample_id(name, vid, "*"), f"malformed video entry: {exc}"))
                continue
            self._videos[vid] = VideoInfo(vid, [str(f) for f in frames], height, width)
            self._expressions[vid] = exps if isinstance(exps, dict) else dict(enumerate(exps))

    # ---------------------------------------------------------------------------- masks
    def _masks(self) -> dict | None:
        if self._mask_dict is None and self._mask_dict_path is not None:
            with self._build_lock:
                if self._mask_dict is None:
                    data = read_json(self._mask_dict_path, "mask dict")
                    if not isinstance(data, dict):
                        raise DatasetFormatError(f"mask dict {self._mask_dict_path} is not an object")
                    self._mask_dict = data
        return self._mask_dict

    def foreground_pixels(self, video_id: str) -> np.ndarray | None:
        """From mask_dict_foreground.json next to mask_dict.json ({video: {"masks_rle": [RLE, list
        of RLEs or null per frame]}}); the channels of one frame are summed, as the ReVOS script does."""
        if self._foreground is None:
            path = None if self._mask_dict_path is None else self._mask_dict_path.parent / FOREGROUND_FILE
            if path is None or not path.is_file():
                return None
            with self._build_lock:
                data = read_json(path, "foreground mask dict")
                if not isinstance(data, dict):
                    raise DatasetFormatError(f"foreground mask dict {path} is not an object")
                self._foreground = data
        entry = self._foreground.get(video_id)
        if entry is None:
            return None
        rles = entry.get("masks_rle") if isinstance(entry, dict) else None
        n = self.num_frames(video_id)
        if not isinstance(rles, list) or len(rles) != n:
            got = len(rles) if isinstance(rles, list) else "no"
            raise AnnotationError(f"{FOREGROUND_FILE}: video '{video_id}' has {got} masks_rle entries for {n} frames")
        return foreground_areas(rles, f"{FOREGROUND_FILE} '{video_id}'")

    def _per_frame(self, video_id: str, anno_id: str) -> list:
        masks = self._masks()
        if masks is None:
            raise MissingAnnotationError(f"dataset '{self.name}' has no mask_dict.json under {self.root}")
        per_frame = masks.get(str(anno_id))
        if per_frame is None:
            raise MissingAnnotationError(f"anno_id {anno_id} of video '{video_id}' is not in "
                                         f"{self._mask_dict_path}")
        n = self.num_frames(video_id)
        if not isinstance(per_frame, list) or len(per_frame) != n:
            got = len(per_frame) if isinstance(per_frame, list) else type(per_frame).__name__
            raise AnnotationError(f"anno_id {anno_id}: expected {n} per-frame entries (one per frame of "
                                  f"'{video_id}'), got {got}")
        return per_frame

    def _object_mask(self, video_id: str, anno_id: str, index: int, size: tuple[int, int]) -> np.ndarray:
        rle = self._per_frame(video_id, anno_id)[index]
        return decode_rle(rle, size, f"anno_id {anno_id} frame {index} of '{video_id}'")

    def _frame_size_from_annotations(self, video_id: str) -> tuple[int, int] | None:
        masks = self._masks()
        if masks is None:
            return None
        for exp in self._expressions.get(video_id, {}).values():
            for anno in _as_list(exp.get("anno_id") if isinstance(exp, dict) else None):
                for rle in masks.get(str(anno)) or []:
                    if isinstance(rle, dict) and "size" in rle:
                        return int(rle["size"][0]), int(rle["size"][1])
        return None

    def _compute_presence(self, video_id, anno_ids, what) -> tuple[bool, ...]:
        # Areas come straight from the RLE counts: no decoding needed.
        if not anno_ids:
            raise MissingAnnotationError(f"'{what}' has no ground-truth objects")
        per_anno = [self._per_frame(video_id, a) for a in anno_ids]
        n = self.num_frames(video_id)
        return tuple(any(rle_area(p[i], f"anno_id {a} frame {i}") > 0 for a, p in zip(anno_ids, per_anno))
                     for i in range(n))

    # --------------------------------------------------------------------------- videos
    def _video_path(self, video_id: str) -> Path:
        path = self._paths.get(video_id)
        if path is None:
            path = self._paths[video_id] = find_video(self.frames_root, video_id)
        return path

    # -------------------------------------------------------------------------- samples
    def _build_samples(self) -> list[Sample]:
        have_masks = self._masks() is not None
        if not have_masks:
            log.warning("dataset %s: no mask dict; samples carry no ground truth", self.name)
        samples = []
        for vid, info in self._videos.items():
            for exp_id, raw in self._expressions[vid].items():
                sample_id = make_sample_id(self.name, vid, str(exp_id))
                try:
                    exp = normalise_expression(raw, sample_id)
                    presence: tuple[bool, ...] = ()
                    if have_masks and exp["anno_ids"]:
                        presence = self._compute_presence(vid, exp["anno_ids"], sample_id)
                    height, width = self.frame_size(vid)
                except DataError as exc:
                    self._skip(sample_id, exc)
                    continue
                samples.append(Sample(
                    sample_id=sample_id, dataset=self.name, video_id=vid, exp_id=str(exp_id),
                    expression=exp["exp"], obj_ids=exp["obj_ids"], anno_ids=exp["anno_ids"],
                    num_frames=len(info.frames), height=height, width=width,
                    type_id=exp["type_id"], presence=presence))
        return samples
