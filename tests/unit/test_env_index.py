"""The Parquet sample index: same samples as the reader, lookup by id without JSON, staleness."""

import json

import pyarrow.parquet as pq
import pytest

from configs.schema import DatasetSpec
from env.datasets import load_dataset
from env.errors import DatasetFormatError, UnknownSampleError
from env.index import SampleIndex, write_index
from env.types import Sample


def test_index_round_trips_samples(tmp_path, synthetic_dir):
    ds = load_dataset(DatasetSpec(name="syn", format="revos", root=synthetic_dir))
    samples = ds.samples()
    path = write_index(reversed(samples), tmp_path / "i.parquet", {"note": "x"})
    index = SampleIndex(path)
    assert len(index) == len(samples) and index.info["note"] == "x"
    assert index.ids() == sorted(s.sample_id for s in samples)
    for s in samples:
        assert index.get(s.sample_id) == s  # every field, presence vector included
        assert s.sample_id in index
    assert list(index.iter_samples(batch_size=7)) == sorted(samples, key=lambda s: s.sample_id)
    assert index.row(0).sample_id == index.ids(0, 1)[0]
    with pytest.raises(UnknownSampleError):
        index.get("syn/none/0")
    with pytest.raises(UnknownSampleError):
        index.row(len(index))
    assert "syn/zzz/0" not in index and "a" not in index


def test_index_rejects_duplicates_and_foreign_files(tmp_path):
    s = Sample("d/v/0", "d", "v", "0", "x", (1,), ("1",), 3, 4, 5, presence=(True, False, True))
    with pytest.raises(DatasetFormatError, match="duplicate"):
        write_index([s, s], tmp_path / "dup.parquet")
    pq.write_table(pq.read_table(write_index([s], tmp_path / "ok.parquet")).drop_columns(["presence"]),
                   tmp_path / "foreign.parquet")
    with pytest.raises(DatasetFormatError, match="unexpected schema"):
        SampleIndex(tmp_path / "foreign.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetFormatError, match="unreadable"):
        SampleIndex(tmp_path / "junk.parquet")


def test_load_dataset_serves_samples_from_the_index(tmp_path, synthetic_dir, monkeypatch):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic_dir, root, symlinks=True)
    spec = DatasetSpec(name="syn", format="revos", root=root)
    first = load_dataset(spec, index_dir=tmp_path / "idx")
    files = list((tmp_path / "idx").glob("syn-*.parquet"))
    assert len(files) == 1
    want = {s.sample_id: s for s in load_dataset(spec).samples()}
    # A second open must not build samples from the annotation JSON at all.
    from env.datasets.mask_dict import MaskDictDataset

    monkeypatch.setattr(MaskDictDataset, "_build_samples", lambda self: pytest.fail("read the JSON"))
    second = load_dataset(spec, index_dir=tmp_path / "idx")
    assert {s.sample_id: s for s in second.samples()} == want
    some = sorted(want)[3]
    assert second.sample(some) == want[some] and len(second) == len(want)
    assert first.fingerprint == second.fingerprint
    # Changing the annotations changes the fingerprint: a new index is built, the old one is not used.
    monkeypatch.undo()
    meta = json.loads((root / "meta_expressions.json").read_text())
    vid = sorted(meta["videos"])[0]
    meta["videos"][vid]["expressions"]["extra"] = dict(meta["videos"][vid]["expressions"]["0"], exp="new one")
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    third = load_dataset(spec, index_dir=tmp_path / "idx")
    assert third.fingerprint != first.fingerprint
    assert third.sample(f"syn/{vid}/extra").expression == "new one"
    assert len(list((tmp_path / "idx").glob("syn-*.parquet"))) == 2
