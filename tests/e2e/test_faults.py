"""Fault injection on a real run: actor processes of every role are killed by pid mid-step, the
driver is killed and resumed, and bad data is fed in. The run must finish with every sample
consumed exactly once (or quarantined with its reason), no crash, nothing lost."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollout.shm_segments import REGISTRY

from tests.conftest import CACHE_DIR, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def start_main(out_dir, *overrides, resume=False, env_extra=None):
    cmd = [sys.executable, "-m", "learner.main", f"run.output_dir={out_dir}", f"model.cache_dir={CACHE_DIR}",
           *overrides] + (["--resume"] if resume else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env_extra or {}))
    log = open(out_dir.parent / f"{out_dir.name}.log", "a")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_for(pred, timeout=900, poll=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError("condition not reached")


def status(out_dir):
    try:
        return json.loads((out_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def at(out_dir, step, phase):
    s = status(out_dir)
    return s is not None and (s["step"], s["phase"]) == (step, phase)


def finish(proc, out_dir, timeout=1500):
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    log = (out_dir.parent / f"{out_dir.name}.log").read_text()
    assert rc == 0, log[-6000:]
    return log


def ledger_of(out_dir):
    from learner.ledger import SqliteLedger

    return SqliteLedger(out_dir / "ledger.sqlite")


def metric_rows(out_dir):
    return [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def expected_samples(steps, per_step, seed, out_dir):
    """The sample ids a run of this config trains on, in order (same seeded source as the driver)."""
    from configs import load_config
    from env.service import EnvService
    from learner.data import PromptSource

    cfg = load_config(overrides=[f"model.cache_dir={CACHE_DIR}"])
    specs = [d for d in cfg.data.train if d.format == "synthetic"]
    counts = json.loads((out_dir / "datasets.json").read_text())
    if counts.get("davis"):
        from learner.system import resolve_paths

        specs = resolve_paths(cfg).data.train
    ids = EnvService(cfg.env, specs, cache_dir=str(CACHE_DIR)).sample_ids()
    src = PromptSource(ids, seed, {d.name: d.weight for d in cfg.data.train})
    return [src.take(per_step)[0] for _ in range(steps)]


def test_every_actor_role_can_die_mid_step(tmp_path):
    out = tmp_path / "faults"
    steps = 6
    proc = start_main(out, f"run.steps={steps}", "run.checkpoint_every=1", "run.seed=5")
    # (step, phase at which to kill, role). Learner last: it rolls back to the step-3 checkpoint.
    plan = [(1, "rollout", "env"), (2, "reward", "reward"), (3, "rollout", "rollout"), (4, "train", "learner")]
    killed = []
    try:
        for step, phase, role in plan:
            wait_for(lambda: at(out, step, phase) or (proc.poll() is not None and "exited"))
            assert proc.poll() is None, "driver exited before the fault was injected"
            pid = json.loads((out / "actors.json").read_text())[role][0]
            os.kill(pid, signal.SIGKILL)
            killed.append((role, pid))
        finish(proc, out)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = metric_rows(out)
    assert [r["step"] for r in rows] == list(range(steps))
    ledger = ledger_of(out)
    faults = [json.loads(d)["role"] for _, _, d in ledger.events("fault")]
    recovered = [json.loads(d)["role"] for _, _, d in ledger.events("recovered")]
    for role, _ in killed:
        if role != "env":  # env actors restart and retry inside Ray, invisible to the driver
            assert role in faults and role in recovered, (role, faults, recovered)
    consumed = ledger.consumed()
    ids = [s for s, _, _ in consumed]
    assert len(ids) == len(set(ids)) == steps * 2, "a sample was lost or trained twice"
    by_step = {}
    for s, _, st in consumed:
        by_step.setdefault(st, []).append(s)
    assert sorted(by_step) == list(range(steps))
    expected = expected_samples(steps, 2, 5, out)
    assert [sorted(by_step[k]) for k in range(steps)] == [sorted(x) for x in expected]
    assert ledger.counts()["in_flight"] == 0 and ledger.counts()["quarantined"] == 0
    print(json.dumps({"faults_injected": len(killed), "faults_seen": faults, "recovered": recovered,
                      "samples_lost": 0, "samples_duplicated": 0}))


def test_driver_killed_and_resumed_matches_uninterrupted_run(tmp_path):
    common = ["run.steps=4", "run.checkpoint_every=1", "run.seed=9", "learner.lr=1e-3"]
    ref = tmp_path / "ref"
    finish(start_main(ref, *common), ref)
    out = tmp_path / "killed"
    proc = start_main(out, *common)
    wait_for(lambda: at(out, 2, "train") or (proc.poll() is not None and "exited"))
    actors = json.loads((out / "actors.json").read_text())
    os.kill(proc.pid, signal.SIGKILL)  # the driver, in the middle of step 2
    proc.wait()
    # The driver's Ray instance shares its fate; make sure the run's actor processes are gone.
    pids = [p for group in actors.values() for p in group if p > 0]

    def gone():
        alive = []
        for p in pids:
            try:
                os.kill(p, 0)
                alive.append(p)
            except ProcessLookupError:
                pass
        return not alive

    try:
        wait_for(gone, timeout=60, poll=1.0)
    except TimeoutError:
        for p in pids:  # processes of the run this test started
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # What the killed run left in /dev/shm: its weight folder and its engine's segments (recorded
    # by the rollout actor); the resumed run's start removes both.
    shm = Path("/dev/shm")
    records = [shm / REGISTRY / f"{p}.json" for p in actors.get("rollout", [])]
    leftover = {s for r in records if r.exists() for s in json.loads(r.read_text())["segments"]}
    assert not shm.is_dir() or any(r.exists() for r in records), "the killed rollout actor recorded no segments"
    finish(start_main(out, *common, resume=True), out)
    if shm.is_dir():
        assert not list(shm.glob(f"videoseg_weights_*_{proc.pid}")), "the killed driver's weight folder survived"
        assert not any(r.exists() for r in records)
        assert not [s for s in leftover if (shm / s).exists()], "the killed engine's segments survived"
    a, b = metric_rows(ref), metric_rows(out)
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("reward/mean", "episode/turns", "episode/generated_tokens"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), (ra["step"], key)
        for key in ("train/loss", "train/kl"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-7), (ra["step"], key)
    ca, cb = ledger_of(ref).consumed(), ledger_of(out).consumed()
    assert ca == cb
    assert ledger_of(out).counts()["in_flight"] == 0


@pytest.mark.redis
def test_bad_data_is_quarantined_and_secrets_stay_out_of_files(tmp_path, env_faulty_dir, redis_server):
    out = tmp_path / "bad"
    keys_before = set(redis_server.client().keys("*"))  # the server is shared by the session's tests
    data = (f"data.train=[{{name: faulty, format: revos, root: '{env_faulty_dir.root}'}},"
            " {name: synthetic, format: synthetic, videos: 2, seed: 2, frames_per_video: 12}]")
    proc = start_main(out, "run.steps=3", "learner.prompts_per_step=4", data, "data.max_quarantine_fraction=0.9",
                      f"cluster.ledger_redis_url={redis_server.url}", "cluster.ledger_key_prefix=vso3test:",
                      env_extra={"VIDEOSEG_REDIS_PASSWORD": redis_server.password})
    log = finish(proc, out)
    from learner.ledger import RedisLedger

    ledger = RedisLedger(redis_server.url, prefix="vso3test:", run_name="debug_cpu")
    quarantined = ledger.quarantined()
    assert quarantined, "the faulty videos should have been quarantined"
    faulty_videos = {env_faulty_dir.corrupt_video, env_faulty_dir.holey_video}
    # the intact video may lose only its expression with an unknown annotation id
    assert {sid.split("/")[1] for sid in quarantined} <= faulty_videos | {env_faulty_dir.good_video}
    assert any(v in sid for sid in quarantined for v in faulty_videos)
    assert all(reason for reason in quarantined.values())
    consumed = {s for s, _, _ in ledger.consumed()}
    assert consumed and not consumed & set(quarantined)
    assert len(metric_rows(out)) == 3
    # the Redis password never lands in the run's files or logs; every key carries the prefix
    for path in [*out.rglob("*.json"), *out.rglob("*.yaml"), *out.rglob("*.jsonl")]:
        assert redis_server.password not in path.read_text(errors="ignore"), path
    assert redis_server.password not in log
    added = set(redis_server.client().keys("*")) - keys_before
    assert added and all(k.startswith(b"vso3test:") for k in added)
