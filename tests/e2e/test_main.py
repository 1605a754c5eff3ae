"""The main job end to end: `python -m learner.main` with the debug preset, and resume equivalence."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import CACHE_DIR, ROOT, TEST_DATA

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def run_main(out_dir, *overrides, resume=False, timeout=1500):
    cmd = [sys.executable, "-m", "learner.main", f"run.output_dir={out_dir}", f"model.cache_dir={CACHE_DIR}",
           *overrides] + (["--resume"] if resume else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
    return res


def metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_debug_run_trains_writes_metrics_and_checkpoints(tmp_path):
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "run"
    # object_store: the weights reach the engine the way they reach engines on other nodes
    res = run_main(out, "run.steps=2", "run.checkpoint_every=1", "rollout.weight_transport=object_store")
    assert "step 2/2" in res.stderr
    assert "reached the engines through: object_store" in res.stderr
    rows = metrics(out)
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        assert r["episodes"] == 8 and r["train/sequences"] > 0
        for key in ("reward/mean", "reward/format", "reward/mask", "iou/keyframe_last", "episode/turns",
                    "train/kl", "train/entropy", "train/calibration", "sync/logp_gap_mean"):
            assert key in r, key
        assert set(r["time"]) >= {"rollout", "score", "reward", "train", "sync", "sync_share", "sync_engines"}
    # engines sample with the learner's weights: the learner re-scores their tokens almost exactly
    assert rows[1]["sync/logp_gap_mean"] < 1e-3
    from rollout.weight_transport import default_shm_root

    assert not list(default_shm_root().glob("videoseg_staged_*/v*")), "staged weight copies left behind"
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_00000000", "step_00000001"]
    assert all((c / "COMPLETE").exists() for c in ckpts)
    AutoModelForImageTextToText.from_pretrained(ckpts[-1] / "policy")
    datasets = json.loads((out / "datasets.json").read_text())
    assert datasets["synthetic"] > 0
    if (TEST_DATA / "davis16").is_dir():
        assert datasets["davis"] == 10  # 5 real DAVIS sequences x 2 expressions
    from learner.ledger import SqliteLedger

    consumed = SqliteLedger(out / "ledger.sqlite").consumed()
    assert len(consumed) == 4 and len({s for s, _, _ in consumed}) == 4


def test_resume_gives_the_same_later_steps_as_an_uninterrupted_run(tmp_path):
    """Run A: 4 steps. Run B: 2 steps (checkpoint), then --resume to 4. Steps 2 and 3 must match.

    Tolerance: rollouts are seeded per (sample, rollout, step, turn) and the learner restores its
    optimizer and RNG states, so the runs agree up to floating-point reduction order; rewards and
    episode statistics are compared to 1e-6, losses to 1e-4 relative."""
    common = ["run.checkpoint_every=2", "learner.lr=1e-3", "run.seed=3"]
    run_main(tmp_path / "a", "run.steps=4", *common)
    run_main(tmp_path / "b", "run.steps=2", *common)
    run_main(tmp_path / "b", "run.steps=4", *common, resume=True)
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a[2:], b[2:]):
        for key in ("reward/mean", "episode/turns", "episode/generated_tokens", "iou/keyframe_last"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), key
        for key in ("train/loss", "train/kl", "train/aux_mask_loss"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-7), key
    from learner.ledger import SqliteLedger

    ca = SqliteLedger(tmp_path / "a" / "ledger.sqlite").consumed()
    cb = SqliteLedger(tmp_path / "b" / "ledger.sqlite").consumed()
    assert [(s, e) for s, e, _ in ca] == [(s, e) for s, e, _ in cb]
