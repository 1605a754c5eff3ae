"""Fuzzing the dataset readers: mutated annotation files give DataError or skipped samples only."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs import DatasetSpec
from env.datasets import load_dataset
from env.errors import DataError

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _paths(obj, prefix=()):
    """Every (path) inside a JSON document, for targeted mutation."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value):
    if not path:
        return value
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from env.synthetic import generate

    return generate(tmp_path_factory.mktemp("fuzz_src"), videos=2, seed=4, frames=6, size=(32, 48))


def _exercise(root):
    """Load the dataset and touch every sample's ground truth and frames."""
    try:
        ds = load_dataset(DatasetSpec(name="fz", format="revos", root=root))
        for s in ds.samples()[:6]:
            for call in (lambda: ds.gt_masks(s, [0, s.num_frames - 1]), lambda: ds.presence(s),
                         lambda: ds.frames(s.video_id, [0])):
                try:
                    call()
                except DataError:
                    pass
    except DataError:
        pass


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_annotations_never_escape_as_other_exceptions(pristine, tmp_path_factory, data):
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(pristine, root, dirs_exist_ok=True)
    name = data.draw(st.sampled_from(["meta_expressions.json", "mask_dict.json"]))
    doc = json.loads((root / name).read_text())
    paths = list(_paths(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        try:
            doc = _set(doc, path, data.draw(JSON_VALUES))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed the container
        paths = list(_paths(doc))
    (root / name).write_text(json.dumps(doc))
    _exercise(root)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_garbage_annotation_files(pristine, tmp_path_factory, raw):
    root = tmp_path_factory.mktemp("fuzzb")
    shutil.copytree(pristine, root, dirs_exist_ok=True)
    (root / "mask_dict.json").write_bytes(raw)
    _exercise(root)


def test_bad_rle_and_wrong_shapes_are_annotation_errors(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path, dirs_exist_ok=True)
    masks = json.loads((tmp_path / "mask_dict.json").read_text())
    key = next(iter(masks))
    frames = masks[key]
    frames[0] = {"size": [32, 48], "counts": "!!!not rle!!!"}
    frames[1] = {"size": [7, 9], "counts": frames[2]["counts"] if frames[2] else "0"}
    (tmp_path / "mask_dict.json").write_text(json.dumps(masks))
    ds = load_dataset(DatasetSpec(name="fz", format="revos", root=tmp_path))
    sample = next(s for s in ds.samples() if key in s.anno_ids)
    for idx in (0, 1):
        with pytest.raises(DataError):
            ds.gt_masks(sample, [idx])
    assert np.asarray(ds.gt_masks(sample, [3])).shape[0] == 1
