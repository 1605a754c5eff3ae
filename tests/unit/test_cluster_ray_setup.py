"""cluster.ray_setup helpers that need no Ray instance: addresses, runtime envs, actor options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cluster.ray_setup import (
    DEFAULT_ENV_VARS,
    PROJECT_ROOT,
    RaySetupError,
    check_no_secrets,
    driver_runtime_env,
    job_runtime_env,
    looks_secret,
    placement_options,
    ray_namespace,
    resolve_address,
    role_bundles,
    role_options,
)
from cluster.roles import role_demand
from configs import load_config


@pytest.fixture
def debug_cfg():
    return load_config("debug_cpu")


def test_importing_cluster_modules_starts_and_imports_no_ray():
    code = ("import sys, cluster.ray_setup, cluster.roles, cluster.preflight, cluster.submit, "
            "cluster.local_head, cluster.kuberay, cluster.manifest_checks, cluster.dockerfile_checks; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_ray_address_env_wins_over_config(debug_cfg):
    assert resolve_address(debug_cfg, {}) is None
    debug_cfg.cluster.ray_address = "10.0.0.5:6380"
    assert resolve_address(debug_cfg, {}) == "10.0.0.5:6380"
    assert resolve_address(debug_cfg, {"RAY_ADDRESS": "127.0.0.1:7000"}) == "127.0.0.1:7000"
    assert resolve_address(debug_cfg, {"RAY_ADDRESS": "  "}) == "10.0.0.5:6380"
    with pytest.raises(RaySetupError, match="dashboard"):
        resolve_address(debug_cfg, {"RAY_ADDRESS": "http://127.0.0.1:8265"})


def test_namespace_is_sanitised(debug_cfg):
    assert ray_namespace(debug_cfg) == "videoseg-debug_cpu"
    debug_cfg.run.name = "my run/2 ü"
    assert ray_namespace(debug_cfg) == "videoseg-my-run-2"


@pytest.mark.parametrize("name,secret", [
    ("HF_TOKEN", True), ("VIDEOSEG_REDIS_PASSWORD", True), ("AWS_SECRET_ACCESS_KEY", True),
    ("WANDB_API_KEY", True), ("TOKENIZERS_PARALLELISM", False), ("PYTHONPATH", False),
    ("HF_HUB_OFFLINE", False), ("MONKEY", False),
])
def test_looks_secret(name, secret):
    assert looks_secret(name) is secret


def test_driver_runtime_env_local_and_connect(debug_cfg):
    local = driver_runtime_env(debug_cfg, {"TORCH_EXTENSIONS_DIR": "/x", "HF_HUB_OFFLINE": "0"},
                               start_local=True)
    env = local["env_vars"]
    assert env["PYTHONPATH"] == str(PROJECT_ROOT)
    assert env["TORCH_EXTENSIONS_DIR"] == "/x"
    assert env["HF_HUB_OFFLINE"] == "0"  # extra_env wins over the defaults
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    connect = driver_runtime_env(debug_cfg, None, start_local=False)["env_vars"]
    assert "PYTHONPATH" not in connect and connect == DEFAULT_ENV_VARS


def test_driver_runtime_env_inside_a_job_drops_job_keys(debug_cfg):
    job = {"working_dir": "gcs://pkg.zip",
           "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}
    env = driver_runtime_env(debug_cfg, {"FOO": "1"}, start_local=False, job_env=job)
    # Ray refuses to merge a driver runtime_env repeating a job env var: only new keys remain.
    assert env == {"env_vars": {"TRANSFORMERS_OFFLINE": "1", "FOO": "1"}}
    everything = {"env_vars": dict(DEFAULT_ENV_VARS)}
    assert driver_runtime_env(debug_cfg, None, start_local=False, job_env=everything) == {}


def test_secrets_are_refused(debug_cfg):
    with pytest.raises(RaySetupError, match="VIDEOSEG_REDIS_PASSWORD"):
        driver_runtime_env(debug_cfg, {"VIDEOSEG_REDIS_PASSWORD": "x"}, start_local=True)
    check_no_secrets({"TOKENIZERS_PARALLELISM": "false"})


def test_job_runtime_env_parsing():
    assert job_runtime_env({}) is None
    raw = json.dumps({"runtime_env": {"env_vars": {"A": "1"}}, "metadata": {}})
    assert job_runtime_env({"RAY_JOB_CONFIG_JSON_ENV_VAR": raw}) == {"env_vars": {"A": "1"}}
    assert job_runtime_env({"RAY_JOB_CONFIG_JSON_ENV_VAR": "not json"}) == {}


def test_role_options_follow_the_config(debug_cfg):
    debug_cfg.cluster.actor_max_restarts = 5
    env = role_options(debug_cfg, "env")
    assert env == {"num_cpus": 0.25, "num_gpus": 0.0, "max_restarts": 5, "max_task_retries": 5}
    assert role_options(debug_cfg, "reward")["max_task_retries"] == 5
    roll = role_options(debug_cfg, "rollout")
    assert (roll["num_cpus"], roll["max_restarts"], roll["max_task_retries"]) == (1.0, 5, 0)
    assert roll["runtime_env"] == {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}
    learner = role_options(debug_cfg, "learner")
    assert (learner["max_restarts"], learner["max_task_retries"]) == (0, 0)


def test_gpu_rollout_options_have_no_cpu_engine_env():
    cfg = load_config("paper_2b", ["model.policy=/m", "model.sam2_checkpoint=/s.pt"])
    opts = role_options(cfg, "rollout")
    assert opts["num_gpus"] == 1.0 and "runtime_env" not in opts
    assert role_options(cfg, "learner")["num_cpus"] == 8.0


def test_role_bundles():
    cfg = load_config("paper_2b", ["model.policy=/m", "model.sam2_checkpoint=/s.pt"])
    bundles = role_bundles(role_demand(cfg, "learner"))
    assert bundles == [{"CPU": 8.0, "GPU": 1.0}] * 8
    pinned = role_bundles(role_demand(cfg, "rollout"), frozenset({"videoseg_rollout", "videoseg_reward"}))
    assert pinned == [{"CPU": 4.0, "GPU": 1.0, "videoseg_rollout": 1.0}] * 4
    bundles[0]["CPU"] = 1  # bundles are independent dicts
    assert bundles[1]["CPU"] == 8.0


def test_placement_options_for_cpu_roles_is_empty():
    assert placement_options(None, 3) == {}
