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


try:  # fuzz tests explore randomly on a developer machine and reproducibly in CI
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        _hyp_settings.load_profile("ci")
except ImportError:  # hypothesis is part of the test stack; without it the fuzz tests cannot run anyway
    pass


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


# ---------------------------------------------------------------------------- segmentation toys
class SegToyVideos:
    """Tiny in-memory videos with box masks for reward-pool tests (no env, no disk).

    Each video shows a bright square moving over noise; the square is absent on the first two
    frames. `frame_source` / `gt_source` follow the reward pool's injected-source signatures.
    """

    def __init__(self, videos: int = 2, frames: int = 12, size: tuple[int, int] = (48, 64), seed: int = 0):
        import numpy as np

        from env.types import Sample

        rng = np.random.default_rng(seed)
        h, w = size
        self.frames, self.masks, self.samples = {}, {}, {}
        for v in range(videos):
            vid = f"toy{v}"
            pix = rng.integers(0, 90, (frames, h, w, 3), dtype=np.uint8)
            gt = np.zeros((frames, h, w), dtype=bool)
            for t in range(2, frames):
                y, x = 8 + t, 6 + 3 * t + 4 * v
                gt[t, y:y + 14, x:x + 14] = True
            pix[gt] = (230, 60, 60)
            self.frames[vid], self.masks[vid] = pix, gt
            self.samples[vid] = Sample(f"toy/{vid}/0", "toy", vid, "0", "the red square", (1,), ("1",),
                                       frames, h, w, 0, tuple(bool(m.any()) for m in gt))
        self.loads: list[tuple[str, list[int]]] = []

    def frame_source(self, dataset, video_id, indices):
        self.loads.append((video_id, list(indices)))
        return [self.frames[video_id][i] for i in indices]

    def gt_source(self, sample, indices):
        return self.masks[sample.video_id][list(indices)]

    def episode(self, vid: str, turns: list[tuple], sampled=(1, 4, 7, 10), episode_id="e"):
        """turns: (kind, start, end, keyframe) per assistant turn; keyframe_seen follows the contract."""
        from env.types import Action, EpisodeState, TurnRecord

        sample = self.samples[vid]
        n = sample.num_frames
        records, seen = [], n // 2
        for kind, s, e, k in turns:
            act = Action(kind, s, e, k, "Step 1 Step 2 Step 3 Action", (True, True, True, True))
            clamped = (min(max(s, 0), n - 1), min(max(e, 0), n - 1), min(max(k, 0), n - 1))
            records.append(TurnRecord(f"{kind} {s} {e} {k}", act, None, clamped, keyframe_seen=seen))
            seen = clamped[2]
        return EpisodeState(sample, episode_id, [0, 3, 6, 9], list(sampled), records, True, "answer")


@pytest.fixture
def seg_toy():
    return SegToyVideos()


# ---------------------------------------------------------------------- env: damaged data
class FaultyDataset:
    """A ReVOS-layout dataset with one intact video and one defect of each kind (env tests)."""

    def __init__(self, root: Path, videos: list[str]):
        self.root = root
        self.good_video, self.corrupt_video, self.holey_video = videos
        self.missing_frame, self.garbage_frame = 5, 6  # in holey_video
        self.missing_anno_exp = "missing-anno"  # expression of good_video with an unknown anno_id


@pytest.fixture(scope="session")
def env_faulty_dir(tmp_path_factory) -> FaultyDataset:
    import json

    import numpy as np

    from env.synthetic import generate

    root = generate(tmp_path_factory.mktemp("faulty"), videos=3, seed=11, frames=12, size=(48, 64))
    meta = json.loads((root / "meta_expressions.json").read_text())
    videos = sorted(meta["videos"])
    good, corrupt, holey = videos
    # A video stored as an mp4 that is not a video at all.
    shutil.rmtree(root / "JPEGImages" / corrupt)
    (root / "JPEGImages" / f"{corrupt}.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    # A frame folder with one file missing and one file that is not a JPEG.
    (root / "JPEGImages" / holey / "00005.jpg").unlink()
    (root / "JPEGImages" / holey / "00006.jpg").write_bytes(b"not a jpeg")
    # An expression whose object is not in mask_dict.json.
    meta["videos"][good]["expressions"]["missing-anno"] = {"exp": "the ghost", "obj_id": [9],
                                                           "anno_id": [987654], "type_id": 0}
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    return FaultyDataset(root, videos)
