"""End-to-end training-step breakdown, synchronous vs asynchronous rollouts.

    python -m benchmarks.bench_e2e [--quick] [--steps N] [--out PATH]

Runs the real trainer twice as subprocesses, on the same data and seed:

    python -m learner.main --preset debug_cpu run.steps=N run.output_dir=<tmp>/sync ...
    python -m learner.main --preset debug_cpu run.steps=N run.output_dir=<tmp>/async ... run.async_mode=true

and reads each run's metrics.jsonl `time` rows (learner/main.py): rollout (launch -> collected),
score, reward, train, wait_rollout (async: waiting for the prefetched next rollout before the
weights change), sync (its parts: sync_export, sync_share (object store), sync_engines, sync_pool) and step
(from the start of collection to the end of the sync). In async mode the rollout of step N+1 is
launched right after step N's batch is collected and runs while step N scores and trains.

Reported: per-phase means of both modes without the warm-up step 0; idle = step - (score + reward
+ train + wait_rollout + sync) - (rollout, sync mode only); the speedup (sync step / async step);
the overlap ratio = async step / max(rollout, train), rollout and train being the sync run's means
(goal <= 1.15), and the same against max(rollout, score + reward + train + sync). The async means
use the steps that had a rollout in flight (the last step prefetches nothing) when there are any.
Also each child's wall time, exit code, peak memory of its process tree (sampled PSS from /proc)
and its largest process (getrusage). Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import peak_rss_mb, write_result

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("rollout", "score", "reward", "train", "wait_rollout", "sync", "step", "sync_export", "sync_share",
          "sync_engines", "sync_pool")
BUSY = ("score", "reward", "train", "wait_rollout", "sync")
DATA = "data.train=[{name: synthetic, format: synthetic, videos: 4, seed: 0, frames_per_video: 24}]"
NOTE_CPU = ("On a small CPU machine the overlapped rollout (vLLM) and scoring/training (torch) compete "
            "for the same cores, so the async step cannot shrink to max(rollout, train) here; the "
            "overlap ratio is meaningful where rollout and learner have their own devices.")


# --------------------------------------------------------------------------- children
def child_command(out_dir: Path, steps: int, async_mode: bool, prompts: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "learner.main", "--preset", "debug_cpu", f"run.steps={steps}",
           f"run.output_dir={out_dir}", "run.checkpoint_every=1000", DATA]
    if prompts:
        cmd.append(f"learner.prompts_per_step={prompts}")
    if async_mode:
        cmd.append("run.async_mode=true")
    return cmd


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and parentheses
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree_mem_kib(root: int) -> int:
    """PSS (RSS where PSS is unreadable) summed over `root` and all its descendants."""
    kids, todo, total = _children_map(), [root], 0
    while todo:
        pid = todo.pop()
        todo += kids.get(pid, [])
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += next(int(l.split()[1]) for l in text.splitlines() if l.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            try:
                pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
                total += pages * os.sysconf("SC_PAGE_SIZE") // 1024
            except OSError:
                pass
    return total


def _stop_group(pgid: int) -> None:
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(grace)


def run_child(cmd: list[str], log_path: Path, timeout_s: float, sample_s: float = 2.0) -> dict:
    started = time.perf_counter()
    with open(log_path, "w") as log:
        # Own session: on a timeout the whole tree (Ray, vLLM) is stopped by its group id.
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.wait(sample_s):
            peak[0] = max(peak[0], _tree_mem_kib(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status = usage = None
    timed_out = False
    try:
        while status is None:
            pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, usage = st, ru
            elif time.perf_counter() - started > timeout_s:
                timed_out = True
                _stop_group(proc.pid)
                _, status, usage = os.wait4(proc.pid, 0)
            else:
                time.sleep(0.5)
    finally:
        if status is None:  # interrupted (SIGTERM from the suite): take the child's tree down too
            _stop_group(proc.pid)
            os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return {"exit_code": proc.returncode, "timed_out": timed_out,
            "wall_s": round(time.perf_counter() - started, 1),
            "peak_tree_pss_mb": round(peak[0] / 1024, 1),
            "peak_largest_process_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "log_tail": log_path.read_text(errors="replace").splitlines()[-25:] if proc.returncode else None}


def read_times(metrics_path: Path) -> list[dict]:
    rows = []
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                # "step" inside `time` is the step's seconds, so the step number goes under "index"
                rows.append({**row.get("time", {}), "index": row.get("step")})
    return rows


# --------------------------------------------------------------------------- analysis
def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.fmean(vals) if vals else None


def phase_means(rows: list[dict], sync_mode: bool) -> dict:
    means = {k: _mean(rows, k) for k in PHASES}
    if means["step"] is not None:
        busy = sum(means[k] or 0.0 for k in BUSY) + ((means["rollout"] or 0.0) if sync_mode else 0.0)
        means["idle"] = means["step"] - busy
    return {k: (round(v, 3) if v is not None else None) for k, v in means.items()}


def analyse(sync_rows: list[dict], async_rows: list[dict], drop_first: int = 1) -> dict:
    sync_steady = sync_rows[drop_first:]
    # The last async step launches no next rollout, so nothing overlaps it: leave it out when others remain.
    async_steady = async_rows[drop_first:]
    async_overlapped = async_steady[:-1] or async_steady
    s = phase_means(sync_steady, sync_mode=True)
    a = phase_means(async_overlapped, sync_mode=False)
    out = {"steps_used": {"sync": [r.get("index") for r in sync_steady],
                          "async": [r.get("index") for r in async_overlapped]},
           "sync": s, "async": a, "async_all_after_warmup": phase_means(async_steady, sync_mode=False)}
    if s.get("step") and a.get("step"):
        out["speedup_async_over_sync"] = round(s["step"] / a["step"], 3)
        if s.get("rollout") and s.get("train"):
            out["overlap_ratio"] = round(a["step"] / max(s["rollout"], s["train"]), 3)
        learner_side = sum(s.get(k) or 0.0 for k in ("score", "reward", "train", "sync"))
        if s.get("rollout"):
            out["overlap_ratio_vs_learner_side"] = round(a["step"] / max(s["rollout"], learner_side), 3)
    return out


# --------------------------------------------------------------------------- main
def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 steps, 2 prompts per step")
    ap.add_argument("--steps", type=int, default=None, help="default 3 (quick) or 6")
    ap.add_argument("--prompts", type=int, default=None, help="learner.prompts_per_step (quick: 2)")
    ap.add_argument("--timeout", type=float, default=1500.0, help="seconds per training run")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_term)  # the finally below must clear the temp dir
    steps = args.steps or (3 if args.quick else 6)
    prompts = args.prompts or (2 if args.quick else None)
    load_at_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    runs, rows = {}, {}
    try:
        for mode in ("sync", "async"):
            cmd = child_command(work / mode, steps, mode == "async", prompts)
            print(f"{mode}: {' '.join(cmd[1:])}", flush=True)
            runs[mode] = run_child(cmd, work / f"{mode}.log", args.timeout)
            runs[mode]["command"] = " ".join(["python"] + cmd[1:])
            rows[mode] = read_times(work / mode / "metrics.jsonl")
            r = runs[mode]
            print(f"{mode}: exit {r['exit_code']}, {r['wall_s']} s, {len(rows[mode])} steps", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "config": {"preset": "debug_cpu", "steps": steps, "prompts_per_step": prompts or "preset",
                   "data": DATA.split("=", 1)[1], "warmup_steps_dropped": 1, "cpu_count": os.cpu_count()},
        "runs": runs,
        "per_step": rows,
        **analyse(rows.get("sync", []), rows.get("async", [])),
        "goal_overlap_ratio": 1.15,
        "note": NOTE_CPU if not _has_cuda() else None,
        "load_avg_1m_at_start": load_at_start,
        "peak_rss_mb": peak_rss_mb(),
    }
    result["peak_child_tree_pss_mb"] = max((r["peak_tree_pss_mb"] for r in runs.values()), default=None)
    path = write_result("e2e", result, args.out)
    print(json.dumps({k: result.get(k) for k in ("speedup_async_over_sync", "overlap_ratio",
                                                 "overlap_ratio_vs_learner_side")}), "->", path)
    failed = any(r["exit_code"] != 0 for r in runs.values()) or len(runs) < 2
    return 1 if failed else 0


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
