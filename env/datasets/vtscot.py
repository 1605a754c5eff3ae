"""The 'vtscot' dataset format: cold-start trajectories plus the frames (and masks) they show.

    ROOT/vtscot.jsonl        records as defined in env/vtscot.py (meta_file overrides the name)
    ROOT/JPEGImages/<video>/ frame folders (or <video>.mp4)
    ROOT/mask_dict.json      optional: ground truth by anno_id, as in the ReVOS layout

Each record becomes one sample `<name>/<video>/<exp_id>`; `record(sample_id)` returns the full
trajectory. (video, exp_id) must be unique in a file: give several trajectories of one
expression distinct exp_ids.
"""

from __future__ import annotations

from pathlib import Path

from env.datasets.base import fingerprint_of, make_sample_id
from env.datasets.mask_dict import MaskDictDataset
from env.errors import UnknownSampleError, VTSCoTFormatError
from env.vtscot import VTSCoTRecord, read_vtscot


class VTSCoTDataset(MaskDictDataset):
    format = "vtscot"

    def __init__(self, name: str, root: Path, records: list[VTSCoTRecord], mask_dict_path: Path | None,
                 fingerprint: str):
        videos: dict[str, dict] = {}
        self.records: dict[str, VTSCoTRecord] = {}
        for r in records:
            video = videos.setdefault(r.video, {"frames": r.frames, "height": r.height, "width": r.width,
                                                "expressions": {}})
            if video["frames"] != r.frames:
                raise VTSCoTFormatError(f"records of video '{r.video}' disagree on its frame list")
            if r.exp_id in video["expressions"]:
                raise VTSCoTFormatError(f"two records for video '{r.video}' share exp_id '{r.exp_id}'")
            video["expressions"][r.exp_id] = {"exp": r.expression, "obj_id": r.obj_ids,
                                              "anno_id": r.anno_ids, "type_id": r.type_id}
            self.records[make_sample_id(name, r.video, r.exp_id)] = r
        super().__init__(name, root, {"videos": videos}, mask_dict_path, fingerprint, format="vtscot")

    def record(self, sample_id: str) -> VTSCoTRecord:
        try:
            return self.records[sample_id]
        except KeyError:
            raise UnknownSampleError(f"dataset '{self.name}' has no trajectory '{sample_id}'") from None


def open_vtscot_dataset(name: str, root: Path, meta_file: str | None = None) -> VTSCoTDataset:
    path = root / (meta_file or "vtscot.jsonl")
    mask_path = root / "mask_dict.json"
    records = list(read_vtscot(path))
    return VTSCoTDataset(name, root, records, mask_path if mask_path.is_file() else None,
                         fingerprint_of("vtscot", root, [path, mask_path]))
