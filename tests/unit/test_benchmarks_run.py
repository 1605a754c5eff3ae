"""The benchmark suite's pure parts: stage commands, skip reasons, summary rows from stage JSONs,
goal checks, failure records and SUMMARY.md. No benchmark runs here and no timing is asserted."""

import json
import sys

import pytest

from benchmarks import run as suite


@pytest.fixture(autouse=True)
def _no_torch_import(monkeypatch):
    """machine_info imports torch (seconds); the summary only needs some dict."""
    monkeypatch.setattr(suite, "machine_info", lambda: {"cpu_count": 2})


def _rows_by_metric(rows):
    return {r["metric"]: r for r in rows}


# ----------------------------------------------------------------------------- commands, skips
def test_stage_commands_pass_out_quick_and_device():
    out = suite.Path("/x/reward.json")
    cpu = suite.stage_command("reward", "cpu", True, out)
    assert cpu[:2] == ["-m", "benchmarks.bench_reward"] and "--quick" in cpu
    assert cpu[cpu.index("--out") + 1] == "/x/reward.json" and cpu[cpu.index("--device") + 1] == "cpu"
    gpu = suite.stage_command("reward", "cuda", False, out)
    assert "--quick" not in gpu and "configs/sam2.1/sam2.1_hiera_l.yaml" in gpu
    # the real engine update is timed only in full CPU runs
    assert "--engine" in suite.stage_command("weight_sync", "cpu", False, out)
    assert "--engine" not in suite.stage_command("weight_sync", "cpu", True, out)
    assert "--engine" not in suite.stage_command("weight_sync", "cuda", False, out)
    assert suite.stage_command("learner", "cuda", False, out).count("qwen3-vl-2b") == 1


def test_skip_reasons():
    everything = lambda m: True  # noqa: E731
    assert suite.skip_reason("rollout", "cuda", everything) == suite.NO_GPU_VLLM
    assert suite.skip_reason("e2e", "cuda", everything) == suite.NO_GPU_VLLM
    assert suite.skip_reason("rollout", "cpu", everything) is None
    assert "vllm" in suite.skip_reason("rollout", "cpu", lambda m: m != "vllm")
    assert "decord" in suite.skip_reason("env", "cuda", lambda m: m != "decord")
    assert set(suite.DEFAULT_STAGES["cuda"]) - set(suite.DEFAULT_STAGES["cpu"]) == {"hf_generate"}


# ----------------------------------------------------------------------------- goal checks, formats
def test_goal_checks_and_formatting():
    assert suite.meets(0.9, ">=", 0.85) is True and suite.meets(0.8, ">=", 0.85) is False
    assert suite.meets(1.1, "<=", 1.15) is True and suite.meets(1.3, "<=", 1.15) is False
    assert suite.meets(None, ">=", 1) is None and suite.meets("x", ">=", 1) is None
    assert suite.meets(True, ">=", 0) is None
    assert suite.ratio(6, 3) == 2 and suite.ratio(1, 0) is None and suite.ratio(None, 2) is None
    assert suite.fmt(None) == suite.NA and suite.fmt(0.9091) == "0.909"
    assert suite.fmt(12345.6, "tok/s") == "12,346 tok/s"
    assert suite.pct(0.1242) == "12.4%" and suite.pct(None) == suite.NA
    assert suite.memory(1051.0) == "RSS 1,051 MiB" and suite.memory(None, 18.24) == "GPU 18.2 GiB"
    assert suite.get({"a": {"b": 1}}, "a.b") == 1 and suite.get({"a": 3}, "a.b") is None


# ----------------------------------------------------------------------------- rows from stage JSONs
ROLLOUT = {"multi_turn": {"tokens_per_s": 430.9}, "single_pass": {"tokens_per_s": 474.2},
           "ratio_multi_over_single": 0.909, "prefix_cache_history_hit_fraction": 0.9691,
           "peak_rss_mb": 1051.0}


def test_rollout_rows_check_both_goals():
    rows = _rows_by_metric(suite.rollout_rows(ROLLOUT, "cpu"))
    multi = rows["multi-turn vs single-pass generated tokens/s"]
    assert multi["ratio"] == 0.909 and multi["met"] is True and multi["peak_memory"] == "RSS 1,051 MiB"
    hit = rows["prefix-cache hit of history tokens, turns >= 2"]
    assert hit["figure"] == "96.9%" and hit["met"] is True
    bad = _rows_by_metric(suite.rollout_rows({**ROLLOUT, "ratio_multi_over_single": 0.7,
                                              "prefix_cache_history_hit_fraction": 0.5}, "cpu"))
    assert [r["met"] for r in bad.values()] == [False, False]


def test_missing_keys_show_as_na():
    for stage, fn in suite.EXTRACT.items():
        rows = fn({}, "cpu")
        assert rows, stage
        for r in rows:
            assert r["met"] is None, (stage, r)
            assert r["figure"] == suite.NA or "skipped" in r["metric"], (stage, r)


def test_reward_goal_applies_only_to_gpu_hiera_l():
    d = {"setup": {"config": "configs/sam2.1/sam2.1_hiera_l.yaml"}, "peak_rss_gib": 4.0,
         "results": {"plain": {"frames_scored_per_s": 14.7, "peak_gpu_gib": 3.2},
                     "pool": {"frames_scored_per_s": 36.8, "peak_gpu_gib": 18.6},
                     "score": {"frames_scored_per_s": 130.8, "peak_gpu_gib": 15.4}},
         "pool_vs_plain_speedup": 2.5}
    gpu = suite.reward_rows(d, "cuda")
    assert gpu[0]["met"] is True and gpu[0]["ratio"] == round(130.8 / 14.7, 3)
    assert gpu[0]["peak_memory"] == "RSS 4,096 MiB, GPU 18.6 GiB" and gpu[1]["ratio"] == 2.5
    slow = {**d, "results": {**d["results"], "score": {"frames_scored_per_s": 50.0}}}
    assert suite.reward_rows(slow, "cuda")[0]["met"] is False
    cpu = suite.reward_rows({**d, "setup": {"config": "tiny"}}, "cpu")
    assert cpu[0]["met"] is None and "GPU with Hiera-L" in cpu[0]["note"]


def test_learner_mfu_goal_on_gpu_tokens_on_cpu():
    d = {"tokens_per_s": 10174.3, "mfu_vs_h200_bf16_peak": 0.1242, "goal_mfu": 0.45, "peak_gpu_mem_gb": 93.64}
    gpu = suite.learner_rows(d, "cuda")
    assert gpu[0]["figure"] == "12.4%" and gpu[0]["met"] is False and gpu[0]["goal"] == ">= 45%"
    cpu = suite.learner_rows({**d, "mfu_vs_h200_bf16_peak": None}, "cpu")
    assert len(cpu) == 1 and cpu[0]["met"] is None and cpu[0]["value"] == 10174.3


def test_weight_sync_rows_include_skips_and_engine():
    tiny = {"gb": 0.003, "ours": {"total_s": 0.05, "total_gbps": 0.07, "sha256_share_of_write": 0.3},
            "raw": {"total_s": 0.025, "total_gbps": 0.13}, "ratio_ours_over_raw": {"total": 2.0}}
    d = {"results": {"tiny": tiny, "qwen3-vl-2b": {"skipped": "needs ~23 GiB"}},
         "engine": {"load_weights_s": 0.12, "raw_read_s": 0.004, "ratio_load_over_raw_read": 30.0}}
    rows = suite.weight_sync_rows(d, "cpu")
    assert [r["ratio"] for r in rows] == [2.0, None, 30.0]
    assert "sha256 is 30.0%" in rows[0]["note"] and rows[1]["note"] == "needs ~23 GiB"
    assert suite.weight_sync_rows({"engine": {"skipped": "no vllm"}}, "cpu")[0]["note"] == "no vllm"


def test_e2e_overlap_goal():
    d = {"sync": {"step": 8.0, "rollout": 4.0, "train": 2.0}, "async": {"step": 4.4},
         "speedup_async_over_sync": 1.818, "overlap_ratio": 1.1, "overlap_ratio_vs_learner_side": 0.9,
         "peak_child_tree_pss_mb": 6000.0, "note": "2 cores"}
    step, overlap, other = suite.e2e_rows(d, "cpu")
    assert step["ratio"] == 1.818 and overlap["met"] is True and overlap["note"] == "2 cores"
    assert other["met"] is None and step["peak_memory"] == "RSS 6,000 MiB"
    assert suite.e2e_rows({**d, "overlap_ratio": 1.6}, "cpu")[1]["met"] is False


def test_env_rows_per_source():
    d = {"results": {"mp4": {"naive": {"frames_per_s": 5.0}, "cold": {"frames_per_s": 7.5},
                             "lru": {"frames_per_s": 17000.0}}}}
    (r,) = suite.env_rows(d, "cpu")
    assert r["ratio"] == 1.5 and r["met"] is None and "17,000" in r["note"]


# ----------------------------------------------------------------------------- records, summary, markdown
def test_failed_stage_keeps_exit_code_and_log_tail(tmp_path):
    log = tmp_path / "bad.log"
    script = "import sys; print('step one'); print('Traceback: boom', file=sys.stderr); sys.exit(3)"
    rec = suite.run_stage("env", ["-c", script], tmp_path / "env.json", log, timeout_s=60)
    assert rec["status"] == "failed" and rec["exit_code"] == 3 and rec["json"] is None
    assert rec["log_tail"][-1] == "Traceback: boom"
    (first,) = suite.stage_rows(rec, None, "cpu")
    assert first["metric"] == "failed (exit 3)" and first["note"] == "Traceback: boom"


def test_stale_stage_json_is_removed_and_timeouts_recorded(tmp_path):
    stale = tmp_path / "env.json"
    stale.write_text("{}")
    sleeper = ["-c", "import time; time.sleep(30)"]
    rec = suite.run_stage("env", sleeper, stale, tmp_path / "t.log", timeout_s=0.5)
    assert rec["status"] == "timeout" and not stale.exists() and rec["json"] is None
    assert suite.stage_rows(rec, None, "cpu")[0]["metric"] == "timed out"


def test_summary_and_markdown(tmp_path):
    rollout_json = tmp_path / "rollout.json"
    rollout_json.write_text(json.dumps(ROLLOUT))
    records = [
        {"stage": "rollout", "status": "ok", "exit_code": 0, "seconds": 95.0, "json": str(rollout_json)},
        {"stage": "e2e", "status": "not_run", "reason": suite.NO_GPU_VLLM, "seconds": None},
        {"stage": "learner", "status": "failed", "exit_code": 1, "seconds": 3.0, "json": None,
         "command": "python -m benchmarks.bench_learner", "log": "l.log", "log_tail": ["x", "OOM | here"]},
        {"stage": "env", "status": "ok", "exit_code": 0, "seconds": 2.0, "json": str(tmp_path / "gone.json")},
    ]
    summary = suite.build_summary(records, "cuda", True, "python -m benchmarks.run --quick", 100.0)
    rows = summary["rows"]
    assert [r["stage"] for r in rows] == ["rollout", "rollout", "e2e", "learner", "env"]
    assert rows[0]["seconds"] == 95.0 and rows[2]["note"] == suite.NO_GPU_VLLM
    assert rows[4]["metric"] == "no readable result JSON"  # the JSON is gone: a row, no exception
    assert rows[2]["goal"] == "overlap ratio <= 1.15" and rows[3]["goal"] == "MFU >= 45% (GPU)"
    json.dumps(summary)  # summary.json must serialise
    md = suite.render_markdown(summary)
    lines = md.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("| stage |"))
    table = lines[header:header + 2 + len(rows)]
    assert all(l.count(" | ") == 8 for l in table)  # 9 columns everywhere, pipes in notes escaped
    assert "| rollout | multi-turn vs single-pass generated tokens/s | 431 tok/s |" in md
    assert "| yes |" in md and "not run on this machine" in md
    assert "## learner: failed (exit 1)" in md and "OOM \\| here" in md
    assert "`python -m benchmarks.run --quick`" in md


def test_main_records_not_run_stages_without_running_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "skip_reason", lambda stage, device: "not here")
    monkeypatch.setattr(suite, "run_stage", lambda *a, **k: pytest.fail("nothing may run"))
    monkeypatch.setattr(sys, "argv", ["run.py"])
    assert suite.main(["--device", "cuda", "--out-dir", str(tmp_path), "--stages", "rollout", "e2e"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["not_run", "not_run"]
    md = (tmp_path / "SUMMARY.md").read_text()
    assert "| rollout | not run on this machine |" in md and "| e2e | not run on this machine |" in md


def test_resummarize_keeps_the_run_and_rereads_relative_json_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "ROOT", tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "rollout.json").write_text(json.dumps(ROLLOUT))
    assert suite.rel(tmp_path / "r" / "rollout.json") == "r/rollout.json"
    assert suite.rel(suite.Path("/elsewhere/x.json")) == "/elsewhere/x.json"
    old = {"command": "python -m benchmarks.run --quick", "date": "then", "device": "cpu", "quick": True,
           "machine": {"cpu_count": 2}, "total_seconds": 584.0, "rows": [],
           "stages": [{"stage": "rollout", "status": "ok", "exit_code": 0, "seconds": 86.8,
                       "json": "r/rollout.json"}]}
    new = suite.rebuild_summary(old)
    assert (new["date"], new["total_seconds"], new["command"]) == ("then", 584.0, old["command"])
    assert new["rows"][0]["ratio"] == 0.909 and new["rebuilt"]
    assert "summary rebuilt from the stage JSONs" in suite.render_markdown(new)
