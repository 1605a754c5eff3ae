"""The reward pool on real DAVIS frames read through env.datasets (its default data sources), and
the evaluation path: propagate, write PNGs, score them with segmentation.score."""

import json

import numpy as np
import pytest
import torch

from configs.schema import DatasetSpec, ModelConfig, RewardConfig
from segmentation.masks import write_binary_png
from segmentation.metrics import sequence_jf
from segmentation.reward_pool import RewardPool, RewardPoolCore
from segmentation.types import ScoreRequest

pytest.importorskip("env.datasets")
HIDDEN = 32


@pytest.fixture(scope="module")
def spec(davis_revos_dir):
    return DatasetSpec(name="davis", format="revos", root=davis_revos_dir)


@pytest.fixture(scope="module")
def dataset(spec):
    from env.datasets import load_dataset

    return load_dataset(spec)


@pytest.fixture(scope="module")
def model_cfg(tiny_sam2_ckpt):
    from tests.conftest import CACHE_DIR

    return ModelConfig(sam2_config="tiny", sam2_image_size=256, dtype="fp32", allow_random_init=True,
                       cache_dir=CACHE_DIR)


def episode(sample, turns, sampled):
    from env.types import Action, EpisodeState, TurnRecord

    n, seen, records = sample.num_frames, sample.num_frames // 2, []
    for kind, s, e, k in turns:
        act = Action(kind, s, e, k, "Step 1 Step 2 Action", (True, True, False, True))
        records.append(TurnRecord("", act, None, (s, e, k), keyframe_seen=seen))
        seen = k
    return EpisodeState(sample, f"{sample.sample_id}-ep", [0, n - 1], list(sampled), records, True, "answer")


def group(dataset, video="blackswan"):
    sample = next(s for s in dataset.samples() if s.video_id == video)
    rng = np.random.default_rng(0)
    out = []
    for i in range(2):
        ep = episode(sample, [("select", 5, 30, 10 + i), ("answer", 8, 30, 20)], sampled=(3, 17, 31))
        out.append(ScoreRequest(f"{video}-{i}", ep, [rng.normal(size=HIDDEN).astype(np.float32)] * 2))
    return out


def test_pool_reads_frames_and_truth_through_env(spec, dataset, model_cfg):
    core = RewardPoolCore(model_cfg, RewardConfig(batch_frames=8), HIDDEN, datasets=[spec])
    batch = group(dataset)
    results = core.score(batch)
    assert core.cache.stats.encoded == len({3, 17, 31, 25, 10, 11})  # sampled + keyframes, once each
    sample = batch[0].episode.sample
    assert all(sample.presence) and sample.height == 480 and sample.width == 854
    for r in results:
        assert r.terms["keyframe"] == 1.0 and r.terms["interval"] == 0.5  # blackswan is always visible
        assert r.terms["format"] == 1.0 and r.terms["step_format"] == 0.75
        for t in r.turns:
            assert all(0.0 <= v <= 1.0 for v in t.iou_vid) and 0.0 <= t.iou_kf <= 1.0
    # The IoUs are real comparisons against the annotation (it is never empty here).
    gt = dataset.gt_masks(sample, [3, 17, 31])
    assert gt.any(axis=(1, 2)).all()


@pytest.mark.slow  # about 30 s on a busy 2-core machine: full-video propagation at 480p, then F per frame
def test_predictions_score_through_the_cli_loop(spec, dataset, model_cfg, davis_revos_dir, tmp_path):
    from segmentation.score import run

    core = RewardPoolCore(model_cfg, RewardConfig(batch_frames=16), HIDDEN, datasets=[spec])
    req = group(dataset, "car-shadow")[0]
    masks = core.predict([req])[0]
    sample = req.episode.sample
    assert masks.shape == (sample.num_frames, 480, 854)
    assert core.cache.stats.encoded == sample.num_frames
    # Score just this expression: a copy of the meta file restricted to it, the same mask_dict.
    meta = json.loads((davis_revos_dir / "meta_expressions.json").read_text())
    video = meta["videos"]["car-shadow"]
    video["expressions"] = {sample.exp_id: video["expressions"][sample.exp_id]}
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "meta_expressions.json").write_text(json.dumps({"videos": {"car-shadow": video}}))
    (tmp_path / "gt" / "mask_dict.json").symlink_to(davis_revos_dir / "mask_dict.json")
    for f, m in zip(video["frames"], masks):
        write_binary_png(tmp_path / "pred" / sample.video_id / sample.exp_id / f"{f}.png", m)
    scored = run("revos", tmp_path / "gt", tmp_path / "pred")["per_expression"][f"car-shadow_{sample.exp_id}"]
    j, f = sequence_jf(dataset.gt_masks(sample, list(range(sample.num_frames))), masks)
    assert scored["J"] == pytest.approx(j.mean(), abs=1e-12)
    assert scored["F"] == pytest.approx(f.mean(), abs=1e-12)


@pytest.mark.ray
def test_actor_default_sources_match_the_plain_core(ray_local, spec, dataset, model_cfg):
    cfg = RewardConfig(batch_frames=8)
    pool = RewardPool.start(model_cfg, cfg, HIDDEN, num_actors=1, num_cpus=1, datasets=[spec])
    try:
        batch = group(dataset)
        remote = pool.score(batch, return_features=False)
    finally:
        pool.shutdown()
    # Ray gives a num_cpus=1 actor one torch thread; the local core uses the same count, since a
    # different reduction order can flip a pixel at the 0.5 mask threshold.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = RewardPoolCore(model_cfg, cfg, HIDDEN, datasets=[spec]).score(batch, return_features=False)
    finally:
        torch.set_num_threads(threads)
    assert [r.terms for r in remote] == [r.terms for r in local]
    assert [[t.iou_vid for t in r.turns] for r in remote] == [[t.iou_vid for t in r.turns] for r in local]
