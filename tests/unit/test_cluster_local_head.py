"""The local head helper without starting Ray: ports, command, environment, and what stop may end."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from cluster import local_head
from cluster.local_head import (
    PORT_FLAGS,
    assign_ports,
    client_environment,
    head_command,
    head_environment,
    pick_free_ports,
    pid_alive,
    stop_head,
    write_token,
)


def test_free_ports_are_distinct_and_bindable():
    ports = pick_free_ports(5, reserved={1})
    assert len(set(ports)) == 5 and 1 not in ports
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_assign_ports_pins_and_fills():
    ports = assign_ports({"port": 40111, "dashboard-port": None})
    assert set(ports) == set(PORT_FLAGS)
    assert ports["port"] == 40111
    assert len(set(ports.values())) == len(PORT_FLAGS)
    with pytest.raises(ValueError, match="unknown port names"):
        assign_ports({"redis-port": 1})


def test_head_command_binds_dashboard_to_loopback_and_blocks():
    ports = assign_ports()
    cmd = head_command(ports, "/tmp/vso3-ray-x", 4, resources={"videoseg_learner": 2})
    assert cmd[1:4] == ["start", "--head", "--block"]
    assert "--dashboard-host=127.0.0.1" in cmd and "--temp-dir=/tmp/vso3-ray-x" in cmd
    assert f"--port={ports['port']}" in cmd and f"--dashboard-port={ports['dashboard-port']}" in cmd
    assert "--num-cpus=4" in cmd and '--resources={"videoseg_learner": 2}' in cmd
    assert not any(a.startswith("--num-gpus") for a in cmd)


def test_head_environment(tmp_path):
    base = {"PATH": "/usr/bin", "RAY_ADDRESS": "1.2.3.4:6379", "RAY_AUTH_TOKEN": "stale", "HOME": "/root"}
    env = head_environment(str(tmp_path / "t"), base)
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert "RAY_ADDRESS" not in env and "RAY_AUTH_TOKEN" not in env
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "t")
    assert env["HF_HUB_OFFLINE"] == "1" and env["RAY_USAGE_STATS_ENABLED"] == "0"


def test_token_file_is_private(tmp_path):
    path = write_token(tmp_path / "sub" / "head.token")
    text = open(path).read()
    assert len(text) == 64 and int(text, 16) >= 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert write_token(tmp_path / "other.token") and open(tmp_path / "other.token").read() != text


def test_client_environment():
    state = {"dashboard_url": "http://127.0.0.1:1", "gcs_address": "10.0.0.1:2", "auth_token_path": "/t"}
    assert client_environment(state) == {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:1",
                                         "RAY_ADDRESS": "10.0.0.1:2", "RAY_AUTH_MODE": "token",
                                         "RAY_AUTH_TOKEN_PATH": "/t"}


def test_stop_without_state_does_nothing(tmp_path):
    assert stop_head(tmp_path / "none.json", quiet=True) == []


def _sleeper(*extra_args):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *extra_args],
                            start_new_session=True)
    # Right after Popen returns, /proc/<pid>/cmdline can still read empty here (about half the time
    # in this sandbox); the processes these tests stand in for are long-lived, so wait until it shows.
    deadline = time.monotonic() + 10
    while "time.sleep(120)" not in local_head.cmdline(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def test_stop_never_touches_processes_that_are_not_the_heads(tmp_path):
    """A stale state file whose pid now belongs to someone else: only our temp dir's processes end."""
    temp_dir = tmp_path / "vso3-ray-stale"
    temp_dir.mkdir()
    stranger = _sleeper()                   # reused pid/group: not a `ray start` of ours
    leftover = _sleeper(str(temp_dir))      # names our temp dir: one of ours that outlived the head
    try:
        state = {"pid": stranger.pid, "pgid": stranger.pid, "temp_dir": str(temp_dir),
                 "auth_token_path": str(tmp_path / "x.token")}
        path = tmp_path / "state.json"
        path.write_text(json.dumps(state))
        signalled = stop_head(path, grace_s=1)
        assert signalled == [leftover.pid]
        leftover.wait(timeout=30)
        assert pid_alive(stranger.pid), "stop ended a process that was not the head's"
        assert not path.exists() and not temp_dir.exists()
    finally:
        for p in (stranger, leftover):
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize("temp_dir", ["", "/", "relative/vso3-ray-x", "/usr"])
def test_a_state_file_naming_no_temp_dir_of_ours_matches_and_deletes_nothing(tmp_path, temp_dir):
    stranger = _sleeper(temp_dir or "x")  # its command line contains the bogus path
    victim = tmp_path / "keep.token"
    victim.write_text("not ours")
    try:
        path = tmp_path / "state.json"
        path.write_text(json.dumps({"pid": stranger.pid, "pgid": stranger.pid, "temp_dir": temp_dir,
                                    "auth_token_path": str(victim)}))
        assert stop_head(path, grace_s=1) == []
        assert pid_alive(stranger.pid) and victim.exists() and not path.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_start_refuses_when_a_head_is_recorded_and_running(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"pid": os.getpid(), "temp_dir": "/x", "dashboard_url": "http://h:1"}))
    monkeypatch.setattr(local_head, "_is_our_head", lambda state: True)
    with pytest.raises(local_head.LocalHeadError, match="already running"):
        local_head.start_head(path)


def test_status_and_env_commands_without_a_head(tmp_path, capsys):
    path = tmp_path / "state.json"
    assert local_head.main(["status", "--state-file", str(path)]) == 1
    assert json.loads(capsys.readouterr().out)["running"] is False
    assert local_head.main(["env", "--state-file", str(path)]) == 1


def test_pid_alive_sees_exit_and_zombies():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    assert pid_alive(proc.pid)
    proc.kill()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert not pid_alive(proc.pid)
    proc.wait()
