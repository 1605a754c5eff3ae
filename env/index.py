"""A Parquet index of samples, so a run addresses millions of samples by id without the JSON.

One row per sample: id, dataset, video, expression id and text, object and annotation ids, frame
count, frame size, type and the per-frame presence vector. Rows are sorted by `sample_id`, so a
lookup is a binary search over the memory-mapped id column; `row(i)` gives the i-th sample for
sequential or strided sampling. The file's key-value metadata records the dataset fingerprint it
was built from, so a stale index is detected instead of silently used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from env.errors import DatasetFormatError, UnknownSampleError
from env.types import Sample

SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("dataset", pa.string()),
    ("video_id", pa.string()),
    ("exp_id", pa.string()),
    ("expression", pa.string()),
    ("obj_ids", pa.list_(pa.int64())),
    ("anno_ids", pa.list_(pa.string())),
    ("num_frames", pa.int32()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("type_id", pa.int16()),
    ("presence", pa.list_(pa.bool_())),
])
META_KEY = b"videoseg_index"
FORMAT_VERSION = 1


def write_index(samples: Iterable[Sample], path: str | Path, info: dict | None = None) -> Path:
    """Write samples (any order) to a Parquet index at `path`, atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted((s.to_dict() for s in samples), key=lambda d: d["sample_id"])
    ids = [r["sample_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise DatasetFormatError("duplicate sample ids; an index needs unique ids")
    columns = {name: [r[name] for r in rows] for name in SCHEMA.names}
    for key in ("obj_ids", "anno_ids", "presence"):
        columns[key] = [list(v) for v in columns[key]]
    meta = {"version": FORMAT_VERSION, "count": len(rows), **(info or {})}
    table = pa.table(columns, schema=SCHEMA.with_metadata({META_KEY: json.dumps(meta).encode()}))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, row_group_size=64 * 1024)
    os.replace(tmp, path)
    return path


class SampleIndex:
    """Read side of the index: lookup by id, by position, or iterate in batches."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._table = pq.read_table(self.path, memory_map=True)
        except (OSError, pa.ArrowException) as exc:
            raise DatasetFormatError(f"sample index {self.path} is unreadable ({exc})") from exc
        if self._table.schema.remove_metadata() != SCHEMA:
            raise DatasetFormatError(f"sample index {self.path} has an unexpected schema")
        raw = (self._table.schema.metadata or {}).get(META_KEY)
        self.info: dict = json.loads(raw) if raw else {}
        self._ids = self._table.column("sample_id").combine_chunks()

    def __len__(self) -> int:
        return self._table.num_rows

    def _position(self, sample_id: str) -> int:
        lo, hi = 0, len(self._ids)
        while lo < hi:  # rows are sorted by id (write_index guarantees it)
            mid = (lo + hi) // 2
            if self._ids[mid].as_py() < sample_id:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self._ids) and self._ids[lo].as_py() == sample_id:
            return lo
        raise UnknownSampleError(f"sample '{sample_id}' is not in the index {self.path}")

    def __contains__(self, sample_id: str) -> bool:
        try:
            self._position(sample_id)
            return True
        except UnknownSampleError:
            return False

    def get(self, sample_id: str) -> Sample:
        return self.row(self._position(sample_id))

    def row(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise UnknownSampleError(f"row {i} is outside the index (0..{len(self) - 1})")
        return Sample.from_dict(self._table.slice(i, 1).to_pylist()[0])

    def ids(self, start: int = 0, stop: int | None = None) -> list[str]:
        return self._ids[start:stop].to_pylist()

    def iter_samples(self, batch_size: int = 4096) -> Iterator[Sample]:
        for batch in self._table.to_batches(max_chunksize=batch_size):
            for d in batch.to_pylist():
                yield Sample.from_dict(d)
