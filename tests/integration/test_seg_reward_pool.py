"""The reward pool under local Ray with the tiny SAM2: routing, cache hits, idempotence, feature refs,
the learner's differentiable decode from them, and weight sync."""

import numpy as np
import pytest
import torch

from configs.schema import ModelConfig, RewardConfig
from segmentation.language_decode import decode_with_language_token
from segmentation.reward_pool import RewardPool, RewardPoolCore, pool_weights, route
from segmentation.types import ScoreRequest

pytestmark = pytest.mark.ray
HIDDEN = 32


def requests(toy, vid, g=4):
    rng = np.random.default_rng(len(vid))
    out = []
    for i in range(g):
        turns = [("select", 2, 9, 3 + 2 * i), ("answer", 3, 9, 4 + i)]
        hidden = [rng.normal(size=HIDDEN).astype(np.float32) for _ in turns]
        out.append(ScoreRequest(f"{vid}/{i}", toy.episode(vid, turns, episode_id=f"{vid}-{i}"), hidden))
    return out


@pytest.fixture(scope="module")
def model_cfg(tiny_sam2_ckpt):
    from tests.conftest import CACHE_DIR

    return ModelConfig(sam2_config="tiny", sam2_image_size=256, dtype="fp32", allow_random_init=True,
                       cache_dir=CACHE_DIR)


@pytest.fixture(scope="module")
def reward_cfg():
    return RewardConfig(num_actors=2, batch_frames=8)


@pytest.fixture(scope="module")
def toy():
    from tests.conftest import SegToyVideos

    return SegToyVideos()


@pytest.fixture(scope="module")
def pool(ray_local, model_cfg, reward_cfg, toy):
    pool = RewardPool.start(model_cfg, reward_cfg, HIDDEN, num_actors=2, num_cpus=1,
                            frame_source=toy.frame_source, gt_source=toy.gt_source)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def batch(toy):
    return requests(toy, "toy0") + requests(toy, "toy1")


@pytest.fixture(scope="module")
def first(pool, batch):
    return pool.score(batch), pool.status()


def test_each_frame_is_encoded_once_on_the_actor_its_video_routes_to(first, batch):
    results, status = first
    assert [r.trajectory_id for r in results] == [r.trajectory_id for r in batch]
    for vid in ("toy0", "toy1"):
        reqs = [r for r in batch if r.episode.sample.video_id == vid]
        frames = {f for r in reqs
                  for f in r.episode.initial_high + [t.keyframe_seen for t in r.episode.turns]}
        owner = route(reqs[0], 2)
        assert {route(r, 2) for r in reqs} == {owner}
        assert status[owner].cached_frames >= len(frames)
    unique = {(r.episode.sample.video_id, f) for r in batch
              for f in r.episode.initial_high + [t.keyframe_seen for t in r.episode.turns]}
    assert sum(s.cache["encoded"] for s in status) == len(unique)


def test_a_retry_returns_the_same_result_from_the_cache(pool, first, batch, model_cfg, reward_cfg, toy):
    results, status = first
    again = pool.score(batch)
    status2 = pool.status()
    assert sum(s.cache["encoded"] for s in status2) == sum(s.cache["encoded"] for s in status)
    assert sum(s.cache["hits"] for s in status2) > sum(s.cache["hits"] for s in status)
    local = RewardPoolCore(model_cfg, reward_cfg, HIDDEN, frame_source=toy.frame_source,
                           gt_source=toy.gt_source).score(batch, return_features=False)
    for a, b, c in zip(results, again, local):  # and the actor computes what the plain core does
        assert a.terms == b.terms == c.terms and a.total == b.total == c.total
        for ta, tb, tc in zip(a.turns, b.turns, c.turns):
            assert ta.iou_vid == tb.iou_vid == tc.iou_vid and ta.iou_kf == tb.iou_kf == tc.iou_kf
            assert np.array_equal(ta.keyframe_mask, tb.keyframe_mask)
            assert np.array_equal(ta.keyframe_mask, tc.keyframe_mask)


def test_features_are_shared_object_refs_the_learner_decodes_with_gradients(ray_local, first, batch,
                                                                             model_cfg):
    results, _ = first
    r0, r1 = results[0], results[1]
    shared = set(r0.sampled_features) & set(r1.sampled_features)
    assert shared and all(isinstance(v, ray_local.ObjectRef) for v in r0.features.values())
    assert all(r0.features[k] == r1.features[k] for k in shared)
    _learner_step_from_refs(ray_local, r0, batch[0], model_cfg)


def test_weight_sync_reaches_every_actor(pool, batch, model_cfg, reward_cfg, toy):
    core = RewardPoolCore(model_cfg, reward_cfg, HIDDEN, frame_source=toy.frame_source,
                          gt_source=toy.gt_source)
    state = pool_weights(core.projector, core.model.sam_prompt_encoder, core.model.sam_mask_decoder)
    state["projector.layers.2.bias"] = state["projector.layers.2.bias"] + 1.0
    assert pool.update_weights(5, state) == [5, 5] and pool.versions() == [5, 5]
    after = pool.score(batch[:2] + batch[-2:], return_features=False)
    assert all(r.weights_version == 5 for r in after) and all(not r.features for r in after)
    core.update_weights(5, state)
    expected = core.score(batch[:2] + batch[-2:], return_features=False)
    assert [r.terms for r in after] == [r.terms for r in expected]
    assert [r.turns[0].iou_vid for r in after] == [r.turns[0].iou_vid for r in expected]


def _learner_step_from_refs(ray, result, request, model_cfg):
    """What the learner does: decode the keyframe differentiably from the pool's feature refs,
    score the rollout-time mask under it (SEG-aware calibration), and backpropagate."""
    from segmentation.sam2_models import sam2_from_model_config
    from segmentation.seg_head import build_projector

    sam2 = sam2_from_model_config(model_cfg)
    projector = build_projector(HIDDEN, 256)  # same seeded init as the pool's
    prompt_encoder, mask_decoder = sam2.sam_prompt_encoder.train(), sam2.sam_mask_decoder.train()
    turn = result.turns[-1]
    feats = ray.get(result.features[turn.keyframe_feature])
    hidden = torch.from_numpy(request.seg_hidden[-1][None])
    logits, _ = decode_with_language_token(prompt_encoder, mask_decoder, feats, projector(hidden))
    # The learner reproduces the rollout's action exactly from the shipped features.
    assert np.array_equal((logits[0, 0] > 0).detach().numpy(), turn.keyframe_mask)
    m = torch.from_numpy(turn.keyframe_mask.copy())[None, None].float()
    z = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    m32 = torch.nn.functional.interpolate(m, size=(32, 32), mode="bilinear", align_corners=False).round()
    loglik = (m32 * torch.nn.functional.logsigmoid(z) + (1 - m32) * torch.nn.functional.logsigmoid(-z)).mean()
    loglik.backward()
    assert projector.layers[0].weight.grad.abs().sum() > 0 and projector.layers[2].weight.grad.abs().sum() > 0
    assert sum(float(p.grad.abs().sum()) for p in mask_decoder.parameters() if p.grad is not None) > 0
