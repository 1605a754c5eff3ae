"""benchmarks.sync_sites: host syncs attributed to the caller's code, not to torch internals."""

import pytest
import torch

from benchmarks.sync_sites import _short, _where, count_sync_sites


def _caller_of_where():
    return _where(depth=2)


def test_site_names_the_innermost_frames_outside_torch_innermost_first():
    site = _caller_of_where()
    first, second = site.split(" <- ")
    assert "test_sync_sites.py" in first and first.endswith("_caller_of_where")
    assert second.endswith("test_site_names_the_innermost_frames_outside_torch_innermost_first")


def test_paths_are_shortened_after_site_packages():
    assert _short("/opt/venv/lib/python3.11/site-packages/transformers/x.py") == "transformers/x.py"
    assert _short("relative/file.py") == "relative/file.py"


def test_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the counting test below runs instead")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        count_sync_sites(lambda: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts CUDA host syncs; no CUDA device here")
def test_counts_item_calls_at_their_line():
    x = torch.ones(4, device="cuda")

    def step():
        for _ in range(3):
            x.sum().item()

    report = count_sync_sites(step, depth=1)
    assert report["total"] == 3
    assert report["sites"][0]["count"] == 3 and "step" in report["sites"][0]["site"]
