"""Cache of decoded, resized frames keyed by (dataset, video, frame, pixels).

Backends:
- `LRUFrameCache`: in-process, bounded by bytes. The default.
- `RedisFrameCache`: shared by every env replica and rollout worker that points at the same
  server. Values are raw array bytes behind a small fixed header (magic, dtype, shape): never
  pickles, so a value written by one process can be trusted by another. Any Redis failure is
  logged and counted, the call behaves as a miss (the caller decodes), and Redis is left alone
  for a short back-off so a dead server costs one timeout, not one per request.
- `TieredFrameCache`: a local LRU in front of Redis (what `make_frame_cache` builds for redis).

All backends count hits, misses, puts, evictions and errors (`stats()`), which is how tests and
benchmarks prove that a frame came from the cache and not from the decoder.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- wire format
MAGIC = b"VSF1"
_HEADER = struct.Struct("<4s4sI")  # magic, dtype code (numpy dtype.str, padded), ndim
_DIM = struct.Struct("<I")
ALLOWED_DTYPES = {np.dtype(t).str: np.dtype(t) for t in ("uint8", "uint16", "float32", "bool")}


def encode_frame(arr: np.ndarray) -> bytes:
    """Header + raw C-order bytes. Only plain numeric dtypes are allowed."""
    arr = np.ascontiguousarray(arr)
    code = arr.dtype.str
    if code not in ALLOWED_DTYPES:
        raise ValueError(f"frame cache stores {sorted(ALLOWED_DTYPES)} arrays, not {arr.dtype}")
    header = _HEADER.pack(MAGIC, code.encode().ljust(4), arr.ndim)
    dims = b"".join(_DIM.pack(d) for d in arr.shape)
    return header + dims + arr.tobytes()


def decode_frame(blob: bytes) -> np.ndarray:
    """Inverse of encode_frame; ValueError on anything that is not a well-formed frame blob."""
    if len(blob) < _HEADER.size:
        raise ValueError("frame blob shorter than its header")
    magic, code, ndim = _HEADER.unpack_from(blob, 0)
    if magic != MAGIC:
        raise ValueError("frame blob has the wrong magic bytes")
    dtype = ALLOWED_DTYPES.get(code.decode(errors="replace").strip())
    if dtype is None or ndim > 4:
        raise ValueError(f"frame blob has an unsupported dtype/ndim ({code!r}, {ndim})")
    offset = _HEADER.size
    shape = tuple(_DIM.unpack_from(blob, offset + 4 * i)[0] for i in range(ndim))
    offset += 4 * ndim
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(blob) - offset != expected:
        raise ValueError(f"frame blob holds {len(blob) - offset} bytes, shape {shape} needs {expected}")
    arr = np.frombuffer(blob, dtype=dtype, offset=offset).reshape(shape)
    return arr  # read-only view of the bytes: cached frames must not be modified in place


def frame_key(namespace: str, video_id: str, index: int, pixels: int) -> str:
    """namespace = '<dataset name>@<fingerprint>' so two datasets sharing a name never collide."""
    return f"{namespace}/{video_id}/{int(index)}/{int(pixels)}"


# ------------------------------------------------------------------------------- backends
class LRUFrameCache:
    """Frames in an OrderedDict, evicting least recently used beyond `capacity_bytes`."""

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = int(capacity_bytes)
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.counters = {"hits": 0, "misses": 0, "puts": 0, "evictions": 0}

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        with self._lock:
            for k in keys:
                arr = self._items.get(k)
                if arr is None:
                    self.counters["misses"] += 1
                else:
                    self._items.move_to_end(k)
                    self.counters["hits"] += 1
                out.append(arr)
        return out

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        with self._lock:
            for k, arr in items:
                if arr.nbytes > self.capacity_bytes:
                    continue  # would evict everything and still not fit
                arr = np.ascontiguousarray(arr)
                arr.setflags(write=False)
                old = self._items.pop(k, None)
                if old is not None:
                    self._bytes -= old.nbytes
                self._items[k] = arr
                self._bytes += arr.nbytes
                self.counters["puts"] += 1
                while self._bytes > self.capacity_bytes:
                    _, evicted = self._items.popitem(last=False)
                    self._bytes -= evicted.nbytes
                    self.counters["evictions"] += 1

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> dict:
        with self._lock:
            return {"lru_" + k: v for k, v in self.counters.items()} | {
                "lru_items": len(self._items), "lru_bytes": self._bytes}


class RedisFrameCache:
    """Frames in Redis under `prefix + key`, with an optional TTL. Failures degrade to misses."""

    def __init__(self, url: str, prefix: str = "vso3:frame:", ttl_s: int = 0, password: str | None = None,
                 timeout_s: float = 1.0, retry_after_s: float = 5.0, client=None):
        import redis

        self._redis_errors = (redis.exceptions.RedisError, OSError)
        self.url, self.prefix, self.ttl_s = url, prefix, int(ttl_s)
        self.retry_after_s = retry_after_s
        self._client = client or redis.Redis.from_url(
            url, password=password, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._down_until = 0.0
        self._last_warning = 0.0
        self._lock = threading.Lock()
        self.counters = {"hits": 0, "misses": 0, "puts": 0, "errors": 0, "skipped": 0, "bad_values": 0}

    def _available(self, n: int) -> bool:
        if time.monotonic() < self._down_until:
            self.counters["skipped"] += n
            return False
        return True

    def _failed(self, op: str, exc: Exception) -> None:
        with self._lock:
            self.counters["errors"] += 1
            self._down_until = time.monotonic() + self.retry_after_s
            now = time.monotonic()
            if now - self._last_warning > 30:
                self._last_warning = now
                log.warning("frame cache: Redis %s at %s failed (%s: %s); decoding instead and "
                            "retrying Redis in %.0f s", op, self.url, type(exc).__name__, exc,
                            self.retry_after_s)

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        if not keys:
            return []
        if not self._available(len(keys)):
            return [None] * len(keys)
        try:
            blobs = self._client.mget([self.prefix + k for k in keys])
        except self._redis_errors as exc:
            self._failed("MGET", exc)
            return [None] * len(keys)
        out: list[np.ndarray | None] = []
        for k, blob in zip(keys, blobs):
            arr = None
            if blob is not None:
                try:
                    arr = decode_frame(blob)
                except ValueError as exc:
                    self.counters["bad_values"] += 1
                    log.warning("frame cache: ignoring malformed Redis value for %s (%s)", k, exc)
            self.counters["hits" if arr is not None else "misses"] += 1
            out.append(arr)
        return out

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        if not items or not self._available(len(items)):
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for k, arr in items:
                pipe.set(self.prefix + k, encode_frame(arr), ex=self.ttl_s or None)
            pipe.execute()
            self.counters["puts"] += len(items)
        except self._redis_errors as exc:
            self._failed("SET", exc)

    def stats(self) -> dict:
        return {"redis_" + k: v for k, v in self.counters.items()}


class TieredFrameCache:
    """A local LRU in front of a shared Redis: hot frames skip the network round trip."""

    def __init__(self, local: LRUFrameCache, remote: RedisFrameCache):
        self.local, self.remote = local, remote

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        out = self.local.get_many(keys)
        missing = [i for i, arr in enumerate(out) if arr is None]
        if missing:
            fetched = self.remote.get_many([keys[i] for i in missing])
            found = []
            for i, arr in zip(missing, fetched):
                if arr is not None:
                    out[i] = arr
                    found.append((keys[i], arr))
            self.local.put_many(found)
        return out

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        self.local.put_many(items)
        self.remote.put_many(items)

    def stats(self) -> dict:
        return self.local.stats() | self.remote.stats()


def make_frame_cache(cfg) -> LRUFrameCache | TieredFrameCache:
    """Build the cache a `configs.schema.FrameCacheConfig` describes.

    With a redis_url (backend 'redis', or any backend given a URL) the result is a local LRU in
    front of Redis; the password comes from the environment variable cfg.redis_password_env.
    """
    local = LRUFrameCache(cfg.capacity_mb * 1024 * 1024)
    if cfg.backend != "redis" and not cfg.redis_url:
        return local
    password = os.environ.get(cfg.redis_password_env) or None
    remote = RedisFrameCache(cfg.redis_url, prefix=cfg.key_prefix, ttl_s=cfg.ttl_s, password=password)
    return TieredFrameCache(local, remote)
