"""`python -m cluster.local_head start|stop|status`: a Ray head on this machine for `ray job submit`.

    .venv/bin/python -m cluster.local_head start [--preset debug_cpu] [--num-cpus N] [--port P]
    .venv/bin/python -m cluster.local_head status
    .venv/bin/python -m cluster.local_head stop

Several people and test runs share one machine, so the head is careful about what it touches:
- every port is picked free at start (the GCS never takes Redis's 6379); `--port` and
  `--dashboard-port` pin the two that users type;
- the dashboard and its job API bind 127.0.0.1 (Ray's core gRPC servers listen on every
  interface and Ray 2.60 has no switch for that), and the head runs with Ray's token
  authentication, using a token of its own (a 0600 file beside the state file);
- the head gets its own temp dir, so its `ray_current_cluster` file never makes someone else's
  `ray.init()` attach to it;
- `ray start --head --block` runs in a new session; the pid, the process group and the temp dir
  go into a state file (default .cache/ray_local_head/state.json);
- stop signals that process (it stops its own Ray processes), then ends what is left of that
  process group or names the temp dir on its command line. Never `ray stop`: that ends every Ray
  process of the user on the machine, other people's included.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from cluster.ray_setup import DEFAULT_ENV_VARS, PROJECT_ROOT

DEFAULT_STATE_FILE = PROJECT_ROOT / ".cache" / "ray_local_head" / "state.json"

# Ports `ray start --head` opens; all are chosen free so nothing collides with another instance.
PORT_FLAGS = (
    "port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
    "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
    "metrics-export-port",
)


class LocalHeadError(RuntimeError):
    pass


# ------------------------------------------------------------------------------ helpers
def pick_free_ports(n: int, reserved: set[int] | None = None) -> list[int]:
    """n distinct ports that are free on every interface right now (Ray binds some on all)."""
    reserved = set(reserved or ())
    ports: list[int] = []
    with ExitStack() as stack:
        while len(ports) < n:
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("", 0))
            port = s.getsockname()[1]
            if port not in reserved and port not in ports:
                ports.append(port)
    return ports


def assign_ports(pinned: dict[str, int] | None = None) -> dict[str, int]:
    pinned = {k: v for k, v in (pinned or {}).items() if v}
    unknown = set(pinned) - set(PORT_FLAGS)
    if unknown:
        raise ValueError(f"unknown port names {sorted(unknown)}; known: {PORT_FLAGS}")
    free = iter(pick_free_ports(len(PORT_FLAGS) - len(pinned), set(pinned.values())))
    return {flag: pinned.get(flag) or next(free) for flag in PORT_FLAGS}


def ray_executable() -> str:
    """The `ray` script of the running interpreter's environment (not whatever is on PATH)."""
    candidate = Path(sys.executable).parent / "ray"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise LocalHeadError("the `ray` command was not found next to this Python or on PATH")
    return found


def head_command(ports: dict[str, int], temp_dir: str, num_cpus: int | None,
                 num_gpus: int | None = None, resources: dict | None = None,
                 dashboard_host: str = "127.0.0.1") -> list[str]:
    cmd = [ray_executable(), "start", "--head", "--block", "--disable-usage-stats",
           "--include-dashboard=true", f"--dashboard-host={dashboard_host}", f"--temp-dir={temp_dir}"]
    cmd += [f"--{flag}={port}" for flag, port in ports.items()]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    if resources:
        cmd.append(f"--resources={json.dumps(resources)}")
    return cmd


def auth_environment(token_path: str) -> dict[str, str]:
    """Variables with which Ray clients (job CLI, drivers) authenticate to a token-auth cluster."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path}


def client_environment(state: dict) -> dict[str, str]:
    """Variables that point Ray tools at the head in `state`.

    RAY_API_SERVER_ADDRESS is what `ray job` commands read first; RAY_ADDRESS (the GCS address) is
    what `ray.init` and so a driver run by hand read.
    """
    env = {"RAY_API_SERVER_ADDRESS": state["dashboard_url"]}
    if state.get("gcs_address"):
        env["RAY_ADDRESS"] = state["gcs_address"]
    if state.get("auth_token_path"):
        env.update(auth_environment(state["auth_token_path"]))
    return env


def write_token(path: Path) -> str:
    """A fresh random token, readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return str(path)


def head_environment(token_path: str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the head and so of every job driver it runs.

    The interpreter's bin directory goes first on PATH: a job's entrypoint `python -m ...` must
    run with this environment's Python, not the system one. The auth variables reach job drivers
    too, so their `ray.init()` authenticates to this head.
    """
    env = dict(os.environ if base is None else base)
    for name in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_API_SERVER_ADDRESS"):
        env.pop(name, None)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for key, value in DEFAULT_ENV_VARS.items():
        env.setdefault(key, value)
    env.pop("RAY_AUTH_TOKEN", None)  # would win over the token file
    if token_path:
        env.update(auth_environment(token_path))
    return env


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not alive for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


TEMP_PREFIX = "vso3-ray-"


def _own_temp_dir(state: dict) -> str | None:
    """The head's temp dir if the state names one we made; None for anything else.

    It is used to find processes (by command line) and is deleted on stop, so an empty, edited or
    foreign path in a state file must match nothing and delete nothing.
    """
    path = str(state.get("temp_dir") or "")
    if os.path.isabs(path) and Path(path).name.startswith(TEMP_PREFIX):
        return path
    return None


def _is_our_head(state: dict) -> bool:
    """The pid in the state file is still our `ray start` (pids get reused)."""
    temp_dir = _own_temp_dir(state)
    line = cmdline(state["pid"])
    return (temp_dir is not None and pid_alive(state["pid"]) and "start" in line and "--head" in line
            and f"--temp-dir={temp_dir}" in line)


def processes_of_head(state: dict, include_group: bool = True) -> list[int]:
    """Live processes belonging to this head: its process group, or naming its temp dir.

    `include_group=False` when the head process was already gone before we looked: its group id
    may since have been reused, and only the temp dir (a unique path) still identifies our processes.
    """
    temp_dir = _own_temp_dir(state)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            in_group = include_group and os.getpgid(pid) == state["pgid"]
        except OSError:
            continue
        if (in_group or (temp_dir is not None and temp_dir in cmdline(pid))) and pid_alive(pid):
            found.append(pid)
    return sorted(found)


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise LocalHeadError(f"state file {path} is not valid JSON: {exc}") from None


def job_api_ready(url: str, token_path: str | None = None, timeout_s: float = 5.0) -> bool:
    """The job API answers an authenticated request (it is what `ray job submit` talks to)."""
    request = urllib.request.Request(f"{url}/api/jobs/")
    if token_path:
        request.add_header("Authorization", "Bearer " + Path(token_path).read_text().strip())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _log_tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ------------------------------------------------------------------------------ commands
def start_head(state_file: Path = DEFAULT_STATE_FILE, *, num_cpus: int | None = None,
               num_gpus: int | None = None, port: int | None = None, dashboard_port: int | None = None,
               resources: dict | None = None, timeout_s: float = 180.0, attempts: int = 2) -> dict:
    """Start the head, wait until its job API answers, write and return the state."""
    state_file = Path(state_file)
    old = read_state(state_file)
    if old is not None:
        if _is_our_head(old):
            raise LocalHeadError(f"a local head from {state_file} is already running (pid {old['pid']}, "
                                 f"dashboard {old['dashboard_url']}); stop it first")
        state_file.unlink()  # stale: its process is gone
    state_file.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(attempts):  # a port picked free can be taken before Ray binds it: retry once
        state = _start_once(state_file, num_cpus, num_gpus, port, dashboard_port, resources, timeout_s)
        if isinstance(state, dict):
            return state
        last_error = state
    raise LocalHeadError(last_error)


def _start_once(state_file, num_cpus, num_gpus, port, dashboard_port, resources, timeout_s) -> dict | str:
    ports = assign_ports({"port": port, "dashboard-port": dashboard_port})
    # Short path under /tmp: Ray puts unix sockets in it and socket paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX)
    log_file = str(state_file.with_suffix(".log"))
    token_path = write_token(state_file.with_suffix(".token"))
    cmd = head_command(ports, temp_dir, num_cpus, num_gpus, resources)
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=head_environment(token_path), cwd=str(PROJECT_ROOT),
                                start_new_session=True)
    state = {
        "pid": proc.pid, "pgid": os.getpgid(proc.pid), "temp_dir": temp_dir, "log_file": log_file,
        "auth_token_path": token_path,
        "ports": ports, "dashboard_url": f"http://127.0.0.1:{ports['dashboard-port']}",
        "gcs_address": None, "num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources or {},
        "started_at": time.time(), "python": sys.executable, "command": cmd,
    }
    # Written before waiting so that a crash of this command still leaves a way to stop the head.
    state_file.write_text(json.dumps(state, indent=2))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop_head(state_file, quiet=True)
            return f"ray start exited with code {proc.returncode}; log {log_file}:\n{_log_tail(log_file)}"
        address_file = Path(temp_dir) / "ray_current_cluster"
        if address_file.exists() and job_api_ready(state["dashboard_url"], token_path):
            state["gcs_address"] = address_file.read_text().strip()
            state_file.write_text(json.dumps(state, indent=2))
            return state
        time.sleep(1.0)
    stop_head(state_file, quiet=True)
    return f"the head did not answer within {timeout_s:g} s; log {log_file}:\n{_log_tail(log_file)}"


def stop_head(state_file: Path = DEFAULT_STATE_FILE, *, grace_s: float = 30.0, keep_temp: bool = False,
              quiet: bool = False) -> list[int]:
    """Stop the head recorded in `state_file`; returns the pids that had to be signalled."""
    state_file = Path(state_file)
    state = read_state(state_file)
    if state is None:
        if not quiet:
            print(f"no local head recorded in {state_file}", file=sys.stderr)
        return []
    signalled: list[int] = []
    head_was_ours = _is_our_head(state)
    if head_was_ours:
        # `ray start --block` handles SIGTERM by stopping the Ray processes it started.
        os.kill(state["pid"], signal.SIGTERM)
        signalled.append(state["pid"])
        _wait_gone([state["pid"]], grace_s)
    leftovers = processes_of_head(state, include_group=head_was_ours)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not leftovers:
            break
        for pid in leftovers:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        signalled.extend(p for p in leftovers if p not in signalled)
        _wait_gone(leftovers, 10.0)
        leftovers = processes_of_head(state, include_group=head_was_ours)
    if leftovers:
        raise LocalHeadError(f"processes {leftovers} of the head survived SIGKILL")
    if not keep_temp and _own_temp_dir(state):
        shutil.rmtree(_own_temp_dir(state), ignore_errors=True)
    token = state_file.with_suffix(".token")  # where start wrote it; never a path read from the state
    if state.get("auth_token_path") == str(token):
        token.unlink(missing_ok=True)
    state_file.unlink(missing_ok=True)
    return signalled


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)


def head_status(state_file: Path = DEFAULT_STATE_FILE) -> dict:
    state = read_state(Path(state_file))
    if state is None:
        return {"running": False, "state_file": str(state_file)}
    running = _is_our_head(state)
    return {**state, "running": running, "state_file": str(state_file),
            "job_api_ready": running and job_api_ready(state["dashboard_url"], state.get("auth_token_path"))}


# ------------------------------------------------------------------------------ CLI
def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m cluster.local_head", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    st = sub.add_parser("start", help="start a head on this machine and wait until it answers")
    st.add_argument("--preset", default="debug_cpu", help="size the head's CPUs for this preset")
    st.add_argument("--num-cpus", type=int, default=None,
                    help="logical CPUs (default: what the preset needs)")
    st.add_argument("--num-gpus", type=int, default=None, help="GPUs (default: Ray detects them)")
    st.add_argument("--port", type=int, default=None, help="GCS port (default: a free one)")
    st.add_argument("--dashboard-port", type=int, default=None, help="dashboard port (default: a free one)")
    st.add_argument("--resources", default=None,
                    help='custom resources as JSON, e.g. \'{"videoseg_learner": 1}\'')
    st.add_argument("--timeout", type=float, default=180.0)
    sp = sub.add_parser("stop", help="stop the head recorded in the state file")
    sp.add_argument("--keep-temp", action="store_true", help="keep the head's temp dir (its logs)")
    sub.add_parser("status", help="print the head's state as JSON; exit 0 if it runs")
    sub.add_parser("env", help="print `export` lines that point Ray tools at the head: "
                               'eval "$(python -m cluster.local_head env)"')
    for p in (st, sp, sub.choices["status"], sub.choices["env"]):
        p.add_argument("--state-file", type=Path, default=DEFAULT_STATE_FILE)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    try:
        if args.command == "start":
            num_cpus = args.num_cpus
            if num_cpus is None:
                from cluster.roles import local_num_cpus
                from configs import ConfigError, load_config

                try:
                    num_cpus = local_num_cpus(load_config(args.preset))
                except ConfigError as exc:
                    print(f"local_head: cannot size the head from preset {args.preset} ({exc}); "
                          "give --num-cpus", file=sys.stderr)
                    return 2
            resources = json.loads(args.resources) if args.resources else None
            state = start_head(args.state_file, num_cpus=num_cpus, num_gpus=args.num_gpus, port=args.port,
                               dashboard_port=args.dashboard_port, resources=resources,
                               timeout_s=args.timeout)
            print(json.dumps(state, indent=2))
            print("\nlocal head up. Submit a job (the wrapper finds this head through the state file):\n"
                  "  .venv/bin/python -m cluster.submit -- python -m cluster.preflight\n"
                  "Point other Ray tools at it:  eval \"$(.venv/bin/python -m cluster.local_head env)\"\n"
                  "Stop it:  .venv/bin/python -m cluster.local_head stop", file=sys.stderr)
            return 0
        if args.command == "stop":
            pids = stop_head(args.state_file, keep_temp=args.keep_temp)
            print(json.dumps({"stopped": bool(pids), "signalled_pids": pids}))
            return 0
        status = head_status(args.state_file)
        if args.command == "env":
            if not status["running"]:
                print(f"local_head: no running head in {args.state_file}", file=sys.stderr)
                return 1
            print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in client_environment(status).items()))
            return 0
        print(json.dumps(status, indent=2))
        return 0 if status["running"] else 1
    except LocalHeadError as exc:
        print(f"local_head: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
