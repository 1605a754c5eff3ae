"""Keep /dev/shm clean of what our runs leave behind when a process dies without cleaning up.

Two kinds of leftovers:
- vLLM's engine processes talk through `multiprocessing.shared_memory` blocks (named `psm_*`).
  A clean `RolloutEngine.shutdown` removes them, but when a rollout actor or the driver is killed
  (fault tests, Ctrl-C, OOM) the engine core exits without unlinking: one or two segments of
  160-240 MiB (sparse) per engine start. We remove only segments the engine's own processes had
  mapped (read from /proc/<pid>/maps while they lived), never by name pattern alone. Each engine
  writes that list to a small registry file; a later engine start removes the segments of
  registered engines whose processes are all gone and which no live process maps.
- The weight-update folders (`videoseg_weights_<run>_<pid>`, `videoseg_eval_<pid>_<time>`) of a
  driver that was killed; a later driver removes those whose pid is no longer alive.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from cluster.local_head import pid_alive

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
PREFIX = "psm_"
REGISTRY = "videoseg_engine_segments"
WEIGHT_DIR_PATTERNS = (re.compile(r"^videoseg_weights_.+_(\d+)$"), re.compile(r"^videoseg_eval_(\d+)_\d+$"),
                       re.compile(r"^videoseg_staged_(\d+)$"))


def child_pids(pid: int | None = None) -> set[int]:
    """All live descendants of `pid` (default: this process)."""
    import psutil

    try:
        return {p.pid for p in psutil.Process(pid or os.getpid()).children(recursive=True)}
    except psutil.Error:
        return set()


def process_tree(roots: set[int]) -> set[int]:
    """`roots` and all their live descendants."""
    tree = set(roots)
    for pid in roots:
        tree |= child_pids(pid)
    return tree


def segments_mapped_by(pids: set[int], shm_dir: Path = SHM_DIR, prefix: str = PREFIX) -> set[str]:
    """Names of `prefix*` files under `shm_dir` that any of `pids` has mapped (still linked ones only)."""
    names: set[str] = set()
    root = str(shm_dir).rstrip("/") + "/"
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
        except OSError:  # the process ended or is not ours to read
            continue
        for line in lines:
            parts = line.split(maxsplit=5)
            if len(parts) < 6:
                continue
            path = parts[5]
            if path.endswith(" (deleted)") or not path.startswith(root):
                continue
            name = path[len(root):]
            if name.startswith(prefix) and "/" not in name:
                names.add(name)
    return names


def unlink_segments(names: set[str], shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove the named segments that still exist; returns the ones removed."""
    removed = []
    for name in sorted(names):
        if "/" in name or not name:
            raise ValueError(f"not a shared-memory segment name: {name!r}")
        try:
            (shm_dir / name).unlink()
        except FileNotFoundError:  # the engine cleaned it up itself
            continue
        except OSError as exc:
            log.warning("could not remove %s/%s: %s", shm_dir, name, exc)
            continue
        removed.append(name)
    return removed


def all_pids() -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}


def reap_stale_segments(shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove the registered segments of engines whose processes are all gone and that no live
    process maps; returns the names removed."""
    registry = shm_dir / REGISTRY
    if not registry.is_dir():
        return []
    stale: dict[Path, set[str]] = {}
    for record in registry.glob("*.json"):
        try:
            entry = json.loads(record.read_text())
            pids = [int(entry["owner"]), *map(int, entry["engine_pids"])]
            names = set(entry["segments"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable engine registry entry %s: %s", record, exc)
            continue
        if not any(pid_alive(p) for p in pids):
            stale[record] = names
    if not stale:
        return []
    in_use = segments_mapped_by(all_pids(), shm_dir)
    removed = []
    for record, names in stale.items():
        removed += unlink_segments(names - in_use, shm_dir)
        if not names & in_use:
            record.unlink(missing_ok=True)
    if removed:
        log.info("removed %d shared-memory segment(s) of engines that died: %s", len(removed), ", ".join(removed))
    return removed


def reap_stale_weight_dirs(shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove weight-update folders of drivers whose pid is no longer alive; returns their names.

    Callers pass nothing: only /dev/shm is host-local like the pids (an output-dir fallback may be
    shared between hosts, where another host's pid says nothing). Not there or not writable: nothing
    to do."""
    if not shm_dir.is_dir() or not os.access(shm_dir, os.W_OK):
        return []
    removed = []
    for path in shm_dir.iterdir():
        for pattern in WEIGHT_DIR_PATTERNS:
            match = pattern.match(path.name)
            if match and path.is_dir() and not pid_alive(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
                break
    if removed:
        log.info("removed weight folders of drivers that died: %s", ", ".join(sorted(removed)))
    return removed


class EngineShmTracker:
    """Remembers which child processes an engine start created and the segments they map.

    Use: `tracker = EngineShmTracker()` before building the engine, `tracker.engine_started()`
    after, `tracker.scan()` before shutting it down, `tracker.cleanup()` after.
    """

    def __init__(self, shm_dir: Path = SHM_DIR):
        self.shm_dir = shm_dir
        self._before = child_pids()
        self.engine_pids: set[int] = set()
        self.segments: set[str] = set()

    @property
    def record_path(self) -> Path:
        return self.shm_dir / REGISTRY / f"{os.getpid()}.json"

    def engine_started(self) -> None:
        self.engine_pids = child_pids() - self._before
        self.scan()

    def scan(self) -> set[str]:
        """Add the segments the engine's processes map now (call while they are alive) and record
        them, so a later run can remove them if this process is killed."""
        self.segments |= segments_mapped_by(process_tree(self.engine_pids), self.shm_dir)
        if self.segments:
            try:
                self.record_path.parent.mkdir(exist_ok=True)
                tmp = self.record_path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"owner": os.getpid(), "engine_pids": sorted(self.engine_pids),
                                           "segments": sorted(self.segments)}))
                tmp.replace(self.record_path)
            except OSError as exc:  # cleanup of a later run is a convenience; never fail a run for it
                log.warning("could not record engine segments in %s: %s", self.record_path, exc)
        return self.segments

    def cleanup(self, wait_s: float = 10.0) -> list[str]:
        """Remove the remembered segments once the engine's processes have exited (waits up to
        `wait_s`; a process still alive then keeps its segments, which are left in place)."""
        import psutil

        procs = []
        for pid in self.engine_pids:
            # Only processes holding one of the segments matter: multiprocessing's resource tracker
            # is a child started with the engine too, and it lives as long as this process.
            if not segments_mapped_by({pid}, self.shm_dir) & self.segments:
                continue
            try:
                procs.append(psutil.Process(pid))
            except psutil.Error:
                continue
        _, alive = psutil.wait_procs(procs, timeout=wait_s)
        if alive:
            keep = segments_mapped_by({p.pid for p in alive}, self.shm_dir)
            log.warning("engine processes %s still alive after %.0f s; leaving their segments %s",
                        [p.pid for p in alive], wait_s, sorted(keep))
        else:
            keep = set()
        removed = unlink_segments(self.segments - keep, self.shm_dir)
        if not keep:
            self.record_path.unlink(missing_ok=True)
        if removed:
            log.info("removed %d shared-memory segment(s) the engine left: %s", len(removed), ", ".join(removed))
        return removed
