"""`python -m cluster.submit`: `ray job submit` with this project's working dir, excludes and env.

    .venv/bin/python -m cluster.submit -- python -m learner.main --preset debug_cpu run.steps=1
    .venv/bin/python -m cluster.submit --address http://127.0.0.1:8265 --no-wait \
        -- python -m cluster.preflight
    .venv/bin/python -m cluster.submit --dry-run -- python -m learner.main   # print the command only

The job's working dir is the project root, uploaded without the virtualenv, caches, run outputs
and VCS data (DEFAULT_EXCLUDES); the cluster's Python must already have the project's
dependencies (the local head runs from this venv; the Docker images have them). The runtime env
carries DEFAULT_ENV_VARS plus `--env K=V`; secret-looking names are refused because the dashboard
shows runtime envs to anyone who can reach it.

Which cluster: --address, else RAY_API_SERVER_ADDRESS, else an http(s) RAY_ADDRESS, else the
head recorded by `python -m cluster.local_head` (whose auth token is then passed along).
The exit code is `ray job submit`'s: without --no-wait it follows the job and fails if the job does.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from cluster.local_head import DEFAULT_STATE_FILE, auth_environment, ray_executable, read_state
from cluster.ray_setup import DEFAULT_ENV_VARS, PROJECT_ROOT, check_no_secrets

# Never uploaded: a multi-GB virtualenv, model/data caches, run outputs (checkpoints), VCS data.
DEFAULT_EXCLUDES = (".venv", ".cache", "runs", ".git", "__pycache__", "*.pyc", ".pytest_cache",
                    ".hypothesis", "build", "dist", "*.egg-info")


class SubmitError(RuntimeError):
    pass


def job_runtime_env(env_vars: dict[str, str] | None = None,
                    excludes: tuple[str, ...] = DEFAULT_EXCLUDES) -> dict:
    """runtime_env of the job (the working dir is passed separately as --working-dir)."""
    merged = {**DEFAULT_ENV_VARS, **(env_vars or {})}
    check_no_secrets(merged)
    return {"excludes": list(excludes), "env_vars": merged}


def build_submit_command(entrypoint: list[str], address: str, *, working_dir: str | Path = PROJECT_ROOT,
                         env_vars: dict[str, str] | None = None,
                         excludes: tuple[str, ...] = DEFAULT_EXCLUDES, submission_id: str | None = None,
                         no_wait: bool = False, entrypoint_num_cpus: float | None = None,
                         ray: str | None = None) -> list[str]:
    """The `ray job submit` argv. `entrypoint` is the command the job runs, as separate words."""
    if not entrypoint:
        raise SubmitError("no entrypoint given: put the job's command after `--`")
    if not address.startswith(("http://", "https://")):
        raise SubmitError(f"job submission talks to the dashboard: address must be http(s)://host:port, "
                          f"got '{address}' (a GCS address host:port is for ray.init)")
    cmd = [ray or ray_executable(), "job", "submit", f"--address={address}",
           f"--working-dir={working_dir}",
           f"--runtime-env-json={json.dumps(job_runtime_env(env_vars, excludes), sort_keys=True)}"]
    if submission_id:
        cmd.append(f"--submission-id={submission_id}")
    if no_wait:
        cmd.append("--no-wait")
    if entrypoint_num_cpus is not None:
        cmd.append(f"--entrypoint-num-cpus={entrypoint_num_cpus}")
    return cmd + ["--", *entrypoint]


def resolve_submit_target(address: str | None, state_file: Path | None,
                          environ: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """(dashboard URL, extra environment for the `ray` CLI).

    An explicit --address is used as given (its credentials come from the caller's environment,
    unless --state-file names a local head whose token to use). Without one: the environment's
    http(s) address, else the local head recorded in the state file.
    """
    environ = os.environ if environ is None else environ
    if address is None and state_file is None:
        for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            value = environ.get(name, "")
            if value.startswith(("http://", "https://")):
                return value, {}
    if address is not None and state_file is None:
        return address, {}
    state_file = state_file or DEFAULT_STATE_FILE
    state = read_state(state_file)
    if state is None:
        raise SubmitError(
            f"no cluster to submit to: give --address http://HOST:DASHBOARD_PORT, set "
            f"RAY_API_SERVER_ADDRESS, or start a local head first (python -m cluster.local_head start); "
            f"no head is recorded in {state_file}")
    extra = auth_environment(state["auth_token_path"]) if state.get("auth_token_path") else {}
    return address or state["dashboard_url"], extra


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        if "=" not in pair:
            raise SubmitError(f"--env takes NAME=VALUE, got '{pair}'")
        key, value = pair.split("=", 1)
        env[key] = value
    return env


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m cluster.submit", description=__doc__.split("\n")[0],
                                 usage="%(prog)s [options] -- ENTRYPOINT ...")
    ap.add_argument("--address", default=None, help="dashboard URL http://host:port")
    ap.add_argument("--state-file", type=Path, default=None,
                    help="submit to the local head recorded here "
                         f"(default when no address: {DEFAULT_STATE_FILE})")
    ap.add_argument("--working-dir", default=str(PROJECT_ROOT))
    ap.add_argument("--exclude", action="append", default=[], help="extra upload exclude pattern")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the job's runtime env")
    ap.add_argument("--submission-id", default=None)
    ap.add_argument("--no-wait", action="store_true", help="return after submitting; do not follow the logs")
    ap.add_argument("--entrypoint-num-cpus", type=float, default=None)
    ap.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    if argv is None:
        argv = sys.argv[1:]
    if "--" in argv:
        cut = argv.index("--")
        args = ap.parse_args(argv[:cut])
        args.entrypoint = argv[cut + 1:]
    else:
        args = ap.parse_args(argv)
        args.entrypoint = []
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    try:
        address, extra_env = resolve_submit_target(args.address, args.state_file)
        cmd = build_submit_command(
            args.entrypoint, address, working_dir=args.working_dir, env_vars=_parse_env(args.env),
            excludes=DEFAULT_EXCLUDES + tuple(args.exclude), submission_id=args.submission_id,
            no_wait=args.no_wait, entrypoint_num_cpus=args.entrypoint_num_cpus)
    except (SubmitError, ValueError, RuntimeError) as exc:
        print(f"submit: {exc}", file=sys.stderr)
        return 2
    print("+ " + shlex.join(cmd), file=sys.stderr)
    if args.dry_run:
        return 0
    env = {**os.environ, **extra_env}
    if extra_env:
        env.pop("RAY_AUTH_TOKEN", None)  # it would win over the local head's token file
    return subprocess.call(cmd, env=env, cwd=args.working_dir)


if __name__ == "__main__":
    raise SystemExit(main())
