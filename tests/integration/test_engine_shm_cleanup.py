"""A real vLLM (CPU) engine start and shutdown leaves none of its shared-memory segments behind."""

from pathlib import Path

import pytest

from configs import load_config

pytestmark = pytest.mark.slow


def test_engine_shutdown_removes_its_shm_segments(tiny_qwen25_dir):
    from rollout.engine import RolloutEngine, max_images_per_episode

    cfg = load_config("debug_cpu")
    engine = RolloutEngine(tiny_qwen25_dir, cfg.rollout, max_images_per_episode(cfg.env), seed=0,
                           dtype=cfg.model.dtype)
    try:
        segments = set(engine.shm.segments)
        assert engine.shm.engine_pids, "the engine started no processes of its own"
        if not segments:
            pytest.skip("this vLLM build maps no psm_* segments; nothing to clean up")
        assert all((Path("/dev/shm") / s).exists() for s in segments)
        assert engine.shm.record_path.exists(), "segments not recorded for a later run to reap"
    finally:
        engine.shutdown()
    left = [s for s in segments if (Path("/dev/shm") / s).exists()]
    assert not left, f"segments left in /dev/shm after shutdown: {left}"
    assert not engine.shm.record_path.exists()
    engine.shutdown()  # a second shutdown is a no-op
