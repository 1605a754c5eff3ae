"""Where a CUDA step makes the host wait: counts synchronizing calls by their Python call site.

A learner step that issues thousands of host syncs (`.item()`, `.tolist()`, device-to-host copies,
boolean indexing, `torch.tensor(list, device=...)`) drains the GPU's queue at each one; the
profiler shows the total (`cudaStreamSynchronize`) but not who asked. This runs one step under
`torch.cuda.set_sync_debug_mode("warn")`, catches each warning and attributes it to the innermost
frames outside torch itself.

    sites = count_sync_sites(lambda: core.train(items, totals))
"""

from __future__ import annotations

import traceback
import warnings
from collections import Counter

import torch

_SKIP = ("/torch/", "/contextlib.py", "/warnings.py")


def _where(depth: int) -> str:
    frames = [f for f in traceback.extract_stack()
              if f.filename != __file__ and not any(s in f.filename for s in _SKIP)]
    picked = frames[-depth:]
    return " <- ".join(f"{_short(f.filename)}:{f.lineno} {f.name}" for f in reversed(picked))


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/", "/root/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def count_sync_sites(step, depth: int = 3, top: int = 40) -> dict:
    """Run `step()` once on CUDA with sync debugging; returns the total and the busiest sites."""
    if not torch.cuda.is_available():
        raise RuntimeError("count_sync_sites needs a CUDA device")
    counts: Counter = Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        counts[_where(depth)] += 1

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record  # restored by catch_warnings
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {"total": sum(counts.values()), "sites": [{"count": n, "site": s} for s, n in counts.most_common(top)]}
