"""Shared fixtures: real data paths, synthetic data, tiny models, a Redis server, local Ray.

Servers started here bind to 127.0.0.1 and are stopped by the pid we started, nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TEST_DATA = SHARED / "test_data"
CACHE_DIR = ROOT / ".cache" / "videoseg"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="session")
def test_data_dir() -> Path:
    if not TEST_DATA.is_dir():
        pytest.skip(f"real test data not found at {TEST_DATA} (expected ../shared/test_data from the "
                    "project root); tests on real DAVIS frames are skipped")
    return TEST_DATA


@pytest.fixture(scope="session")
def davis16_dir(test_data_dir) -> Path:
    path = test_data_dir / "davis16"
    if not (path / "JPEGImages").is_dir():
        pytest.skip(f"{path} has no JPEGImages; DAVIS tests skipped")
    return path


@pytest.fixture(scope="session")
def bedroom_mp4(test_data_dir) -> Path:
    path = test_data_dir / "videos" / "bedroom.mp4"
    if not path.is_file():
        pytest.skip(f"{path} missing; mp4 tests skipped")
    return path


@pytest.fixture(scope="session")
def davis_revos_dir(davis16_dir, tmp_path_factory) -> Path:
    """The real DAVIS sample converted into the ReVOS layout."""
    from env.convert_davis import convert

    return convert(davis16_dir, tmp_path_factory.mktemp("davis_revos"))


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from env.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic"), videos=6, seed=7, frames=16, size=(64, 96))


# ---------------------------------------------------------------------------------------- models
@pytest.fixture(scope="session")
def tiny_qwen25_dir() -> Path:
    from rollout.tiny_policy import build_tiny_policy

    return build_tiny_policy("qwen2.5-vl", CACHE_DIR)


@pytest.fixture(scope="session")
def tiny_qwen3_dir() -> Path:
    from rollout.tiny_policy import build_tiny_policy

    return build_tiny_policy("qwen3-vl", CACHE_DIR)


@pytest.fixture(scope="session")
def tiny_sam2_ckpt() -> Path:
    from segmentation.sam2_models import build_tiny_sam2

    return build_tiny_sam2(CACHE_DIR)


# ----------------------------------------------------------------------------------------- redis
class RedisServer:
    def __init__(self, port: int, password: str, proc: subprocess.Popen, workdir: Path):
        self.port, self.password, self.proc, self.workdir = port, password, proc, workdir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)


def start_redis(workdir: Path, password: str = "test-secret") -> RedisServer:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (scripts/setup_cpu.sh installs it); Redis tests skipped")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--requirepass", password,
         "--save", "", "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, password, proc, workdir)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            if server.client().ping():
                return server
        except Exception:
            time.sleep(0.05)
    stop_redis(server)
    raise RuntimeError("redis-server did not come up within 10 s")


def stop_redis(server: RedisServer) -> None:
    if server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = start_redis(tmp_path_factory.mktemp("redis"))
    os.environ["VIDEOSEG_REDIS_PASSWORD"] = server.password
    yield server
    stop_redis(server)


# ------------------------------------------------------------------------------------------- ray
@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                           "PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()
