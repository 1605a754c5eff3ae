"""The run directory: resolved config, metrics, checkpoints, and finding the one to resume from.

    <output_dir>/config.yaml           the resolved config of the first start (later starts must match)
    <output_dir>/metrics.jsonl         one JSON object per step
    <output_dir>/ledger.sqlite         the sample ledger (embedded store)
    <output_dir>/checkpoints/step_00000042/
        driver.json                    step, policy version, data cursor, driver RNG, ledger position
        learner/                       DeepSpeed checkpoint (model, optimizer, scheduler, RNG per rank)
        policy/                        the policy as an HF directory + heads (loads in vLLM)
        COMPLETE                       written last: a checkpoint without it is ignored
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from configs import Config, dump_config

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


class RunDir:
    def __init__(self, cfg: Config):
        self.root = Path(cfg.run.output_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.checkpoints = self.root / "checkpoints"
        self.checkpoints.mkdir(exist_ok=True)
        self.metrics_path = self.root / "metrics.jsonl"
        self.keep = cfg.run.keep_checkpoints

    def write_config(self, cfg: Config, resuming: bool) -> None:
        text = dump_config(cfg)
        path = self.root / "config.yaml"
        if resuming and path.exists():
            (self.root / f"config.resume-{int(time.time())}.yaml").write_text(text)
        else:
            path.write_text(text)

    def write_datasets(self, counts: dict[str, int]) -> None:
        """Which datasets the run trains on and how many samples each contributed."""
        (self.root / "datasets.json").write_text(json.dumps(counts, indent=1))

    def write_status(self, step: int, phase: str, **extra) -> None:
        """Where the run is now (step, phase), rewritten atomically at every phase change."""
        tmp = self.root / "status.json.tmp"
        tmp.write_text(json.dumps({"step": step, "phase": phase, "time": time.time(), "pid": os.getpid(), **extra}))
        os.replace(tmp, self.root / "status.json")

    def write_actors(self, pids: dict) -> None:
        (self.root / "actors.json").write_text(json.dumps(pids, indent=1))

    def step_dir(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}"

    def latest(self) -> Path | None:
        done = sorted(p for p in self.checkpoints.glob("step_*") if (p / COMPLETE).exists())
        return done[-1] if done else None

    def begin_checkpoint(self, step: int) -> Path:
        path = self.step_dir(step)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def finish_checkpoint(self, path: Path, driver_state: dict) -> None:
        (path / "driver.json").write_text(json.dumps(driver_state, indent=1))
        marker = path / COMPLETE
        marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self._prune()

    def _prune(self) -> None:
        done = sorted(p for p in self.checkpoints.glob("step_*") if (p / COMPLETE).exists())
        for old in done[: max(0, len(done) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)
        for partial in self.checkpoints.glob("step_*"):
            if not (partial / COMPLETE).exists() and partial not in done:
                # an interrupted checkpoint write; the one before it stays the resume point
                if time.time() - partial.stat().st_mtime > 60:
                    shutil.rmtree(partial, ignore_errors=True)

    @staticmethod
    def driver_state(path: Path) -> dict:
        return json.loads((path / "driver.json").read_text())


class MetricsLog:
    """Appends one JSON line per step (flushed, so a killed run keeps every finished step)."""

    def __init__(self, path: Path, total_steps: int, truncate_after: int | None = None):
        self.path = path
        self.total = total_steps
        if truncate_after is not None and path.exists():
            # After a resume, lines from steps past the checkpoint belong to the abandoned branch.
            kept = [ln for ln in path.read_text().splitlines() if ln.strip()
                    and json.loads(ln).get("step", -1) <= truncate_after]
            path.write_text("".join(ln + "\n" for ln in kept))
        self.f = open(path, "a")

    def log(self, record: dict) -> None:
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())
        self._progress(record)

    def _progress(self, r: dict) -> None:
        step = r.get("step", 0) + 1
        width = 24
        done = int(width * step / max(self.total, 1))
        bar = "#" * done + "-" * (width - done)
        t = r.get("time", {})
        msg = (f"[{bar}] step {step}/{self.total} reward {r.get('reward/mean', 0):+.3f} "
               f"J_kf {r.get('iou/keyframe_last', 0):.3f} turns {r.get('episode/turns', 0):.2f} "
               f"kl {r.get('train/kl', 0):.4f} | rollout {t.get('rollout', 0):.1f}s score {t.get('score', 0):.1f}s "
               f"reward {t.get('reward', 0):.1f}s train {t.get('train', 0):.1f}s sync {t.get('sync', 0):.1f}s")
        print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.f.close()
