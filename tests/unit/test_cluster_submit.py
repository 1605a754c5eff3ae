"""The `ray job submit` wrapper: command building and target resolution (nothing is submitted)."""

from __future__ import annotations

import json

import pytest

from cluster import submit
from cluster.ray_setup import PROJECT_ROOT, RaySetupError
from cluster.submit import DEFAULT_EXCLUDES, SubmitError, build_submit_command, resolve_submit_target


def _runtime_env(cmd):
    [arg] = [a for a in cmd if a.startswith("--runtime-env-json=")]
    return json.loads(arg.split("=", 1)[1])


def test_command_shape():
    cmd = build_submit_command(["python", "-m", "learner.main", "--preset", "debug_cpu", "run.steps=1"],
                               "http://127.0.0.1:8265", submission_id="run-1", no_wait=True,
                               env_vars={"EXTRA": "x"}, ray="ray")
    assert cmd[:3] == ["ray", "job", "submit"]
    assert "--address=http://127.0.0.1:8265" in cmd
    assert f"--working-dir={PROJECT_ROOT}" in cmd
    assert "--submission-id=run-1" in cmd and "--no-wait" in cmd
    cut = cmd.index("--")
    assert cmd[cut + 1:] == ["python", "-m", "learner.main", "--preset", "debug_cpu", "run.steps=1"]
    env = _runtime_env(cmd)
    for must in (".venv", ".cache", "runs"):
        assert must in env["excludes"]
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert env["env_vars"]["EXTRA"] == "x"
    assert "working_dir" not in env  # given once, as --working-dir


def test_command_rejects_bad_input():
    with pytest.raises(SubmitError, match="no entrypoint"):
        build_submit_command([], "http://127.0.0.1:8265", ray="ray")
    with pytest.raises(SubmitError, match="dashboard"):
        build_submit_command(["python"], "127.0.0.1:6379", ray="ray")
    with pytest.raises(RaySetupError, match="HF_TOKEN"):
        build_submit_command(["python"], "http://127.0.0.1:8265", env_vars={"HF_TOKEN": "t"}, ray="ray")


def _state(tmp_path, dashboard="http://127.0.0.1:5555"):
    token = tmp_path / "head.token"
    token.write_text("abc")
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"dashboard_url": dashboard, "auth_token_path": str(token)}))
    return path, token


def test_target_resolution(tmp_path):
    state, token = _state(tmp_path)
    assert resolve_submit_target(None, None, {"RAY_API_SERVER_ADDRESS": "http://h:1"}) == ("http://h:1", {})
    assert resolve_submit_target(None, None, {"RAY_ADDRESS": "https://h:2"}) == ("https://h:2", {})
    assert resolve_submit_target("http://x:3", None, {}) == ("http://x:3", {})
    url, env = resolve_submit_target(None, state, {"RAY_API_SERVER_ADDRESS": "http://ignored:1"})
    assert url == "http://127.0.0.1:5555"
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    with pytest.raises(SubmitError, match="no cluster to submit to"):
        resolve_submit_target(None, tmp_path / "missing.json", {})


def test_cli_dry_run_prints_the_command(tmp_path, capsys):
    state, _ = _state(tmp_path)
    rc = submit.main(["--state-file", str(state), "--dry-run", "--exclude", "data",
                      "--", "python", "-m", "cluster.preflight"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "job submit" in err and "--address=http://127.0.0.1:5555" in err
    assert '"data"' in err and "-- python -m cluster.preflight" in err


def test_cli_reports_errors(tmp_path, capsys):
    rc = submit.main(["--state-file", str(tmp_path / "none.json"), "--", "python"])
    assert rc == 2 and "no cluster to submit to" in capsys.readouterr().err
    assert submit.main(["--address", "http://h:1", "--env", "NOEQUALS", "--", "python"]) == 2


def test_default_excludes_cover_the_heavy_directories():
    assert {".venv", ".cache", "runs", ".git"} <= set(DEFAULT_EXCLUDES)
