"""The sample ledger: every prompt's life from pending to consumed, exactly once.

States: a sample taken for step k is `in_flight` (with the policy version and attempt number);
when step k's update is applied it becomes `consumed` at step k. A sample with bad data is
`quarantined` with the reason. A checkpoint at step k records "everything up to k"; resuming from
it rolls back what happened after k (those samples become pending again and are re-issued in the
same order by the prompt source), so the consumed set always equals what the model trained on.

Two stores with one interface: SQLite in the run directory (the embedded default; one file,
atomic transactions) and Redis (shared, for multi-driver setups and KubeRay with an external
Redis; keys under a prefix, multi-key updates in MULTI/EXEC transactions).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

PENDING, IN_FLIGHT, CONSUMED, QUARANTINED = "pending", "in_flight", "consumed", "quarantined"


class SqliteLedger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS samples (
            sample_id TEXT NOT NULL, epoch INTEGER NOT NULL, state TEXT NOT NULL,
            step INTEGER, policy_version INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
            reason TEXT, updated REAL, PRIMARY KEY (sample_id, epoch))""")
        self.db.execute("CREATE TABLE IF NOT EXISTS quarantine (sample_id TEXT PRIMARY KEY, reason TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS events (step INTEGER, kind TEXT, detail TEXT, t REAL)")

    def begin(self, step: int, epoch: int, sample_ids: list[str], policy_version: int) -> None:
        now = time.time()
        with self._tx():
            for sid in sample_ids:
                row = self.db.execute("SELECT state FROM samples WHERE sample_id=? AND epoch=?", (sid, epoch)).fetchone()
                if row and row[0] == CONSUMED:
                    raise ValueError(f"sample {sid} of epoch {epoch} was already consumed; refusing to train on it twice")
                self.db.execute(
                    """INSERT INTO samples (sample_id, epoch, state, step, policy_version, attempts, updated)
                       VALUES (?, ?, ?, ?, ?, 1, ?)
                       ON CONFLICT(sample_id, epoch) DO UPDATE SET state=excluded.state, step=excluded.step,
                       policy_version=excluded.policy_version, attempts=samples.attempts + 1, updated=excluded.updated""",
                    (sid, epoch, IN_FLIGHT, step, policy_version, now))

    def commit(self, step: int, epoch: int, sample_ids: list[str]) -> None:
        with self._tx():
            for sid in sample_ids:
                cur = self.db.execute("UPDATE samples SET state=?, step=?, updated=? WHERE sample_id=? AND epoch=? "
                                      "AND state=?", (CONSUMED, step, time.time(), sid, epoch, IN_FLIGHT))
                if cur.rowcount != 1:
                    raise ValueError(f"sample {sid} (epoch {epoch}) is not in flight; cannot mark it consumed")

    def quarantine(self, sample_id: str, reason: str) -> None:
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO quarantine VALUES (?, ?)", (sample_id, reason))
            self.db.execute("UPDATE samples SET state=?, reason=? WHERE sample_id=? AND state=?",
                            (QUARANTINED, reason, sample_id, IN_FLIGHT))

    def quarantined(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT sample_id, reason FROM quarantine").fetchall())

    def rollback_after(self, step: int) -> int:
        """Undo everything after checkpoint `step`: consumed or in-flight later samples -> pending."""
        with self._tx():
            cur = self.db.execute("UPDATE samples SET state=?, updated=? WHERE (state=? AND step>?) OR state=?",
                                  (PENDING, time.time(), CONSUMED, step, IN_FLIGHT))
            self.db.execute("INSERT INTO events VALUES (?, 'rollback', ?, ?)", (step, json.dumps({"rows": cur.rowcount}), time.time()))
            return cur.rowcount

    def consumed(self) -> list[tuple[str, int, int]]:
        """(sample_id, epoch, step) of every consumed sample."""
        return self.db.execute("SELECT sample_id, epoch, step FROM samples WHERE state=? ORDER BY step, sample_id",
                               (CONSUMED,)).fetchall()

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, COUNT(*) FROM samples GROUP BY state").fetchall()
        out = {PENDING: 0, IN_FLIGHT: 0, CONSUMED: 0, QUARANTINED: 0}
        out.update(dict(rows))
        out["attempts_total"] = self.db.execute("SELECT COALESCE(SUM(attempts), 0) FROM samples").fetchone()[0]
        return out

    def record_event(self, step: int, kind: str, detail: dict) -> None:
        self.db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (step, kind, json.dumps(detail), time.time()))

    def events(self, kind: str | None = None) -> list[tuple]:
        if kind:
            return self.db.execute("SELECT step, kind, detail FROM events WHERE kind=?", (kind,)).fetchall()
        return self.db.execute("SELECT step, kind, detail FROM events").fetchall()

    def _tx(self):
        db = self.db

        class _T:
            def __enter__(self_):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self_, exc_type, exc, tb):
                db.execute("COMMIT" if exc_type is None else "ROLLBACK")
                return False

        return _T()

    def close(self) -> None:
        self.db.close()


class RedisLedger:
    """The same ledger in Redis: a hash per (sample, epoch) plus sets per state, under a prefix."""

    def __init__(self, url: str, prefix: str = "vso3:ledger:", password_env: str = "VIDEOSEG_REDIS_PASSWORD",
                 run_name: str = "run"):
        import redis

        self.r = redis.Redis.from_url(url, password=os.environ.get(password_env) or None, decode_responses=True)
        self.r.ping()
        self.p = f"{prefix}{run_name}:"

    def _k(self, sid: str, epoch: int) -> str:
        return f"{self.p}s:{epoch}:{sid}"

    def begin(self, step: int, epoch: int, sample_ids: list[str], policy_version: int) -> None:
        for sid in sample_ids:
            if self.r.hget(self._k(sid, epoch), "state") == CONSUMED:
                raise ValueError(f"sample {sid} of epoch {epoch} was already consumed; refusing to train on it twice")
        pipe = self.r.pipeline(transaction=True)
        for sid in sample_ids:
            k = self._k(sid, epoch)
            pipe.hset(k, mapping={"state": IN_FLIGHT, "step": step, "policy_version": policy_version,
                                  "sample_id": sid, "epoch": epoch, "updated": time.time()})
            pipe.hincrby(k, "attempts", 1)
            pipe.sadd(f"{self.p}keys", k)
        pipe.execute()

    def commit(self, step: int, epoch: int, sample_ids: list[str]) -> None:
        for sid in sample_ids:
            if self.r.hget(self._k(sid, epoch), "state") != IN_FLIGHT:
                raise ValueError(f"sample {sid} (epoch {epoch}) is not in flight; cannot mark it consumed")
        pipe = self.r.pipeline(transaction=True)
        for sid in sample_ids:
            pipe.hset(self._k(sid, epoch), mapping={"state": CONSUMED, "step": step, "updated": time.time()})
        pipe.execute()

    def quarantine(self, sample_id: str, reason: str) -> None:
        self.r.hset(f"{self.p}quarantine", sample_id, reason)

    def quarantined(self) -> dict[str, str]:
        return self.r.hgetall(f"{self.p}quarantine")

    def _rows(self):
        keys = sorted(self.r.smembers(f"{self.p}keys"))
        pipe = self.r.pipeline()
        for k in keys:
            pipe.hgetall(k)
        return list(zip(keys, pipe.execute()))

    def rollback_after(self, step: int) -> int:
        n = 0
        pipe = self.r.pipeline(transaction=True)
        for k, row in self._rows():
            if row.get("state") == IN_FLIGHT or (row.get("state") == CONSUMED and int(row["step"]) > step):
                pipe.hset(k, "state", PENDING)
                n += 1
        pipe.execute()
        return n

    def consumed(self) -> list[tuple[str, int, int]]:
        rows = [(r["sample_id"], int(r["epoch"]), int(r["step"])) for _, r in self._rows() if r.get("state") == CONSUMED]
        return sorted(rows, key=lambda x: (x[2], x[0]))

    def counts(self) -> dict[str, int]:
        out = {PENDING: 0, IN_FLIGHT: 0, CONSUMED: 0, QUARANTINED: len(self.quarantined())}
        attempts = 0
        for _, r in self._rows():
            out[r.get("state", PENDING)] = out.get(r.get("state", PENDING), 0) + 1
            attempts += int(r.get("attempts", 0))
        out["attempts_total"] = attempts
        return out

    def record_event(self, step: int, kind: str, detail: dict) -> None:
        self.r.rpush(f"{self.p}events", json.dumps({"step": step, "kind": kind, "detail": detail}))

    def events(self, kind: str | None = None) -> list[tuple]:
        out = [json.loads(e) for e in self.r.lrange(f"{self.p}events", 0, -1)]
        return [(e["step"], e["kind"], json.dumps(e["detail"])) for e in out if kind is None or e["kind"] == kind]

    def close(self) -> None:
        self.r.close()


def open_ledger(cluster_cfg, run_dir: str | Path, run_name: str):
    if cluster_cfg.ledger_redis_url:
        return RedisLedger(cluster_cfg.ledger_redis_url, cluster_cfg.ledger_key_prefix,
                           cluster_cfg.redis_password_env, run_name)
    return SqliteLedger(Path(run_dir) / "ledger.sqlite")
