"""Point-prompt pre-training of the tiny SAM2: click sampling and the CLI's argument checks."""

import numpy as np
import pytest

from segmentation.pretrain_promptable import main, sample_clicks


def test_clicks_land_inside_their_masks_in_sam2_input_pixels():
    rng = np.random.default_rng(0)
    a = np.zeros((40, 80), bool)
    a[10:20, 60:70] = True  # right half, upper middle
    b = np.zeros((40, 80), bool)
    b[35, 3] = True  # one pixel
    for _ in range(20):
        clicks = sample_clicks([a, b], 256, rng)
        assert clicks.shape == (2, 2) and clicks.dtype == np.float32
        x, y = clicks[0]
        assert a[int(y * 40 / 256), int(x * 80 / 256)]  # scaled back, the click is on the object
        assert tuple(clicks[1]) == pytest.approx((3 * 256 / 80, 35 * 256 / 40))


@pytest.mark.parametrize("args", [["--steps", "0"], ["--lr", "2"], ["--batch", "0"]])
def test_cli_refuses_bad_arguments(tmp_path, capsys, args):
    assert main(["--out", str(tmp_path / "x.pt"), *args]) == 2
    assert "must be" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_cli_names_a_bad_override(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x.pt"), "model.sam2_image_size=1000"]) == 2
    assert "multiple of 16" in capsys.readouterr().err
