"""init_ray / placement / shutdown_ray on real local Ray instances.

Each scenario runs as its own driver process (as learner.main would): a Python process keeps one
Ray connection and caches its auth token, so scenarios in the pytest process would leak into each
other and into other test modules. A local head with two logical GPUs (Ray accepts declared GPUs
on a CPU machine) and the `videoseg_learner` resource stands in for a GPU cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from cluster.local_head import (
    client_environment,
    cmdline,
    head_status,
    processes_of_head,
    start_head,
    stop_head,
)
from cluster.ray_setup import PROJECT_ROOT

pytestmark = pytest.mark.ray

PREAMBLE = """
import json, os
import ray
from configs import load_config
from cluster.ray_setup import (RaySetupError, actor_options, create_role_placement, init_ray,
                               remove_role_placement, shutdown_ray)
from cluster.roles import local_num_cpus
"""


def run_driver(code: str, extra_env: dict | None = None, timeout: float = 300) -> dict:
    """Run `code` as a driver process; it prints one JSON object as its last line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k == "RAY_USAGE_STATS_ENABLED"}
    env.update(extra_env or {})
    proc = subprocess.run([sys.executable, "-c", PREAMBLE + textwrap.dedent(code)], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def processes_naming(text: str) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and text in cmdline(int(p))]


def wait_until_gone(text: str, timeout_s: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout_s
    left = processes_naming(text)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = processes_naming(text)
    return left


def test_local_start_sizes_cpus_sets_env_and_shuts_down():
    out = run_driver("""
        cfg = load_config("debug_cpu", ["cluster.include_dashboard=true"])
        ctx = init_ray(cfg, extra_env={"VSO3_PROBE": "yes"})

        @ray.remote
        def probe():
            keys = ("VSO3_PROBE", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "PYTHONPATH")
            return {k: os.environ.get(k) for k in keys}

        @ray.remote
        class Resources:
            def mine(self):
                return ray.get_runtime_context().get_assigned_resources()

        env_seen = ray.get(probe.remote())
        placements = create_role_placement(cfg)
        actor = Resources.options(**actor_options(cfg, "env", placements, 0)).remote()
        assigned = ray.get(actor.mine.remote())
        cpus = ray.cluster_resources()["CPU"]
        shutdown_ray(ctx, placements)
        print(json.dumps({"started_here": ctx.started_here, "address": ctx.address, "cpus": cpus,
                          "want_cpus": local_num_cpus(cfg), "env": env_seen, "assigned": assigned,
                          "placements": {k: v is None for k, v in placements.items()},
                          "dashboard": ctx.dashboard_url, "namespace": ctx.namespace,
                          "still_initialized": ray.is_initialized()}))
    """)
    assert out["started_here"] is True and out["still_initialized"] is False
    assert out["cpus"] == out["want_cpus"] == 4
    assert out["env"] == {"VSO3_PROBE": "yes", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                          "PYTHONPATH": str(PROJECT_ROOT)}
    assert out["assigned"] == {"CPU": 0.25}
    assert all(out["placements"].values())  # CPU-only roles get no placement group
    assert out["dashboard"].startswith("http://127.0.0.1:")
    assert out["namespace"] == "videoseg-debug_cpu"
    # The instance we started is gone: no process names its GCS address any more.
    assert wait_until_gone(f"--gcs-address={out['address']}") == []


@pytest.fixture(scope="module")
def gpu_head(tmp_path_factory):
    state_file = tmp_path_factory.mktemp("gpu_head") / "state.json"
    state = start_head(state_file, num_cpus=8, num_gpus=2, resources={"videoseg_learner": 2})
    yield state, state_file
    stop_head(state_file)
    assert processes_of_head(state, include_group=False) == []


def _client_env(state):
    return client_environment(state)


def test_connect_places_gpu_roles_and_leaves_the_cluster_running(gpu_head):
    state, state_file = gpu_head
    out = run_driver("""
        # cluster.ray_address points nowhere: RAY_ADDRESS (the head) must win.
        cfg = load_config("debug_cpu", ["cluster.ray_address=127.0.0.1:1", "learner.num_ranks=2",
                                        "cluster.learner.num_gpus=1", "cluster.learner.num_cpus=1"])
        ctx = init_ray(cfg)
        placements = create_role_placement(cfg, timeout_s=120)
        pg = placements["learner"]

        @ray.remote
        class Rank:
            def gpus(self):
                return [int(g) for g in ray.get_gpu_ids()]

        ranks = [Rank.options(**actor_options(cfg, "learner", placements, i)).remote() for i in range(2)]
        gpus = sorted(ray.get([r.gpus.remote() for r in ranks]))
        bundles = pg.bundle_specs
        before = ray.util.placement_group_table(pg)["state"]
        for r in ranks:
            ray.kill(r)
        remove_role_placement(placements)
        after = ray.util.placement_group_table(pg)["state"]
        shutdown_ray(ctx)
        print(json.dumps({"started_here": ctx.started_here, "address": ctx.address, "bundles": bundles,
                          "cpu_roles": [r for r, p in placements.items() if p is None], "gpus": gpus,
                          "before": before, "after": after}))
    """, _client_env(state))
    assert out["started_here"] is False and out["address"] == state["gcs_address"]
    assert out["bundles"] == [{"CPU": 1.0, "GPU": 1.0, "videoseg_learner": 1.0}] * 2
    assert out["cpu_roles"] == ["rollout", "reward", "env"]
    assert out["gpus"] == [[0], [1]]  # one logical GPU per rank, each its own
    assert (out["before"], out["after"]) == ("CREATED", "REMOVED")
    status = head_status(state_file)
    assert status["running"] and status["job_api_ready"]  # disconnecting did not stop the cluster


def test_unplaceable_roles_raise_and_release_their_groups(gpu_head):
    state, _ = gpu_head
    out = run_driver("""
        cfg = load_config("debug_cpu", ["learner.num_ranks=3", "cluster.learner.num_gpus=1",
                                        "cluster.learner.num_cpus=1"])
        ctx = init_ray(cfg)
        try:
            create_role_placement(cfg, timeout_s=5)
            error = None
        except RaySetupError as exc:
            error = str(exc)
        states = [t["state"] for t in ray.util.placement_group_table().values()]
        shutdown_ray(ctx)
        print(json.dumps({"error": error, "states": states}))
    """, _client_env(state))
    assert out["error"] and "not placed within 5 s" in out["error"] and "'GPU': 1.0" in out["error"]
    assert out["states"] and set(out["states"]) == {"REMOVED"}


def _preflight(state, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(_client_env(state))
    return subprocess.run([sys.executable, "-m", "cluster.preflight", "--preset", "debug_cpu", *args],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_preflight_against_the_head(gpu_head):
    state, _ = gpu_head
    fits = _preflight(state, "learner.num_ranks=2", "cluster.learner.num_gpus=1")
    assert fits.returncode == 0, fits.stderr[-3000:]
    report = json.loads(fits.stdout)
    assert report["ok"] and report["started_here"] is False and report["job"] is None
    assert report["cluster"]["total"]["GPU"] == 2.0 and report["cluster"]["total"]["videoseg_learner"] == 2.0
    assert report["needs"]["roles"]["learner"]["pinned_to_resource"] == "videoseg_learner"
    short = _preflight(state, "learner.num_ranks=3", "cluster.learner.num_gpus=1")
    assert short.returncode == 1
    assert any(p.startswith("learner:") for p in json.loads(short.stdout)["problems"])
