"""Finding and removing the shared-memory segments an engine's processes leave behind, with real
processes mapping real files under /dev/shm (no vLLM needed)."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rollout.shm_segments import (REGISTRY, EngineShmTracker, reap_stale_segments, reap_stale_weight_dirs,
                                  segments_mapped_by, unlink_segments)

SHM = Path("/dev/shm")
pytestmark = pytest.mark.skipif(not (SHM.is_dir() and os.access(SHM, os.W_OK) and Path("/proc/self/maps").exists()),
                                reason="needs a writable /dev/shm and /proc (Linux)")

# Maps a file under /dev/shm the way multiprocessing.shared_memory does, then waits for stdin to close.
HOLDER = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
os.ftruncate(fd, 4096)
m = mmap.mmap(fd, 4096)
m[:5] = b"hello"
print("ready", flush=True)
sys.stdin.read()
m[:5] = b"still"   # the mapping keeps working after the name is unlinked
print(bytes(m[:5]).decode(), flush=True)
"""


def _name() -> str:
    return f"psm_vsotest{uuid.uuid4().hex[:10]}"


def _holder(name: str, shm: Path = SHM) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(shm / name)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate("", timeout=30)
    return out.strip()


def test_mapped_segment_found_and_unlinked_while_mapping_still_works():
    name, other = _name(), _name()
    (SHM / other).write_bytes(b"x" * 16)  # a segment nobody of ours maps
    proc = _holder(name)
    try:
        found = segments_mapped_by({proc.pid})
        assert name in found and other not in found
        assert segments_mapped_by({os.getpid()}).isdisjoint({name, other})
        assert unlink_segments({name}) == [name]
        assert not (SHM / name).exists() and (SHM / other).exists()
        assert unlink_segments({name}) == []  # already gone: nothing to do, no error
        assert _finish(proc) == "still"
    finally:
        proc.kill()
        for n in (name, other):
            (SHM / n).unlink(missing_ok=True)


def test_tracker_removes_only_the_engine_processes_segments_after_they_exit(tmp_path):
    shm = tmp_path  # any directory works: the maps lines name the file's path
    older = _holder("psm_before", shm)  # a child that existed before the "engine" started: not ours
    (shm / "psm_other").write_bytes(b"x")
    try:
        tracker = EngineShmTracker(shm)
        proc = _holder("psm_engine", shm)
        tracker.engine_started()
        assert proc.pid in tracker.engine_pids and older.pid not in tracker.engine_pids
        assert tracker.segments == {"psm_engine"}
        record = json.loads(tracker.record_path.read_text())
        assert record["segments"] == ["psm_engine"] and proc.pid in record["engine_pids"]
        # While the engine process lives, cleanup waits, then leaves its segment in place.
        assert tracker.cleanup(wait_s=0.2) == [] and (shm / "psm_engine").exists()
        assert tracker.record_path.exists()
        assert _finish(proc) == "still"
        assert tracker.cleanup(wait_s=10) == ["psm_engine"]
        assert not (shm / "psm_engine").exists() and not tracker.record_path.exists()
        assert (shm / "psm_before").exists() and (shm / "psm_other").exists()
    finally:
        older.kill()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reap_removes_segments_of_dead_engines_unless_a_live_process_maps_them(tmp_path, caplog):
    shm = tmp_path
    registry = shm / REGISTRY
    registry.mkdir()
    dead = _dead_pid()
    for name in ("psm_dead_free", "psm_live_owner"):
        (shm / name).write_bytes(b"x")
    holder = _holder("psm_dead_but_mapped", shm)
    try:
        (registry / "1.json").write_text(json.dumps(
            {"owner": dead, "engine_pids": [dead], "segments": ["psm_dead_free", "psm_dead_but_mapped", "psm_gone"]}))
        (registry / "2.json").write_text(json.dumps(
            {"owner": os.getpid(), "engine_pids": [], "segments": ["psm_live_owner"]}))
        (registry / "3.json").write_text("{not json")
        assert reap_stale_segments(shm) == ["psm_dead_free"]
        assert "unreadable engine registry entry" in caplog.text
        assert (shm / "psm_dead_but_mapped").exists() and (shm / "psm_live_owner").exists()
        assert (registry / "1.json").exists(), "kept while one of its segments is still in use"
        assert _finish(holder) == "still"
        assert reap_stale_segments(shm) == ["psm_dead_but_mapped"]
        assert not (registry / "1.json").exists() and (registry / "2.json").exists()
    finally:
        holder.kill()


def test_reap_weight_dirs_of_dead_drivers_only(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    for name in (f"videoseg_weights_debug_cpu_{dead}", f"videoseg_eval_{dead}_1764000000",
                 f"videoseg_weights_debug_cpu_{alive}", f"videoseg_eval_{alive}_1764000000",
                 f"videoseg_staged_{dead}", f"videoseg_staged_{alive}",
                 "videoseg_weights_without_pid", f"unrelated_{dead}"):
        (tmp_path / name / "v00000001").mkdir(parents=True)
    (tmp_path / f"videoseg_weights_file_{dead}").write_text("a file, not a folder")
    removed = reap_stale_weight_dirs(tmp_path)
    assert sorted(removed) == sorted([f"videoseg_eval_{dead}_1764000000", f"videoseg_weights_debug_cpu_{dead}",
                                      f"videoseg_staged_{dead}"])
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {f"videoseg_weights_debug_cpu_{alive}", f"videoseg_eval_{alive}_1764000000", f"videoseg_staged_{alive}",
                    "videoseg_weights_without_pid", f"unrelated_{dead}", f"videoseg_weights_file_{dead}"}
    assert reap_stale_weight_dirs(tmp_path / "missing") == []


def test_unlink_rejects_paths():
    with pytest.raises(ValueError, match="not a shared-memory segment name"):
        unlink_segments({"../etc/passwd"})
    with pytest.raises(ValueError):
        unlink_segments({""})
