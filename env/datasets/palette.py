"""Reader of palette-PNG layouts: DAVIS and Ref-YouTube-VOS.

One PNG per annotated frame holds every object: pixel value = object id, 0 = background.

DAVIS (format "davis"), e.g. ../shared/test_data/davis16:
    ROOT/JPEGImages[/480p]/<seq>/<frame>.jpg
    ROOT/Annotations[/480p]/<seq>/<frame>.png
    ROOT/expressions.json   {"videos": {seq: [{"exp", "type_id", optional "obj_id": [ids]}]}}
                            (an expression without obj_id refers to every annotated object)
    DAVIS 2016 marks its single object with 255; it is object 1 here, as in env/convert_davis.py.

Ref-YouTube-VOS (format "refytvos"), METRICS_AND_FORMATS.md section 3.4:
    ROOT/meta_expressions/<split>/meta_expressions.json
        {"videos": {vid: {"frames": [stems], "expressions": {eid: {"exp", "obj_id": "1"}}}}}
    ROOT/<split>/JPEGImages/<vid>/<stem>.jpg,  ROOT/<split>/Annotations/<vid>/<stem>.png
Either reader accepts either expression-file shape.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from env.datasets.base import Dataset, VideoInfo, fingerprint_of, make_sample_id
from env.datasets.mask_dict import normalise_expression, read_json
from env.errors import AnnotationError, DataError, DatasetFormatError, MissingVideoError
from env.masks import read_label_png
from env.types import Sample
from env.video import FRAME_SUFFIXES, check_indices, find_video

log = logging.getLogger(__name__)


def _resolution_dir(base: Path) -> Path:
    """DAVIS nests frames and annotations under a resolution folder such as 480p."""
    res = base / "480p"
    return res if res.is_dir() else base


class PaletteDataset(Dataset):
    """Frames from a JPEG folder tree, ground truth from palette PNGs, expressions from JSON."""

    def __init__(self, name: str, root: Path, fingerprint: str, format: str, meta: dict,
                 frames_root: Path, annotations_root: Path, video_threads: int = 1):
        super().__init__(name, root, fingerprint, video_threads)
        self.format = format
        self.frames_root = frames_root
        self.annotations_root = annotations_root
        self._expressions: dict[str, list[tuple[str, object]]] = {}
        self._labels: dict[str, list[frozenset[int]]] = {}  # per video: object values per frame
        videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(videos, dict):
            raise DatasetFormatError(f"dataset '{name}': the expression file has no 'videos' object")
        for vid, entry in videos.items():
            if isinstance(entry, list):  # DAVIS style: a list of expressions, frames from the folder
                exps, frames = [(str(i), e) for i, e in enumerate(entry)], None
            elif isinstance(entry, dict):
                raw = entry.get("expressions") or {}
                exps = (list(raw.items()) if isinstance(raw, dict)
                        else [(str(i), e) for i, e in enumerate(raw)])
                frames = entry.get("frames")
            else:
                self.skipped.append((make_sample_id(name, vid, "*"), "unreadable video entry"))
                continue
            if not frames:
                frames = self._list_frames(vid)
                if frames is None:
                    continue
            self._videos[vid] = VideoInfo(vid, [str(f) for f in frames])
            self._expressions[vid] = exps

    def _list_frames(self, vid: str) -> list[str] | None:
        folder = self.frames_root / vid
        stems = sorted(f.stem for f in folder.glob("*") if f.suffix.lower() in FRAME_SUFFIXES) \
            if folder.is_dir() else []
        if not stems:
            exc = MissingVideoError(f"no frames for video '{vid}' under {folder}")
            self._skip(make_sample_id(self.name, vid, "*"), exc)
            return None
        return stems

    # ---------------------------------------------------------------------- annotations
    def _png(self, video_id: str, index: int) -> Path:
        return self.annotations_root / video_id / f"{self._video(video_id).frames[index]}.png"

    def _read_label(self, video_id: str, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        label = read_label_png(self._png(video_id, index))
        if size is not None and label.shape != tuple(size):
            raise AnnotationError(f"annotation {self._png(video_id, index)} is {label.shape[0]}x"
                                  f"{label.shape[1]}, the video's frames are {size[0]}x{size[1]}")
        return label

    def _label_values(self, video_id: str) -> list[frozenset[int]]:
        """Object values present on each frame (scanned once per video, then cached)."""
        values = self._labels.get(video_id)
        if values is None:
            size = self.frame_size(video_id)
            values = [frozenset(int(v) for v in np.unique(self._read_label(video_id, i, size)) if v != 0)
                      for i in range(self.num_frames(video_id))]
            self._labels[video_id] = values
        return values

    def _value_of(self, video_id: str, obj: int) -> int:
        seen = frozenset().union(*self._label_values(video_id))
        if obj == 1 and 1 not in seen and seen == {255}:
            return 255  # DAVIS 2016 binary annotation
        return obj

    def _frame_size_from_annotations(self, video_id: str) -> tuple[int, int] | None:
        return tuple(self._read_label(video_id, 0).shape)  # type: ignore[return-value]

    def _object_mask(self, video_id: str, anno_id: str, index: int, size: tuple[int, int]) -> np.ndarray:
        return self._read_label(video_id, index, size) == self._value_of(video_id, int(anno_id))

    def gt_masks(self, sample: Sample, indices) -> np.ndarray:
        # One PNG read per frame for all the sample's objects (the base class reads one per object).
        if len(sample.anno_ids) <= 1:
            return super().gt_masks(sample, indices)
        indices = check_indices(indices, self.num_frames(sample.video_id),
                                f"ground truth of '{sample.sample_id}'")
        size = self.frame_size(sample.video_id)
        values = [self._value_of(sample.video_id, int(a)) for a in sample.anno_ids]
        return np.stack([np.isin(self._read_label(sample.video_id, i, size), values) for i in indices]) \
            if indices else np.zeros((0, *size), dtype=bool)

    def _compute_presence(self, video_id, anno_ids, what) -> tuple[bool, ...]:
        values = {self._value_of(video_id, int(a)) for a in anno_ids}
        return tuple(bool(values & frame) for frame in self._label_values(video_id))

    def _video_path(self, video_id: str) -> Path:
        return find_video(self.frames_root, video_id)

    # -------------------------------------------------------------------------- samples
    def _build_samples(self) -> list[Sample]:
        samples = []
        for vid, exps in self._expressions.items():
            try:
                labels = self._label_values(vid)
                height, width = self.frame_size(vid)
            except DataError as exc:
                self._skip(make_sample_id(self.name, vid, "*"), exc)
                continue
            seen = sorted(frozenset().union(*labels))
            every_object = (1,) if seen == [255] else tuple(seen)
            for exp_id, raw in exps:
                sample_id = make_sample_id(self.name, vid, exp_id)
                try:
                    exp = normalise_expression(raw, sample_id)
                    obj_ids = exp["obj_ids"] or every_object
                    if not obj_ids:
                        raise AnnotationError(f"{sample_id}: no obj_id and no annotated object in the video")
                    presence = self._compute_presence(vid, [str(o) for o in obj_ids], sample_id)
                except DataError as exc:
                    self._skip(sample_id, exc)
                    continue
                if not any(presence):
                    log.warning("dataset %s: %s refers to objects %s that never appear", self.name,
                                sample_id, list(obj_ids))
                samples.append(Sample(
                    sample_id=sample_id, dataset=self.name, video_id=vid, exp_id=exp_id,
                    expression=exp["exp"], obj_ids=tuple(obj_ids), anno_ids=tuple(str(o) for o in obj_ids),
                    num_frames=len(labels), height=height, width=width, type_id=exp["type_id"],
                    presence=presence))
        return samples


def open_davis(name: str, root: Path, meta_file: str | None = None) -> PaletteDataset:
    meta_path = _pick_meta(root, meta_file, ("expressions.json", "meta_expressions.json"))
    fingerprint = fingerprint_of("davis", root, [meta_path])
    frames_root = _resolution_dir(root / "JPEGImages")
    annotations_root = _resolution_dir(root / "Annotations")
    for d in (frames_root, annotations_root):
        if not d.is_dir():
            raise DatasetFormatError(f"DAVIS dataset '{name}': {d} does not exist")
    return PaletteDataset(name, root, fingerprint, "davis", read_json(meta_path, "expression file"),
                          frames_root, annotations_root)


def open_refytvos(name: str, root: Path, meta_file: str | None = None) -> PaletteDataset:
    meta_path = _pick_meta(root, meta_file, ("meta_expressions/train/meta_expressions.json",
                                             "meta_expressions.json"))
    fingerprint = fingerprint_of("refytvos", root, [meta_path])
    # The split is the folder under meta_expressions/ (train, valid, test); frames sit in ROOT/<split>.
    rel = meta_path.relative_to(root) if meta_path.is_relative_to(root) else Path(meta_path.name)
    split = rel.parts[1] if len(rel.parts) >= 3 and rel.parts[0] == "meta_expressions" else ""
    base = root / split if split and (root / split).is_dir() else root
    frames_root, annotations_root = base / "JPEGImages", base / "Annotations"
    for d in (frames_root, annotations_root):
        if not d.is_dir():
            raise DatasetFormatError(f"Ref-YouTube-VOS dataset '{name}': {d} does not exist (only the "
                                     "train split has public annotations)")
    return PaletteDataset(name, root, fingerprint, "refytvos", read_json(meta_path, "meta file"),
                          frames_root, annotations_root)


def _pick_meta(root: Path, meta_file: str | None, candidates: tuple[str, ...]) -> Path:
    if meta_file:
        path = root / meta_file
        if not path.is_file():
            raise DatasetFormatError(f"expression file {path} does not exist")
        return path
    for c in candidates:
        if (root / c).is_file():
            return root / c
    raise DatasetFormatError(f"no expression file under {root}; looked for {', '.join(candidates)}")
