"""The reward pool core without Ray: tiny SAM2 on in-memory toy videos (conftest.SegToyVideos)."""

import numpy as np
import pytest
import torch

from configs.schema import ModelConfig, RewardConfig
from segmentation.features import stack_decode_features
from segmentation.language_decode import decode_with_language_token, logits_to_masks
from segmentation.metrics import region_similarity
from segmentation.reward_pool import (RewardPoolCore, StaleWeightsError, final_keyframe, pool_weights,
                                      resolve_keyframe)
from segmentation.types import ScoreRequest

HIDDEN = 32


@pytest.fixture(scope="module")
def model_cfg(tiny_sam2_ckpt):
    from tests.conftest import CACHE_DIR

    torch.set_num_threads(1)
    return ModelConfig(sam2_config="tiny", sam2_image_size=256, dtype="fp32", allow_random_init=True,
                       cache_dir=CACHE_DIR)


def make_core(model_cfg, toy, **reward):
    return RewardPoolCore(model_cfg, RewardConfig(batch_frames=4, **reward), HIDDEN,
                          frame_source=toy.frame_source, gt_source=toy.gt_source)


def hidden(seed, n=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=HIDDEN).astype(np.float32) for _ in range(n)]


def group(toy, vid="toy0", g=4):
    """G rollouts of one prompt: same sampled frames, different actions and keyframes."""
    out = []
    for i in range(g):
        turns = [("select", 2, 8, 3 + i), ("answer", 2, 9, 5 + i)]
        ep = toy.episode(vid, turns, episode_id=f"{vid}-{i}")
        out.append(ScoreRequest(f"{vid}-r{i}", ep, hidden(i, 2)))
    return out


def test_group_frames_are_encoded_once_and_reused(model_cfg, seg_toy):
    core = make_core(model_cfg, seg_toy)
    batch = group(seg_toy)
    needed = {f for r in batch for f in r.episode.initial_high} | \
             {t.keyframe_seen for r in batch for t in r.episode.turns}
    core.score(batch)
    assert core.cache.stats.encoded == len(needed)
    assert len(core.cache.stats.encoded_keys) == len(set(core.cache.stats.encoded_keys))
    assert sum(len(idx) for _, idx in seg_toy.loads) == len(needed)  # each frame read once too
    core.score(batch)  # a later call (e.g. a retry, or the next turn's scoring) encodes nothing
    assert core.cache.stats.encoded == len(needed) and core.cache.stats.hits == len(needed)


def test_scoring_is_idempotent_across_calls_and_instances(model_cfg, seg_toy):
    batch = group(seg_toy) + group(seg_toy, "toy1", 2)
    a = make_core(model_cfg, seg_toy).score(batch)
    core = make_core(model_cfg, seg_toy)
    b = core.score(batch)
    c = core.score(batch)
    for x, y, z in zip(a, b, c):
        assert x.terms == y.terms == z.terms and x.total == y.total == z.total
        for tx, ty, tz in zip(x.turns, y.turns, z.turns):
            assert tx.iou_kf == ty.iou_kf == tz.iou_kf and tx.iou_vid == ty.iou_vid == tz.iou_vid
            assert np.array_equal(tx.keyframe_mask, ty.keyframe_mask)
            assert np.array_equal(tx.keyframe_mask, tz.keyframe_mask)


def test_result_contents_match_an_independent_decode(model_cfg, seg_toy):
    core = make_core(model_cfg, seg_toy)
    req = group(seg_toy, g=1)[0]
    res = core.score([req])[0]
    assert set(res.terms) == set(RewardConfig().weights) and res.weights_version == 0
    assert res.sampled_frames == [1, 4, 7, 10] and len(res.turns) == 2
    assert [t.keyframe for t in res.turns] == [6, 3]  # middle frame, then turn 0's keyframe
    embeds = core.projector(torch.from_numpy(np.stack(req.seg_hidden)))
    for t, ts in enumerate(res.turns):
        assert ts.keyframe_mask.shape == (64, 64) and ts.keyframe_mask.dtype == bool
        frames = res.sampled_frames + [ts.keyframe]
        feats = {}
        for f in frames:  # the exported features are what the learner decodes from
            key = core._key(core._plan(req), f)
            for name, value in res.features[key].items():
                feats.setdefault(name, []).append(value)
        feats = {k: torch.cat(v) for k, v in feats.items()}
        with torch.no_grad():
            lo, _ = decode_with_language_token(core.model.sam_prompt_encoder, core.model.sam_mask_decoder,
                                               feats, embeds[t:t + 1].expand(len(frames), -1))
        masks = logits_to_masks(lo, 48, 64).numpy()
        gt = seg_toy.masks["toy0"][frames]
        expected = [float(region_similarity(gt[i], masks[i])) for i in range(len(frames))]
        assert ts.iou_vid == pytest.approx(expected[:-1], abs=1e-12)
        assert ts.iou_kf == pytest.approx(expected[-1], abs=1e-12)
        assert np.array_equal(ts.keyframe_mask, (lo[-1, 0] > 0).numpy())


def test_a_turn_without_seg_has_empty_masks(model_cfg, seg_toy):
    core = make_core(model_cfg, seg_toy)
    ep = seg_toy.episode("toy0", [("select", 0, 5, 1), ("answer", 0, 5, 1)], sampled=(0, 1, 4))
    res = core.score([ScoreRequest("x", ep, [None, None])], return_features=False)[0]
    t0, t1 = res.turns
    assert not t0.has_seg and not t0.keyframe_mask.any()
    assert t0.iou_vid == [1.0, 1.0, 0.0]  # frames 0 and 1 have no target, frame 4 has one
    assert t0.iou_kf == 0.0 and not t0.kf_both_empty  # keyframe 6 shows the target
    assert t1.keyframe == 1 and t1.iou_kf == 1.0 and t1.kf_both_empty
    assert core.cache.stats.encoded == 0 and res.features == {}  # nothing to decode or export
    with_features = core.score([ScoreRequest("x", ep, [None, None])])[0]
    assert set(with_features.features) == {f"toy/toy0/{f}/256" for f in (0, 1, 4, 6)}
    ref_core = make_core(model_cfg, seg_toy, reference_behaviour=True)
    ref = ref_core.score([ScoreRequest("x", ep, [None, None])])[0]
    assert res.terms["progressive"] == 2.0 and ref.terms["progressive"] == 0.0  # d = 1 - 0 vs d = 0 - 0


def test_update_weights_versions_and_validation(model_cfg, seg_toy):
    core = make_core(model_cfg, seg_toy)
    batch = group(seg_toy, g=2)
    before = core.score(batch)
    state = pool_weights(core.projector, core.model.sam_prompt_encoder, core.model.sam_mask_decoder)
    state = {k: v.clone() for k, v in state.items()}
    state["projector.layers.2.weight"].zero_()
    state["projector.layers.2.bias"].normal_(generator=torch.Generator().manual_seed(0))
    assert core.update_weights(3, state) == 3
    after = core.score(batch)
    assert all(r.weights_version == 3 for r in after)
    # Zeroing the last layer maps every [SEG] to the same token: all turns now get the same masks.
    vids = [t.iou_vid for r in after for t in r.turns]
    assert all(v == vids[0] for v in vids)
    assert np.array_equal(after[0].turns[0].keyframe_mask, after[1].turns[0].keyframe_mask)
    assert len({tuple(t.iou_vid) for r in before for t in r.turns}) > 1
    assert core.update_weights(3, state) == 3  # a retried sync is harmless
    with pytest.raises(StaleWeightsError):
        core.update_weights(2, state)
    snapshot = core.projector.layers[0].weight.clone()
    bad = {"projector.layers.0.weight": torch.ones_like(snapshot), "projector.nope": torch.zeros(1)}
    with pytest.raises(ValueError, match="unknown weight"):
        core.update_weights(4, bad)
    assert torch.equal(core.projector.layers[0].weight, snapshot) and core.version == 3  # nothing applied
    with pytest.raises(ValueError, match="shape"):
        core.update_weights(4, {"sam_mask_decoder.iou_token.weight": torch.zeros(2, 256)})
    with pytest.raises(ValueError, match="prefixes"):
        core.update_weights(4, {"image_encoder.neck.x": torch.zeros(1)})


def test_request_validation(model_cfg, seg_toy):
    core = make_core(model_cfg, seg_toy)
    ep = seg_toy.episode("toy0", [("answer", 0, 5, 3)])
    with pytest.raises(ValueError, match="one entry per turn"):
        ScoreRequest("x", ep, [])
    with pytest.raises(ValueError, match="width"):
        core.score([ScoreRequest("x", ep, [np.zeros(HIDDEN + 1, np.float32)])])
    bad = seg_toy.episode("toy0", [("answer", 0, 5, 3)], sampled=(0, 99))
    with pytest.raises(ValueError, match="outside"):
        core.score([ScoreRequest("x", bad, hidden(0))])


def test_keyframe_rules(seg_toy):
    ep = seg_toy.episode("toy0", [("select", 0, 9, 20), ("select", 0, 9, 4), ("answer", 0, 9, 8)])
    assert [resolve_keyframe(ep, t) for t in range(3)] == [6, 11, 4]
    assert final_keyframe(ep) == 4  # the last selected keyframe, not the answer's
    only_answer = seg_toy.episode("toy0", [("answer", 0, 9, 2)])
    assert final_keyframe(only_answer) == 2
    for t in ep.turns:
        t.keyframe_seen = -1  # not recorded: derived by the contract's rule
    assert [resolve_keyframe(ep, t) for t in range(3)] == [6, 11, 4]


def test_predict_propagates_from_the_final_keyframe(model_cfg, seg_toy):
    core = make_core(model_cfg, seg_toy)
    two_turns = seg_toy.episode("toy0", [("select", 0, 9, 5), ("answer", 0, 9, 7)])
    reqs = [ScoreRequest("a", two_turns, hidden(1, 2)),
            ScoreRequest("b", seg_toy.episode("toy1", [("answer", 0, 9, 0)]), hidden(2)),
            ScoreRequest("c", seg_toy.episode("toy1", [("answer", 0, 9, 3)]), [None])]
    masks = core.predict(reqs)
    assert [m.shape for m in masks] == [(12, 48, 64)] * 3
    assert not masks[2].any()  # no [SEG] at all: nothing predicted
    assert core.cache.stats.encoded == 24  # both videos, every frame once
    # On the keyframe, propagation starts with the plain language decode of that frame.
    embed = core.projector(torch.from_numpy(reqs[0].seg_hidden[-1][None]))
    feat = core.cache.get_many([("toy", "toy0", 5)])["toy/toy0/5/256"]
    with torch.no_grad():
        lo, _ = decode_with_language_token(core.model.sam_prompt_encoder, core.model.sam_mask_decoder,
                                           stack_decode_features(core.model, [feat]), embed)
    assert np.array_equal(masks[0][5], logits_to_masks(lo, 48, 64)[0].numpy())
    # Frames away from the keyframe go through memory attention: not the memory-free decode.
    feat9 = core.cache.get_many([("toy", "toy0", 9)])["toy/toy0/9/256"]
    with torch.no_grad():
        lo9, _ = decode_with_language_token(core.model.sam_prompt_encoder, core.model.sam_mask_decoder,
                                            stack_decode_features(core.model, [feat9]), embed)
    assert not np.array_equal(masks[0][9], logits_to_masks(lo9, 48, 64)[0].numpy())
