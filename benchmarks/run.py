"""The benchmark suite: every stage benchmark as a subprocess, one JSON each, then one summary.

    python -m benchmarks.run [--quick] [--device cpu|cuda]
                             [--stages env reward rollout weight_sync learner e2e hf_generate] [--out-dir DIR]
    python -m benchmarks.run --resummarize [--out-dir DIR]   # rebuild the summary from the stage JSONs

Each stage runs as `python -m benchmarks.bench_<stage> ... --out <out-dir>/<stage>.json` with its
log in <out-dir>/logs/<stage>.log; a stage that fails (or times out) is recorded with its exit code
and log tail and the suite goes on. Then <out-dir>/SUMMARY.md (a table: stage, headline figure,
baseline, ratio, goal, met?, peak memory, seconds) and <out-dir>/summary.json (the same rows plus
machine info, date and the exact command). Default out dir: benchmarks/results/suite_<device>[_quick].

Goals: rollout multi-turn/single-pass >= 0.85 and prefix-cache hit >= 0.90; reward pool >= 80
frames scored/s on the GPU with SAM2 Hiera-L; learner MFU >= 45% on the GPU; e2e overlap ratio
<= 1.15. Env serving and weight sync have no target: their ratio to the naive path is reported.
On cuda, stages that cannot run on the GPU machine (vLLM and Ray are not there) are listed as not
run, with the reason; the HF-generate figure stands in as the rollout context there.
--resummarize rebuilds SUMMARY.md / summary.json from the stage JSONs and the run records of an
earlier summary.json (after a change to how rows are read), keeping that run's command, date and time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, machine_info

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("env", "reward", "rollout", "weight_sync", "learner", "e2e", "hf_generate")
DEFAULT_STAGES = {"cpu": STAGES[:-1], "cuda": STAGES}
NO_GPU_VLLM = ("vLLM (and Ray) cannot run on the GPU machine: no registry there and their wheels are too "
               "large to carry (../shared/ENVIRONMENT.md); measured by the CPU suite")
NA = "n/a"
# The goal each stage is held to, shown on rows of stages that did not produce figures.
STAGE_GOALS = {"env": "report (no target)", "reward": ">= 80 frames/s (GPU, Hiera-L)",
               "rollout": ">= 0.85; prefix hit >= 0.90", "weight_sync": "report (no target)",
               "learner": "MFU >= 45% (GPU)", "e2e": "overlap ratio <= 1.15",
               "hf_generate": "context (no target)"}


# --------------------------------------------------------------------------- what to run
def stage_command(stage: str, device: str, quick: bool, out: Path) -> list[str]:
    """Arguments after `python` for one stage."""
    gpu = device == "cuda"
    args = ["-m", f"benchmarks.bench_{stage}", "--out", str(out)] + (["--quick"] if quick else [])
    if stage == "reward":
        hiera_l = ["--config", "configs/sam2.1/sam2.1_hiera_l.yaml", "--image-size", "1024", "--bf16"]
        args += ["--device", device, "--batch-frames", "32" if gpu else "8"] + (hiera_l if gpu else [])
    elif stage == "weight_sync":
        args += ["--device", device] + (["--engine"] if not gpu and not quick else [])
    elif stage == "learner":
        args += ["--device", device]
        if gpu:  # the committed GPU run's workload (benchmarks/results/GPU_RUNS.md)
            args += ["--shape", "qwen3-vl-2b", "--seqs", "16", "--seq-len", "4096", "--micro-batch-tokens",
                     "65536", "--steps", "2" if quick else "3"]
    elif stage == "hf_generate":
        args += ["--device", device] + (["--shape", "qwen3-vl-2b", "--batch", "64",
                                         "--new-tokens", "64" if quick else "256"] if gpu else [])
    return args


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def skip_reason(stage: str, device: str, has_module=_importable) -> str | None:
    """Why a stage cannot run here (None: it can). Checks only what is cheap to check."""
    if device == "cuda" and stage in ("rollout", "e2e"):
        return NO_GPU_VLLM
    needs = {"env": ["decord"], "reward": ["sam2"], "rollout": ["vllm"], "weight_sync": ["safetensors"],
             "learner": ["deepspeed", "sam2"], "e2e": ["vllm", "ray", "deepspeed", "sam2"],
             "hf_generate": ["transformers"]}[stage]
    missing = [m for m in needs if not has_module(m)]
    if missing:
        return f"{', '.join(missing)} not installed on this machine"
    return None


def run_stage(stage: str, argv: list[str], out_json: Path, log_path: Path, timeout_s: float) -> dict:
    """Run one stage; never raises for a failing stage (its exit code and log tail are recorded)."""
    out_json.unlink(missing_ok=True)  # a stale file must not pass as this run's result
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rc, status = None, "ok"
    with open(log_path, "w") as log:
        # Own process group: a timeout stops the stage's whole tree (vLLM and Ray spawn processes).
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            if proc.poll() is None:  # timeout, or the suite itself was interrupted
                _stop_group(proc)
                rc = proc.returncode
    if status == "ok" and rc != 0:
        status = "failed"
    seconds = round(time.perf_counter() - started, 1)
    return {"stage": stage, "status": status, "exit_code": rc, "seconds": seconds,
            "command": " ".join(["python", *argv]), "json": rel(out_json) if out_json.is_file() else None,
            "log": rel(log_path), "log_tail": None if status == "ok" else tail(log_path)}


def rel(path: Path) -> str:
    """The path relative to the repository root when inside it (records stay valid in a checkout)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 20) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


# --------------------------------------------------------------------------- reading stage JSONs
def get(d, dotted: str):
    """d["a"]["b"]... or None when any level is missing or not a dict."""
    for key in dotted.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def ratio(a, b) -> float | None:
    a, b = num(a), num(b)
    return a / b if a is not None and b else None


def meets(value, op: str, target: float) -> bool | None:
    value = num(value)
    if value is None:
        return None
    return value >= target if op == ">=" else value <= target


def fmt(x, unit: str = "", digits: int = 3) -> str:
    x = num(x)
    if x is None:
        return NA
    text = f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{text} {unit}".strip()


def pct(x) -> str:
    x = num(x)
    return NA if x is None else f"{100 * x:.1f}%"


def memory(rss_mb=None, gpu_gb=None) -> str:
    parts = []
    if num(rss_mb) is not None:
        parts.append(f"RSS {num(rss_mb):,.0f} MiB")
    if num(gpu_gb) is not None:
        parts.append(f"GPU {num(gpu_gb):.1f} GiB")
    return ", ".join(parts) or NA


def row(stage, metric, figure=NA, baseline=NA, ratio_=None, goal="report (no target)", met=None, mem=NA,
        note=None, value=None) -> dict:
    return {"stage": stage, "metric": metric, "figure": figure, "value": num(value), "baseline": baseline,
            "ratio": None if ratio_ is None else round(ratio_, 3), "goal": goal, "met": met,
            "peak_memory": mem, "note": note}


def env_rows(d: dict, device: str) -> list[dict]:
    rows = []
    for src, r in sorted((get(d, "results") or {}).items()):
        naive, cold = get(r, "naive.frames_per_s"), get(r, "cold.frames_per_s")
        note = (f"{src}: in-process LRU {fmt(get(r, 'lru.frames_per_s'), 'frames/s')}, redis (fresh replica) "
                f"{fmt(get(r, 'redis.frames_per_s'), 'frames/s')}; p50 latency cold "
                f"{fmt(get(r, 'cold.p50_ms'), 'ms')} vs naive {fmt(get(r, 'naive.p50_ms'), 'ms')}")
        rows.append(row("env", f"frames/s served, cold cache ({src})", fmt(cold, "frames/s"),
                        f"naive decode {fmt(naive, 'frames/s')}", ratio(cold, naive), note=note, value=cold))
    return rows or [row("env", "frames/s served", note="no per-source results in the JSON")]


def reward_rows(d: dict, device: str) -> list[dict]:
    cfg = str(get(d, "setup.config") or "")
    plain = get(d, "results.plain.frames_scored_per_s")
    score = get(d, "results.score.frames_scored_per_s")
    pool = get(d, "results.pool.frames_scored_per_s")
    gpu_peak = max((num(v.get("peak_gpu_gib")) or 0.0 for v in (get(d, "results") or {}).values()
                    if isinstance(v, dict)), default=0.0) or None
    rss = num(get(d, "peak_rss_gib"))
    mem = memory(rss * 1024 if rss is not None else get(d, "peak_rss_mb"), gpu_peak)
    real = device == "cuda" and "hiera_l" in cfg
    # The scoring path and the plain predictor score different batches: say what each one did.
    note = (f"RL batch: {get(d, 'results.score.trajectories') or NA} trajectories, "
            f"{get(d, 'results.score.masks') or NA} masks from "
            f"{get(d, 'results.score.frames_encoded') or NA} encoded frames; "
            f"plain: one mask per frame, {get(d, 'results.plain.masks') or NA} masks")
    if not real:
        note += f"; the 80 frames/s goal is for the GPU with Hiera-L, this run: {device}, SAM2 '{cfg or NA}'"
    return [
        row("reward", "RL scoring path, frames scored/s", fmt(score, "frames/s"),
            f"plain SAM2VideoPredictor {fmt(plain, 'frames/s')}", ratio(score, plain),
            ">= 80 frames/s (GPU, Hiera-L)", meets(score, ">=", 80) if real else None, mem, note, score),
        row("reward", "pool (1 embedding/video) vs plain predictor, same frames", fmt(pool, "frames/s"),
            f"plain {fmt(plain, 'frames/s')}", num(get(d, "pool_vs_plain_speedup")) or ratio(pool, plain),
            mem=mem, value=pool),
    ]


def rollout_rows(d: dict, device: str) -> list[dict]:
    multi, single = get(d, "multi_turn.tokens_per_s"), get(d, "single_pass.tokens_per_s")
    r = num(get(d, "ratio_multi_over_single"))
    r = r if r is not None else ratio(multi, single)
    hit = get(d, "prefix_cache_history_hit_fraction")
    mem = memory(get(d, "peak_rss_mb"))
    return [
        row("rollout", "multi-turn vs single-pass generated tokens/s", fmt(multi, "tok/s"),
            f"single-pass {fmt(single, 'tok/s')}", r, ">= 0.85", meets(r, ">=", 0.85), mem, value=multi,
            note=f"engine start {fmt(get(d, 'engine_start_s'), 's')}, turns per episode "
                 f"{get(d, 'multi_turn.turns_per_episode') or NA}"),
        row("rollout", "prefix-cache hit of history tokens, turns >= 2", pct(hit), goal=">= 0.90",
            met=meets(hit, ">=", 0.90), mem=mem, value=hit),
    ]


def weight_sync_rows(d: dict, device: str) -> list[dict]:
    rows, mem = [], memory(get(d, "peak_rss_mb"), get(d, "peak_gpu_mem_gb"))
    for shape, r in (get(d, "results") or {}).items():
        if not isinstance(r, dict):
            continue
        if "skipped" in r:
            rows.append(row("weight_sync", f"{shape}: skipped", mem=mem, note=str(r["skipped"])))
            continue
        note = (f"write {fmt(get(r, 'ours.write_s'), 's')} vs {fmt(get(r, 'raw.write_s'), 's')}, read "
                f"{fmt(get(r, 'ours.read_s'), 's')} vs {fmt(get(r, 'raw.read_s'), 's')}; sha256 is "
                f"{pct(get(r, 'ours.sha256_share_of_write'))} of our write; "
                f"{get(r, 'ours.buckets') or NA} buckets")
        ours = f"{fmt(get(r, 'ours.total_s'), 's')} ({fmt(get(r, 'ours.total_gbps'), 'GB/s')})"
        raw = f"raw copy {fmt(get(r, 'raw.total_s'), 's')} ({fmt(get(r, 'raw.total_gbps'), 'GB/s')})"
        rows.append(row("weight_sync", f"{shape} ({fmt(get(r, 'gb'), 'GB')}) write + read (ratio = ours/raw)",
                        ours, raw, num(get(r, "ratio_ours_over_raw.total")), mem=mem, note=note,
                        value=get(r, "ours.total_s")))
    eng = get(d, "engine")
    if isinstance(eng, dict):
        if "skipped" in eng:
            rows.append(row("weight_sync", "vLLM engine load_weights: skipped", mem=mem,
                            note=str(eng["skipped"])))
        else:
            rows.append(row("weight_sync", "vLLM engine load_weights, tiny policy (ratio = load/raw read)",
                            fmt(get(eng, "load_weights_s"), "s"),
                            f"raw read {fmt(get(eng, 'raw_read_s'), 's')}",
                            num(get(eng, "ratio_load_over_raw_read")), mem=mem,
                            value=get(eng, "load_weights_s"),
                            note="includes pausing generation, the in-place reload and the cache resets"))
    return rows or [row("weight_sync", "weight sync", note="no results in the JSON")]


def learner_rows(d: dict, device: str) -> list[dict]:
    mem = memory(get(d, "peak_rss_mb"), get(d, "peak_gpu_mem_gb"))
    tps, mfu = get(d, "tokens_per_s"), get(d, "mfu_vs_h200_bf16_peak")
    goal = num(get(d, "goal_mfu")) or 0.45
    shape = f"{get(d, 'config.shape') or NA}, {get(d, 'config.tokens_per_step') or NA} tokens/step"
    if device == "cuda":
        return [row("learner", "MFU (of the H200 bf16 peak)", pct(mfu),
                    "anchor ~42% (1.7B Qwen2 text, ZeRO-2)", goal=f">= {goal:.0%}",
                    met=meets(mfu, ">=", goal), mem=mem, value=mfu,
                    note=f"{shape}; {fmt(tps, 'tokens/s')}, {fmt(get(d, 'achieved_tflops'), 'TFLOP/s')}; "
                         f"vs measured GEMM {pct(get(d, 'mfu_vs_measured_gemm'))}"),
                row("learner", "learner step tokens/s", fmt(tps, "tokens/s"), mem=mem, value=tps,
                    note=f"step {fmt(get(d, 'step_seconds_median'), 's')} (median)")]
    return [row("learner", "learner step tokens/s", fmt(tps, "tokens/s"),
                goal=f"MFU >= {goal:.0%} (GPU only)",
                mem=mem, value=tps, note=f"{shape}; step {fmt(get(d, 'step_seconds_median'), 's')} (median)")]


def e2e_rows(d: dict, device: str) -> list[dict]:
    mem = memory(get(d, "peak_child_tree_pss_mb"))
    a, s = get(d, "async.step"), get(d, "sync.step")
    o, o2 = get(d, "overlap_ratio"), get(d, "overlap_ratio_vs_learner_side")
    note = (f"sync means (steps {get(d, 'steps_used.sync') or NA}): "
            f"rollout {fmt(get(d, 'sync.rollout'), 's')}, "
            f"train {fmt(get(d, 'sync.train'), 's')}, idle {fmt(get(d, 'sync.idle'), 's')}; async (steps "
            f"{get(d, 'steps_used.async') or NA}): train {fmt(get(d, 'async.train'), 's')}, idle "
            f"{fmt(get(d, 'async.idle'), 's')}, wait_rollout {fmt(get(d, 'async.wait_rollout'), 's')}")
    return [
        row("e2e", "step time, async (speedup = sync/async)", fmt(a, "s"), f"sync {fmt(s, 's')}",
            num(get(d, "speedup_async_over_sync")) or ratio(s, a), mem=mem, note=note, value=a),
        row("e2e", "overlap ratio: async step / max(rollout, train)", fmt(o), goal="<= 1.15",
            met=meets(o, "<=", 1.15), mem=mem, value=o, note=get(d, "note")),
        row("e2e", "overlap ratio: async step / max(rollout, score+reward+train+sync)", fmt(o2), mem=mem,
            value=o2),
    ]


def hf_generate_rows(d: dict, device: str) -> list[dict]:
    tps = get(d, "tokens_per_s")
    return [row("hf_generate", "HF generate tokens/s (rollout context on the GPU)", fmt(tps, "tok/s"),
                str(get(d, "anchor") or NA), mem=memory(get(d, "peak_rss_mb"), get(d, "peak_gpu_mem_gb")),
                value=tps, note=f"{get(d, 'config.shape') or NA}, batch {get(d, 'config.batch') or NA}, "
                                f"{get(d, 'config.new_tokens') or NA} new tokens")]


EXTRACT = {"env": env_rows, "reward": reward_rows, "rollout": rollout_rows, "weight_sync": weight_sync_rows,
           "learner": learner_rows, "e2e": e2e_rows, "hf_generate": hf_generate_rows}


def stage_rows(record: dict, data: dict | None, device: str) -> list[dict]:
    """Summary rows of one stage from its run record and JSON (None when it wrote none)."""
    stage, status = record["stage"], record["status"]
    goal = STAGE_GOALS.get(stage, NA)
    if status == "not_run":
        return [row(stage, "not run on this machine", goal=goal, note=record.get("reason"))]
    rows = []
    if isinstance(data, dict):
        try:
            rows = EXTRACT[stage](data, device)
        except Exception as exc:  # a malformed JSON shows as n/a, it must not sink the summary
            rows = [row(stage, "unreadable result", note=f"{type(exc).__name__}: {exc}")]
    if status != "ok":
        last = next((l for l in reversed(record.get("log_tail") or []) if l.strip()), "")
        what = "timed out" if status == "timeout" else f"failed (exit {record.get('exit_code')})"
        rows = [row(stage, what, goal=goal, note=last[-300:] or None)] + rows
    elif not rows:
        rows = [row(stage, "no readable result JSON", goal=goal, note=record.get("json"))]
    for r in rows:
        r["seconds"] = record.get("seconds")
    return rows


# --------------------------------------------------------------------------- rendering
def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(summary: dict) -> str:
    m = summary.get("machine") or {}
    keys = ("cpu_model", "cpu_count", "gpu", "torch", "load_avg_1m")
    machine = ", ".join(f"{k} {round(m[k], 2) if isinstance(m[k], float) else m[k]}" for k in keys if k in m)
    kind = f"{summary.get('device', NA)}{', quick' if summary.get('quick') else ''}"
    lines = [f"# Benchmark suite ({kind})", "",
             f"- date: {summary.get('date', NA)}", f"- command: `{summary.get('command', NA)}`",
             f"- machine: {machine or NA}", f"- total: {fmt(summary.get('total_seconds'), 's')}"]
    if summary.get("rebuilt"):
        lines.append(f"- summary rebuilt from the stage JSONs: {summary['rebuilt']}")
    lines += ["",
             "| stage | metric | figure | baseline | ratio | goal | met? | peak memory | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary.get("rows", []):
        met = {True: "yes", False: "**no**", None: "-"}[r.get("met")]
        lines.append("| " + " | ".join(_cell(x) for x in (
            r["stage"], r["metric"], r["figure"], r["baseline"], fmt(r.get("ratio")), r["goal"], met,
            r["peak_memory"], fmt(r.get("seconds"), digits=4))) + " |")
    notes = [r for r in summary.get("rows", []) if r.get("note")]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {r['stage']}, {r['metric']}: {_cell(r['note'])}" for r in notes]
    failed = [s for s in summary.get("stages", []) if s.get("status") in ("failed", "timeout")]
    for s in failed:
        lines += ["", f"## {s['stage']}: {s['status']} (exit {s.get('exit_code')})", "",
                  f"`{s.get('command', NA)}`, log `{s.get('log', NA)}`; last lines:", "", "```",
                  *(s.get("log_tail") or []), "```"]
    lines += ["", "Ratios: env and reward = ours / naive (higher is better); rollout = multi-turn / "
              "single-pass; weight sync = ours / raw seconds (lower is better); "
              "e2e speedup = sync / async step.",
              "Per-stage JSONs beside this file hold every figure, the machine and the exact stage command."]
    return "\n".join(lines) + "\n"


def build_summary(records: list[dict], device: str, quick: bool, command: str, total_s: float,
                  read=lambda p: json.loads(Path(p).read_text())) -> dict:
    rows = []
    for rec in records:
        data = None
        if rec.get("json"):
            path = Path(rec["json"])
            try:
                data = read(path if path.is_absolute() else ROOT / path)
            except (OSError, ValueError):
                data = None
        rows += stage_rows(rec, data, device)
    return {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device,
            "quick": quick, "machine": machine_info(), "total_seconds": round(total_s, 1), "stages": records,
            "rows": rows}


def rebuild_summary(old: dict) -> dict:
    """Rows re-read from the stage JSONs; the run's own command, date, machine and time are kept."""
    stages = [{**rec, **{k: rel(Path(rec[k])) for k in ("json", "log") if rec.get(k)}}
              for rec in old.get("stages", [])]
    new = build_summary(stages, old.get("device", "cpu"), bool(old.get("quick")),
                        old.get("command", NA), old.get("total_seconds") or 0.0)
    new.update({k: old[k] for k in ("date", "machine") if k in old})
    new["rebuilt"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return new


def write_summary(out_dir: Path, summary: dict) -> str:
    text = render_markdown(summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "SUMMARY.md").write_text(text)
    return text


# --------------------------------------------------------------------------- main
def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=None)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per stage (default 1200 with --quick, else 3600)")
    ap.add_argument("--resummarize", action="store_true",
                    help="run nothing; rebuild the summary in --out-dir from its stage JSONs")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_term)  # run_stage's finally then stops the running stage
    command = " ".join(["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)])
    stages = args.stages or list(DEFAULT_STAGES[args.device])
    default_dir = RESULTS / f"suite_{args.device}{'_quick' if args.quick else ''}"
    out_dir = Path(args.out_dir) if args.out_dir else default_dir
    if args.resummarize:
        print(write_summary(out_dir, rebuild_summary(json.loads((out_dir / "summary.json").read_text()))))
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    timeout = args.timeout or (1200.0 if args.quick else 3600.0)
    started, records = time.perf_counter(), []
    for stage in stages:
        reason = skip_reason(stage, args.device)
        if reason:
            records.append({"stage": stage, "status": "not_run", "reason": reason, "seconds": None})
            print(f"[{stage}] not run: {reason}", flush=True)
            continue
        out_json = out_dir.resolve() / f"{stage}.json"
        argv_stage = stage_command(stage, args.device, args.quick, Path(rel(out_json)))  # stages run in ROOT
        print(f"[{stage}] python {' '.join(argv_stage)}", flush=True)
        rec = run_stage(stage, argv_stage, out_json, out_dir.resolve() / "logs" / f"{stage}.log", timeout)
        records.append(rec)
        print(f"[{stage}] {rec['status']} (exit {rec['exit_code']}) in {rec['seconds']} s", flush=True)
    summary = build_summary(records, args.device, args.quick, command, time.perf_counter() - started)
    print(write_summary(out_dir, summary))
    return 0 if all(r["status"] in ("ok", "not_run") for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
