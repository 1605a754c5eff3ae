"""Dataset readers return pixel-exact ground truth, right presence vectors, and clear errors."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from configs.schema import DatasetSpec
from env.datasets import load_dataset, synthetic_key, synthetic_root
from env.errors import (
    AnnotationError, CorruptVideoError, DatasetFormatError, FrameIndexError, MissingAnnotationError,
    MissingFrameError, UnknownSampleError,
)
from env.masks import decode_rle, encode_rle, rle_area
from env.synthetic import render_video
from env.types import Sample


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


# ------------------------------------------------------------------------------ RLE
@settings(max_examples=150, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_rle_round_trip_is_exact(mask):
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == list(mask.shape)
    assert np.array_equal(decode_rle(rle, mask.shape), mask)
    assert rle_area(rle) == int(mask.sum())


def test_rle_errors():
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    rle = encode_rle(mask)
    assert not decode_rle(None, (5, 7)).any()
    with pytest.raises(AnnotationError, match="differs from the frame size"):
        decode_rle(rle, (7, 5))
    with pytest.raises(AnnotationError, match="COCO RLE"):
        decode_rle({"counts": "abc"}, (5, 7))
    with pytest.raises(AnnotationError, match="must be a string"):
        decode_rle({"size": [5, 7], "counts": 3}, (5, 7))


# ------------------------------------------------------------------------- synthetic
def test_synthetic_format_generates_once_and_reads_pixel_exact(tmp_path, monkeypatch):
    spec = DatasetSpec(name="syn", format="synthetic", videos=2, seed=3, frames_per_video=10,
                       image_size=(48, 64))
    ds = load_dataset(spec, cache_dir=tmp_path)
    samples = ds.samples()
    assert samples and all(s.sample_id == f"syn/{s.video_id}/{s.exp_id}" for s in samples)
    for s in samples:
        v = int(s.video_id.rsplit("_", 1)[1])
        _, tracks = render_video(3, v, 10, (48, 64))
        want = np.zeros((10, 48, 64), bool)
        for t in tracks:
            if t.obj_id in s.obj_ids:
                want |= np.stack(t.masks).astype(bool)
        assert np.array_equal(ds.gt_masks(s, list(range(10))), want), s.sample_id
        assert ds.presence(s) == tuple(bool(m.any()) for m in want)
        assert (s.num_frames, s.height, s.width) == (10, 48, 64)
    # The same spec reuses the cached data: generating again would fail here.
    monkeypatch.setattr("env.synthetic.generate", lambda *a, **k: pytest.fail("regenerated"))
    assert synthetic_root(spec, tmp_path) == ds.root
    again = load_dataset(spec, cache_dir=tmp_path)
    assert [s.sample_id for s in again.samples()] == [s.sample_id for s in samples]
    # Every generator parameter is part of the cache key.
    keys = {synthetic_key(spec.model_copy(update=u)) for u in
            ({}, {"seed": 4}, {"videos": 3}, {"frames_per_video": 11}, {"image_size": (64, 48)})}
    assert len(keys) == 5 and ds.root.name == synthetic_key(spec)


def test_synthetic_frames_and_mp4_variant(tmp_path, synthetic_dir):
    from env.synthetic import generate

    ds = load_dataset(DatasetSpec(name="syn", format="revos", root=synthetic_dir))
    vid = sorted(ds.video_ids())[0]
    frame = ds.frames(vid, [4])[0]
    assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8
    assert np.abs(frame.astype(int) - _rgb(synthetic_dir / "JPEGImages" / vid / "00004.jpg")).mean() < 1.0
    # Same data written as mp4: frames decode through decord, masks are identical.
    mp4_root = generate(tmp_path / "mp4", videos=1, seed=7, frames=16, size=(64, 96), mp4=True)
    mp4 = load_dataset(DatasetSpec(name="m", format="revos", root=mp4_root))
    vid0 = sorted(mp4.video_ids())[0]
    assert (mp4_root / "JPEGImages" / f"{vid0}.mp4").is_file()
    decoded = mp4.frames(vid0, [15, 0, 7])
    assert [f.shape for f in decoded] == [(64, 96, 3)] * 3
    jpeg = ds.frames(vid0, [15, 0, 7])
    assert all(np.abs(a.astype(int) - b.astype(int)).mean() < 12 for a, b in zip(decoded, jpeg))
    s_mp4, s_jpg = mp4.samples()[0], ds.sample(mp4.samples()[0].sample_id.replace("m/", "syn/", 1))
    assert np.array_equal(mp4.gt_masks(s_mp4, [3, 9]), ds.gt_masks(s_jpg, [3, 9]))


def test_foreground_pixels_of_the_revos_layout(tmp_path, synthetic_dir):
    root = tmp_path / "revos"
    shutil.copytree(synthetic_dir, root, symlinks=True)
    ds = load_dataset(DatasetSpec(name="syn", format="revos", root=root))
    vid = sorted(ds.video_ids())[1]
    _, tracks = render_video(7, int(vid.rsplit("_", 1)[1]), 16, (64, 96))
    union = np.any(np.stack([np.stack(t.masks).astype(bool) for t in tracks]), axis=0)
    assert ds.foreground_pixels(vid).tolist() == union.sum(axis=(1, 2)).tolist()
    assert ds.foreground_pixels("not-a-video") is None
    fg = json.loads((root / "mask_dict_foreground.json").read_text())
    fg[vid]["masks_rle"] = fg[vid]["masks_rle"][:3]
    (root / "mask_dict_foreground.json").write_text(json.dumps(fg))
    with pytest.raises(AnnotationError, match="3 masks_rle entries for 16 frames"):
        load_dataset(DatasetSpec(name="syn", format="revos", root=root)).foreground_pixels(vid)
    (root / "mask_dict_foreground.json").unlink()  # MeViS / Ref-SAV ship none: R is not scored
    assert load_dataset(DatasetSpec(name="syn", format="revos", root=root)).foreground_pixels(vid) is None


# ---------------------------------------------------------------------------- DAVIS
def _davis_png(davis16_dir, seq, t):
    return np.array(Image.open(davis16_dir / "Annotations/480p" / seq / f"{t:05d}.png")) != 0


def test_davis_converted_layout_is_pixel_exact(davis16_dir, davis_revos_dir):
    ds = load_dataset(DatasetSpec(name="davis", format="revos", root=davis_revos_dir))
    assert len(ds.samples()) == 10
    s = ds.sample("davis/camel/0")
    assert (s.num_frames, s.height, s.width, s.type_id) == (90, 480, 854, 0)
    got = ds.gt_masks(s, [0, 45, 89])
    for row, t in enumerate((0, 45, 89)):
        assert np.array_equal(got[row], _davis_png(davis16_dir, "camel", t))
    for seq in ("blackswan", "libby"):
        n = ds.num_frames(seq)
        assert ds.presence(ds.sample(f"davis/{seq}/1")) == tuple(
            bool(_davis_png(davis16_dir, seq, t).any()) for t in range(n))
    frame = ds.frames("camel", [45])[0]
    assert np.abs(frame.astype(int) - _rgb(davis16_dir / "JPEGImages/480p/camel/00045.jpg")).mean() < 1.0
    assert ds.frame_size("camel") == (480, 854)


def test_davis_original_png_layout_matches(davis16_dir, davis_revos_dir):
    png = load_dataset(DatasetSpec(name="davis", format="davis", root=davis16_dir))
    rle = load_dataset(DatasetSpec(name="davis", format="revos", root=davis_revos_dir))
    assert {s.sample_id for s in png.samples()} == {s.sample_id for s in rle.samples()}
    for s in png.samples():
        assert s.obj_ids == (1,) and s.anno_ids == ("1",)
        assert s.presence == rle.sample(s.sample_id).presence
    s = png.sample("davis/libby/1")
    assert s.type_id == 1 and "pet" in s.expression
    idx = [0, 10, 48]
    want = np.stack([_davis_png(davis16_dir, "libby", t) for t in idx])
    assert np.array_equal(png.gt_masks(s, idx), want)
    assert np.array_equal(rle.gt_masks(rle.sample(s.sample_id), idx), want)


def _palette_png(path, label):
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * (256 * 3 - 9))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _two_box_labels(n=3, h=24, w=32):
    labels = []
    for t in range(n):
        lab = np.zeros((h, w), np.uint8)
        lab[4:12, 2 + t:10 + t] = 1
        if t != 1:  # object 2 is absent on the middle annotated frame
            lab[14:22, 20:30] = 2
        labels.append(lab)
    return labels


def test_refytvos_layout(tmp_path):
    root = tmp_path / "ref-youtube-vos"
    stems = ["00000", "00005", "00010"]
    labels = _two_box_labels()
    for stem, lab in zip(stems, labels):
        _palette_png(root / "train/Annotations/vidA" / f"{stem}.png", lab)
        rgb = np.stack([lab * 100, lab * 50, np.full_like(lab, 30)], axis=-1).astype(np.uint8)
        (root / "train/JPEGImages/vidA").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / "train/JPEGImages/vidA" / f"{stem}.jpg", quality=98)
    meta = {"videos": {"vidA": {"frames": stems, "expressions": {
        "0": {"exp": "the box on the left", "obj_id": "1"},
        "1": {"exp": "the box that blinks", "obj_id": "2"}}}}}
    (root / "meta_expressions/train").mkdir(parents=True)
    (root / "meta_expressions/train/meta_expressions.json").write_text(json.dumps(meta))
    ds = load_dataset(DatasetSpec(name="ytvos", format="refytvos", root=root))
    left, blink = ds.sample("ytvos/vidA/0"), ds.sample("ytvos/vidA/1")
    assert left.obj_ids == (1,) and blink.anno_ids == ("2",)
    assert (left.num_frames, left.height, left.width) == (3, 24, 32)
    assert np.array_equal(ds.gt_masks(left, [0, 1, 2]), np.stack([lab == 1 for lab in labels]))
    assert np.array_equal(ds.gt_masks(blink, [2, 1]), np.stack([labels[2] == 2, labels[1] == 2]))
    assert ds.presence(blink) == (True, False, True) and ds.presence(left) == (True, True, True)
    assert ds.frames("vidA", [1])[0].shape == (24, 32, 3)  # index 1 is the file 00005.jpg
    assert ds.foreground_pixels("vidA") is None  # palette layouts ship no ReVOS foreground
    # A missing annotation PNG is a clear error, never a silent empty mask.
    (root / "train/Annotations/vidA/00010.png").unlink()
    fresh = load_dataset(DatasetSpec(name="ytvos", format="refytvos", root=root))
    with pytest.raises(MissingAnnotationError, match="00010.png"):
        fresh.gt_masks(left, [2])
    assert fresh.samples() == [] and fresh.skipped


def test_davis2017_style_multi_object_union(tmp_path):
    labels = _two_box_labels(n=4)
    for t, lab in enumerate(labels):
        _palette_png(tmp_path / "Annotations/480p/seq" / f"{t:05d}.png", lab)
        (tmp_path / "JPEGImages/480p/seq").mkdir(parents=True, exist_ok=True)
        jpg = tmp_path / "JPEGImages/480p/seq" / f"{t:05d}.jpg"
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(jpg)
    (tmp_path / "expressions.json").write_text(json.dumps({"videos": {"seq": [
        {"exp": "both boxes", "type_id": 0, "obj_id": [1, 2]},
        {"exp": "the right box", "type_id": 1, "obj_id": [2]},
        {"exp": "everything", "type_id": 0}]}}))
    ds = load_dataset(DatasetSpec(name="d17", format="davis", root=tmp_path))
    both, right, every = (ds.sample(f"d17/seq/{i}") for i in range(3))
    assert np.array_equal(ds.gt_masks(both, [0, 1, 3]), np.stack([labels[t] > 0 for t in (0, 1, 3)]))
    assert np.array_equal(ds.gt_masks(right, [1, 2]), np.stack([labels[1] == 2, labels[2] == 2]))
    assert every.obj_ids == (1, 2) and right.type_id == 1
    assert ds.presence(right) == (True, False, True, True)


# ----------------------------------------------------------------- variants and errors
def test_mevis_style_without_size_and_without_masks(tmp_path, synthetic_dir):
    root = tmp_path / "mevis"
    shutil.copytree(synthetic_dir, root, symlinks=True)
    meta = json.loads((root / "meta_expressions.json").read_text())
    for v in meta["videos"].values():
        v.pop("height"), v.pop("width")
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    ds = load_dataset(DatasetSpec(name="mevis", format="mevis", root=root))
    s = ds.samples()[0]
    assert (s.height, s.width) == (64, 96)  # taken from the RLE size
    (root / "mask_dict.json").unlink()
    valid = load_dataset(DatasetSpec(name="mevis", format="mevis", root=root))
    s = valid.sample(s.sample_id)
    assert s.presence == () and (s.height, s.width) == (64, 96)  # now from frame 0
    with pytest.raises(MissingAnnotationError, match="no mask_dict.json"):
        valid.gt_masks(s, [0])


def test_faulty_dataset_errors(env_faulty_dir):
    f = env_faulty_dir
    ds = load_dataset(DatasetSpec(name="bad", format="revos", root=f.root))
    ids = {s.sample_id for s in ds.samples()}
    missing_id = f"bad/{f.good_video}/{f.missing_anno_exp}"
    assert missing_id not in ids and any(sid == missing_id for sid, _ in ds.skipped)
    assert f"bad/{f.corrupt_video}/0" in ids  # masks are fine; only decoding fails
    ghost = Sample(missing_id, "bad", f.good_video, f.missing_anno_exp, "the ghost", (9,), ("987654",),
                   12, 48, 64)
    with pytest.raises(MissingAnnotationError, match="987654"):
        ds.gt_masks(ghost, [0])
    with pytest.raises(CorruptVideoError, match=f.corrupt_video):
        ds.frames(f.corrupt_video, [0])
    with pytest.raises(MissingFrameError, match="no image file"):
        ds.frames(f.holey_video, [f.missing_frame])
    with pytest.raises(MissingFrameError, match="not a readable image"):
        ds.frames(f.holey_video, [f.garbage_frame])
    assert ds.frames(f.holey_video, [4])[0].shape == (48, 64, 3)
    with pytest.raises(FrameIndexError, match=r"out of range \[0, 12\)"):
        ds.frames(f.good_video, [12])
    with pytest.raises(FrameIndexError):
        ds.gt_masks(ds.samples()[0], [-1])
    with pytest.raises(UnknownSampleError, match="no video 'nope'"):
        ds.frames("nope", [0])
    with pytest.raises(UnknownSampleError, match="no sample"):
        ds.sample("bad/nope/0")


def test_bad_roots_and_annotation_files(tmp_path, synthetic_dir):
    with pytest.raises(DatasetFormatError, match="not a directory"):
        load_dataset(DatasetSpec(name="x", format="revos", root=tmp_path / "nope"))
    with pytest.raises(DatasetFormatError, match="no meta file"):
        load_dataset(DatasetSpec(name="x", format="revos", root=tmp_path))
    (tmp_path / "meta_expressions.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        load_dataset(DatasetSpec(name="x", format="revos", root=tmp_path))
    (tmp_path / "meta_expressions.json").write_text(json.dumps({"vids": {}}))
    with pytest.raises(DatasetFormatError, match="no 'videos'"):
        load_dataset(DatasetSpec(name="x", format="revos", root=tmp_path))
    # A mask_dict entry with the wrong number of frames: that expression is left out, with a reason.
    root = tmp_path / "short"
    shutil.copytree(synthetic_dir, root, symlinks=True)
    masks = json.loads((root / "mask_dict.json").read_text())
    key = sorted(masks)[0]
    masks[key] = masks[key][:-1]
    (root / "mask_dict.json").write_text(json.dumps(masks))
    ds = load_dataset(DatasetSpec(name="short", format="revos", root=root))
    ds.samples()
    assert any("expected 16 per-frame entries" in reason for _, reason in ds.skipped)
