"""`ray job submit` through cluster.submit against a local head started by cluster.local_head.

The head is started once for the module (bound to loopback, its own ports, token and temp dir) and
stopped at the end; stopping must leave none of its processes behind. The preflight jobs check
the submission mechanics (upload excludes, runtime env, logs, exit status); the training job runs
the real driver, `python -m learner.main --preset debug_cpu run.steps=1`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from cluster.local_head import processes_of_head, start_head, stop_head
from cluster.ray_setup import DEFAULT_ENV_VARS, PROJECT_ROOT
from cluster.roles import local_num_cpus
from configs import load_config

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def job_head(tmp_path_factory):
    state_file = tmp_path_factory.mktemp("job_head") / "state.json"
    state = start_head(state_file, num_cpus=local_num_cpus(load_config("debug_cpu")))
    assert state["dashboard_url"].startswith("http://127.0.0.1:")
    yield state, state_file
    stop_head(state_file)
    assert not state_file.exists()
    assert processes_of_head(state, include_group=False) == []


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k == "RAY_USAGE_STATS_ENABLED"}


def submit(state_file: Path, submission_id: str, *entrypoint: str, timeout: float = 600):
    return subprocess.run([sys.executable, "-m", "cluster.submit", "--state-file", str(state_file),
                           "--submission-id", submission_id, "--", *entrypoint],
                          cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def job_status(state: dict, submission_id: str) -> str:
    """The job's status from the head's job API (the same endpoint `ray job status` reads)."""
    request = urllib.request.Request(f"{state['dashboard_url']}/api/jobs/{submission_id}")
    request.add_header("Authorization", "Bearer " + Path(state["auth_token_path"]).read_text().strip())
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["status"]


def driver_log(state: dict, submission_id: str) -> Path:
    return Path(state["temp_dir"]) / "session_latest" / "logs" / f"job-driver-{submission_id}.log"


def test_preflight_as_a_submitted_job(job_head, tmp_path):
    state, state_file = job_head
    job_id = f"preflight-{uuid.uuid4().hex[:8]}"
    report_path = tmp_path / "preflight.json"
    proc = submit(state_file, job_id, "python", "-m", "cluster.preflight", "--preset", "debug_cpu",
                  "--out", str(report_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert job_status(state, job_id) == "SUCCEEDED"
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["started_here"] is False
    assert report["address"] == state["gcs_address"]
    assert report["cluster"]["total"]["CPU"] == local_num_cpus(load_config("debug_cpu"))
    job = report["job"]
    assert job is not None, "the preflight did not run inside a Ray job"
    # The working dir is the uploaded project without the heavy or private directories.
    assert {"cluster", "configs", "learner", "pyproject.toml"} <= set(job["entries"])
    assert not {".venv", ".cache", "runs", ".git"} & set(job["entries"])
    assert Path(job["working_dir"]) != PROJECT_ROOT
    assert set(DEFAULT_ENV_VARS) <= set(job["runtime_env_vars"])
    log = driver_log(state, job_id)
    assert log.exists() and '"ok": true' in log.read_text()


def test_a_failing_job_fails_the_submission(job_head):
    state, state_file = job_head
    job_id = f"preflight-gpu-{uuid.uuid4().hex[:8]}"
    # The head has no GPUs: a learner asking for one cannot be placed, so preflight exits 1.
    proc = submit(state_file, job_id, "python", "-m", "cluster.preflight", "--preset", "debug_cpu",
                  "cluster.learner.num_gpus=1")
    assert proc.returncode != 0
    assert job_status(state, job_id) == "FAILED"
    assert "learner:" in driver_log(state, job_id).read_text()


@pytest.mark.slow
def test_training_job_runs_one_step(job_head, tmp_path):
    """The real driver as a Ray job. Needs learner.main to train one debug step and write
    <run.output_dir>/config.yaml and metrics.jsonl (one JSON object per step)."""
    state, state_file = job_head
    job_id = f"train-{uuid.uuid4().hex[:8]}"
    run_dir = tmp_path / "run"
    proc = submit(state_file, job_id, "python", "-m", "learner.main", "--preset", "debug_cpu", "run.steps=1",
                  f"run.output_dir={run_dir}",
                  # .cache is not uploaded: point the job at the tiny models already built here.
                  f"model.cache_dir={PROJECT_ROOT / '.cache' / 'videoseg'}",
                  timeout=1800)
    log = driver_log(state, job_id)
    assert proc.returncode == 0, (proc.stdout[-4000:] + proc.stderr[-2000:]
                                  + (log.read_text()[-4000:] if log.exists() else ""))
    assert job_status(state, job_id) == "SUCCEEDED"
    assert log.exists()
    assert (run_dir / "config.yaml").exists()
    text = (run_dir / "metrics.jsonl").read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines and "step" in lines[-1]
