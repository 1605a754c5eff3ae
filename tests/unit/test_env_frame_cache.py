"""Frame cache: wire format, LRU accounting, FrameServer decode-once, Redis sharing and failure."""

import logging

import numpy as np
import pytest

from configs.schema import DatasetSpec, FrameCacheConfig
from env.datasets import load_dataset
from env.frame_cache import (
    LRUFrameCache, RedisFrameCache, TieredFrameCache, decode_frame, encode_frame, frame_key, make_frame_cache,
)
from env.frames import FrameServer
from env.types import FrameRef
from tests.conftest import free_port


@pytest.fixture(scope="module")
def syn(synthetic_dir):
    return load_dataset(DatasetSpec(name="syn", format="revos", root=synthetic_dir))


def test_wire_format_round_trip_and_rejects_garbage():
    rng = np.random.default_rng(0)
    for arr in (rng.integers(0, 255, (7, 9, 3), dtype=np.uint8), rng.random((4, 5), dtype=np.float32),
                np.zeros((0, 3, 3), np.uint8), rng.random((2, 3)) > 0.5):
        blob = encode_frame(arr)
        assert blob[:4] == b"VSF1"
        back = decode_frame(blob)
        assert back.dtype == arr.dtype and np.array_equal(back, arr)
    blob = encode_frame(np.ones((4, 4, 3), np.uint8))
    for bad in (b"", b"VSF1", blob[:-1], blob + b"x", b"XXXX" + blob[4:], blob[:4] + b"|O8 " + blob[8:]):
        with pytest.raises(ValueError):
            decode_frame(bad)
    with pytest.raises(ValueError):
        encode_frame(np.array([object()]))


def test_lru_evicts_by_bytes():
    cache = LRUFrameCache(capacity_bytes=3 * 100)
    frames = {f"k{i}": np.full((10, 10), i, np.uint8) for i in range(4)}
    cache.put_many(list(frames.items())[:3])
    assert cache.get_many(["k0"])[0] is not None  # k0 becomes most recent
    cache.put_many([("k3", frames["k3"])])
    got = cache.get_many(["k0", "k1", "k2", "k3"])
    assert [g is not None for g in got] == [True, False, True, True]
    assert cache.nbytes == 300 and cache.counters["evictions"] == 1
    cached = cache.get_many(["k3"])[0]
    with pytest.raises(ValueError):
        cached[0, 0] = 9  # cached frames are read-only
    cache.put_many([("huge", np.zeros(1000, np.uint8))])  # larger than the cache: not stored
    assert cache.get_many(["huge"]) == [None] and len(cache) == 3


def test_frame_server_decodes_each_frame_once(syn):
    server = FrameServer({"syn": syn}, LRUFrameCache(64 << 20))
    vid = syn.video_ids()[0]
    refs = [FrameRef("syn", vid, 3, 1568), FrameRef("syn", vid, 3, 0), FrameRef("syn", vid, 5, 1568),
            FrameRef("syn", vid, 3, 1568)]
    imgs = server.get_refs(refs)
    assert server.counters["frames_decoded"] == 2 and server.counters["decode_calls"] == 1
    assert imgs[1].shape == (64, 96, 3) and imgs[0].shape[0] * imgs[0].shape[1] <= 1568
    assert np.array_equal(imgs[0], imgs[3])
    again = server.get_refs(refs)
    assert server.counters["frames_decoded"] == 2 and server.counters["frames_served"] == 8
    assert all(np.array_equal(a, b) for a, b in zip(imgs, again))
    assert server.get("syn", vid, [], 1568) == []


def test_make_frame_cache_backends(redis_server):
    assert isinstance(make_frame_cache(FrameCacheConfig()), LRUFrameCache)
    tiered = make_frame_cache(FrameCacheConfig(backend="redis", redis_url=redis_server.url, key_prefix="t1:"))
    assert isinstance(tiered, TieredFrameCache) and tiered.remote.prefix == "t1:"


def test_redis_shares_frames_between_servers(redis_server, syn):
    cfg = FrameCacheConfig(backend="redis", redis_url=redis_server.url, key_prefix="test-share:", ttl_s=120)
    first = FrameServer({"syn": syn}, make_frame_cache(cfg))
    second = FrameServer({"syn": syn}, make_frame_cache(cfg))  # another process would look the same
    vid = syn.video_ids()[1]
    a = first.get("syn", vid, [0, 7, 15], 2000)
    b = second.get("syn", vid, [0, 7, 15], 2000)
    assert first.stats()["frames_decoded"] == 3 and second.stats()["frames_decoded"] == 0
    assert second.stats()["redis_hits"] == 3
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    client = redis_server.client()
    keys = sorted(k.decode() for k in client.keys("test-share:*"))
    namespace = f"syn@{syn.fingerprint}"
    assert keys == sorted("test-share:" + frame_key(namespace, vid, i, 2000) for i in (0, 7, 15))
    assert 0 < client.ttl(keys[0]) <= 120
    raw = client.get(keys[0])
    assert raw[:4] == b"VSF1" and b"numpy" not in raw  # raw bytes + header, not a pickle
    # The second server's local LRU now holds them: a third read touches neither Redis nor decoding.
    second.get("syn", vid, [7], 2000)
    assert second.stats()["redis_hits"] == 3 and second.stats()["lru_hits"] == 1


def test_redis_password_comes_from_the_named_env_var(redis_server, monkeypatch, syn):
    monkeypatch.setenv("MY_FRAME_PW", "wrong")
    cfg = FrameCacheConfig(backend="redis", redis_url=redis_server.url, redis_password_env="MY_FRAME_PW",
                           key_prefix="test-pw:")
    server = FrameServer({"syn": syn}, make_frame_cache(cfg))
    vid = syn.video_ids()[0]
    server.get("syn", vid, [1], 1000)  # auth fails: decoded anyway, error counted
    assert server.stats()["redis_errors"] == 1 and server.stats()["frames_decoded"] == 1
    monkeypatch.setenv("MY_FRAME_PW", redis_server.password)
    good = FrameServer({"syn": syn}, make_frame_cache(cfg))
    good.get("syn", vid, [1], 1000)
    assert good.stats()["redis_errors"] == 0 and good.stats()["redis_puts"] == 1


def test_redis_outage_degrades_to_decoding(syn, caplog):
    dead = RedisFrameCache(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2, retry_after_s=60)
    server = FrameServer({"syn": syn}, TieredFrameCache(LRUFrameCache(1 << 20), dead))
    vid = syn.video_ids()[0]
    with caplog.at_level(logging.WARNING, logger="env.frame_cache"):
        imgs = server.get("syn", vid, [0, 1], 1000)
        more = server.get("syn", vid, [2], 1000)
    assert len(imgs) == 2 and more[0].ndim == 3
    stats = server.stats()
    assert stats["frames_decoded"] == 3
    assert stats["redis_errors"] == 1  # one failure, then Redis is skipped for the back-off period
    assert stats["redis_skipped"] >= 1
    assert "decoding instead" in caplog.text


def test_malformed_redis_value_is_a_miss(redis_server, syn):
    cfg = FrameCacheConfig(backend="redis", redis_url=redis_server.url, key_prefix="test-bad:")
    server = FrameServer({"syn": syn}, make_frame_cache(cfg))
    vid = syn.video_ids()[2]
    key = "test-bad:" + frame_key(f"syn@{syn.fingerprint}", vid, 4, 900)
    redis_server.client().set(key, b"\x80\x04pickle-looking junk")
    img = server.get("syn", vid, [4], 900)[0]
    assert img.ndim == 3 and server.stats()["redis_bad_values"] == 1 and server.stats()["frames_decoded"] == 1
