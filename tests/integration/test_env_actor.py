"""The env actor under local Ray with a real Redis: shared frame cache, bad input, restarts."""

import time
import uuid

import numpy as np
import pytest

from configs.schema import QWEN_UNIT, DatasetSpec, EnvConfig, FrameCacheConfig
from env.datasets import load_dataset
from env.errors import (
    CorruptVideoError, DataError, EpisodeStateError, FrameIndexError, MissingAnnotationError,
    MissingFrameError, UnknownSampleError,
)
from env.protocol import format_turn
from env.types import Sample

pytestmark = [pytest.mark.ray, pytest.mark.redis]

THINK = "Step 1: when. Step 2: where. Step 3: which. Action: act"


@pytest.fixture(scope="module")
def setup(ray_local, redis_server, synthetic_dir, env_faulty_dir):
    from env.actor import create_env_actors

    cfg = EnvConfig(initial_low_res_frames=6, low_res_pixels=2 * QWEN_UNIT, initial_high_res_frames=2,
                    high_res_pixels=4 * QWEN_UNIT, select_reply_frames=3, keyframe_pixels=8 * QWEN_UNIT,
                    frame_cache=FrameCacheConfig(backend="redis", redis_url=redis_server.url,
                                                 key_prefix=f"itest-{uuid.uuid4().hex[:8]}:"))
    specs = [DatasetSpec(name="syn", format="revos", root=synthetic_dir),
             DatasetSpec(name="bad", format="revos", root=env_faulty_dir.root)]
    # The password reaches the actors through their environment, as it would in a pod.
    actors = create_env_actors(cfg, specs, n=2, num_cpus=0.5, max_restarts=2,
                               runtime_env={"env_vars": {"VIDEOSEG_REDIS_PASSWORD": redis_server.password}})
    yield ray_local, actors, env_faulty_dir
    for a in actors:
        ray_local.kill(a)


def test_second_actor_reads_frames_the_first_cached(setup, synthetic_dir):
    ray, (a1, a2), _ = setup
    sid = ray.get(a1.sample_ids.remote("syn"))[4]
    r1 = ray.get(a1.reset.remote(sid, "ep-a"))
    before = ray.get(a2.stats.remote())
    r2 = ray.get(a2.reset.remote(sid, "ep-b"))
    after = ray.get(a2.stats.remote())
    assert before["pid"] != ray.get(a1.stats.remote())["pid"]  # two processes
    n = len(r1.observation.frames)
    assert after["frames_decoded"] - before["frames_decoded"] == 0
    assert after["redis_hits"] - before["redis_hits"] == n
    assert r1.observation.frames == r2.observation.frames
    assert all(np.array_equal(x, y) for x, y in zip(r1.observation.images, r2.observation.images))
    # Stateless: an episode started on one actor continues on the other.
    step = ray.get(a2.step.remote(r1.state, format_turn(THINK, "select", 3, 9, 6)))
    assert not step.done and [f.index for f in step.observation.frames] == [3, 6, 9, 6]
    final = ray.get(a1.step.remote(step.state, format_turn(THINK, "answer", 4, 8, 6)))
    assert final.end_reason == "answer" and [t.keyframe_seen for t in final.state.turns] == [8, 6]


def test_ground_truth_and_frames_for_the_reward_pool(setup, synthetic_dir):
    ray, (a1, _), _ = setup
    local = load_dataset(DatasetSpec(name="syn", format="revos", root=synthetic_dir))
    sample = local.samples()[2]
    masks = ray.get(a1.gt_masks.remote(sample.sample_id, [0, 5, 15]))
    assert masks.dtype == bool and np.array_equal(masks, local.gt_masks(sample, [0, 5, 15]))
    assert ray.get(a1.presence.remote(sample)) == local.presence(sample)
    frames = ray.get(a1.frames.remote("syn", sample.video_id, [7, 2], 0))
    assert all(np.array_equal(f, g) for f, g in zip(frames, local.frames(sample.video_id, [7, 2])))
    assert ray.get(a1.sample.remote(sample.sample_id)) == sample


def _survives(ray, actor, pid):
    assert ray.get(actor.stats.remote())["pid"] == pid
    assert ray.get(actor.ready.remote())


def test_bad_input_gives_clear_errors_and_the_actor_survives(setup):
    ray, (a1, _), f = setup
    pid = ray.get(a1.stats.remote())["pid"]
    with pytest.raises(CorruptVideoError, match=f.corrupt_video):
        ray.get(a1.reset.remote(f"bad/{f.corrupt_video}/0", "x"))
    _survives(ray, a1, pid)
    res = ray.get(a1.reset.remote(f"bad/{f.holey_video}/0", "h"))  # turn-0 frames avoid the hole
    assert 5 not in res.state.initial_low + res.state.initial_high
    with pytest.raises(MissingFrameError, match="00005"):
        ray.get(a1.step.remote(res.state, format_turn(THINK, "select", 4, 6, 5)))
    _survives(ray, a1, pid)
    ghost = Sample(f"bad/{f.good_video}/{f.missing_anno_exp}", "bad", f.good_video, f.missing_anno_exp,
                   "the ghost", (9,), ("987654",), 12, 48, 64)
    with pytest.raises(MissingAnnotationError, match="987654"):
        ray.get(a1.gt_masks.remote(ghost, [0]))
    with pytest.raises(UnknownSampleError):
        ray.get(a1.reset.remote(ghost.sample_id, "g"))  # left out of the dataset at load time
    with pytest.raises(FrameIndexError, match="out of range"):
        ray.get(a1.frames.remote("bad", f.good_video, [0, 99], 0))
    with pytest.raises(DataError):
        ray.get(a1.frames.remote("nope", f.good_video, [0], 0))
    # Out-of-range indices in a turn are clamped, malformed text ends the episode: no exception.
    good = ray.get(a1.reset.remote(f"bad/{f.good_video}/0", "c"))
    clamped = ray.get(a1.step.remote(good.state, format_turn(THINK, "select", -50, 500, 77)))
    assert clamped.state.turns[0].clamped == (0, 11, 11)
    ended = ray.get(a1.step.remote(clamped.state, "<think>oops"))
    assert ended.end_reason == "malformed" and ended.state.turns[-1].error.code == "think_unclosed"
    with pytest.raises(EpisodeStateError):
        ray.get(a1.step.remote(ended.state, "x"))
    _survives(ray, a1, pid)


def test_restarted_actor_loses_nothing(setup):
    ray, (_, a2), _ = setup
    sid = ray.get(a2.sample_ids.remote("syn"))[0]
    r0 = ray.get(a2.reset.remote(sid, "r"))
    pid = ray.get(a2.stats.remote())["pid"]
    ray.kill(a2, no_restart=False)  # simulate a crash; Ray restarts it (max_restarts=2)
    deadline = time.time() + 120
    while ray.get(a2.stats.remote(), timeout=120)["pid"] == pid:  # ray.kill is asynchronous
        assert time.time() < deadline, "the actor was not restarted"
        time.sleep(0.2)
    r1 = ray.get(a2.step.remote(r0.state, format_turn(THINK, "select", 0, 4, 2)), timeout=120)
    assert not r1.done and [f.index for f in r1.observation.frames] == [0, 2, 4, 2]
    stats = ray.get(a2.stats.remote())
    assert stats["pid"] != pid and stats["frames_served"] == 4
    # The fresh process found the frames the old one cached (frame 0 at the low-res budget).
    assert stats["redis_hits"] >= 1 and stats["frames_decoded"] <= 3
