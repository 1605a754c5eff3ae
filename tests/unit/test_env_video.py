"""Video decoding (decord, frame folders), random access, pixel budgets, and decode errors."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from env.errors import CorruptVideoError, FrameIndexError, MissingFrameError, MissingVideoError
from env.video import DecordVideo, FrameFolderVideo, budget_shape, find_video, open_video, resize_to_budget


@settings(max_examples=300, deadline=None)
@given(h=st.integers(1, 4000), w=st.integers(1, 4000), pixels=st.integers(1, 2_000_000))
def test_budget_shape_only_shrinks_and_keeps_aspect(h, w, pixels):
    nh, nw = budget_shape(h, w, pixels)
    assert 1 <= nh <= h and 1 <= nw <= w
    if h * w <= pixels:
        assert (nh, nw) == (h, w)
    else:
        assert nh * nw <= pixels
        # Nearly uses the budget (within one row/column) and keeps the aspect to rounding error.
        scale = math.sqrt(pixels / (h * w))
        if h * scale >= 1 and w * scale >= 1:
            assert nh >= int(h * scale) - 1 and nw >= int(w * scale) - 1
        if min(nh, nw) >= 20:
            assert abs(nh / nw - h / w) / (h / w) < 0.1


def test_budget_zero_means_original_and_small_images_are_untouched():
    img = np.zeros((30, 40, 3), np.uint8)
    assert resize_to_budget(img, 0) is img
    assert resize_to_budget(img, 30 * 40) is img
    assert budget_shape(480, 854, 32 * 28 * 28) == (118, 211)
    out = resize_to_budget(np.zeros((480, 854, 3), np.uint8), 32 * 28 * 28)
    assert out.shape == (118, 211, 3) and out.dtype == np.uint8


def test_bedroom_random_access_matches_sequential_decode(bedroom_mp4):
    import decord

    video = open_video(bedroom_mp4)
    assert isinstance(video, DecordVideo) and len(video) == 200
    wanted = [150, 3, 77, 3, 199, 0]
    got = video.read(wanted)
    reader = decord.VideoReader(str(bedroom_mp4), ctx=decord.cpu(0), num_threads=1)
    sequential = {}
    for i in range(200):
        frame = reader.next().asnumpy()
        if i in wanted:
            sequential[i] = frame
    for i, frame in zip(wanted, got):
        assert frame.shape == (540, 960, 3) and frame.dtype == np.uint8
        assert np.array_equal(frame, sequential[i]), f"frame {i} differs from the sequential decode"
    small = resize_to_budget(got[0], 128 * 28 * 28)
    assert small.shape[0] * small.shape[1] <= 128 * 28 * 28
    assert abs(small.shape[1] / small.shape[0] - 960 / 540) < 0.02


def test_davis_frame_folder_reads_rgb(davis16_dir):
    folder = davis16_dir / "JPEGImages" / "480p" / "dog"
    video = open_video(folder)
    assert isinstance(video, FrameFolderVideo) and len(video) == 60
    frames = video.read([59, 0])
    ref = np.asarray(Image.open(folder / "00059.jpg").convert("RGB"))
    assert frames[0].shape == (480, 854, 3)
    # OpenCV and PIL may use different IDCTs; they agree to about one grey level.
    assert np.abs(frames[0].astype(int) - ref.astype(int)).mean() < 1.0
    assert frames[0][..., 0].mean() != pytest.approx(frames[0][..., 2].mean(), abs=0.5)  # RGB, not grey


def test_video_errors_are_clear(tmp_path, bedroom_mp4):
    with pytest.raises(MissingVideoError, match="does not exist"):
        open_video(tmp_path / "nope.mp4")
    with pytest.raises(MissingVideoError, match="not found"):
        find_video(tmp_path, "nope")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(1).bytes(3000))
    with pytest.raises(CorruptVideoError, match="bad.mp4"):
        open_video(bad)
    with pytest.raises(FrameIndexError, match="out of range"):
        open_video(bedroom_mp4).read([200])
    with pytest.raises(FrameIndexError, match="not an integer"):
        open_video(bedroom_mp4).read([1.5])
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i * 50, np.uint8)).save(folder / f"{i:05d}.jpg")
    (folder / "00003.jpg").write_bytes(b"garbage")
    video = FrameFolderVideo(folder, ["00000", "00001", "00002", "00003", "00004"])
    assert video.read([2])[0].shape == (8, 8, 3)
    with pytest.raises(MissingFrameError, match="no image file"):
        video.read([4])
    with pytest.raises(MissingFrameError, match="not a readable image"):
        video.read([3])
    with pytest.raises(FrameIndexError):
        video.read([-1])
