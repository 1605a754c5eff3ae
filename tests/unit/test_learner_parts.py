"""Plain pieces of the learner: micro-batching, prompt order, ledger, run directory, advantages."""

import json

import pytest
import torch

from learner.batching import plan_micro_batches
from learner.data import PromptSource
from learner.ledger import SqliteLedger


def test_micro_batches_respect_budget_and_cover_everything():
    lengths = [100, 900, 400, 400, 50, 1200]
    groups = plan_micro_batches(lengths, token_budget=1000)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 1000
    assert [5] in groups  # longer than the budget: alone
    assert len(plan_micro_batches(lengths, 10**6, min_batches=3)) >= 3


def test_prompt_source_is_deterministic_resumable_and_epoch_aware():
    ids = [f"ds/v{i}/0" for i in range(10)]
    a = PromptSource(ids, seed=3)
    first, e0 = a.take(4)
    second, _ = a.take(4)
    state = a.state()
    third, e1 = a.take(4)  # crosses into epoch 1
    assert e0 == 0 and len(set(first + second)) == 8
    b = PromptSource(ids, seed=3)
    b.load_state(state)
    assert b.take(4) == (third, e1)
    assert PromptSource(ids, seed=4).take(4)[0] != first
    c = PromptSource(ids, seed=3)
    skipped, _ = c.take(4, skip={first[0]})
    assert first[0] not in skipped and skipped[:3] == first[1:]


def test_prompt_source_weights_interleave_datasets():
    ids = [f"a/v{i}/0" for i in range(50)] + [f"b/v{i}/0" for i in range(50)]
    src = PromptSource(ids, seed=0, dataset_weights={"a": 9.0, "b": 1.0})
    head, _ = src.take(20)
    assert sum(s.startswith("a/") for s in head) >= 14
    with pytest.raises(ValueError, match="no training samples"):
        PromptSource([], 0)


def test_sqlite_ledger_exactly_once_and_rollback(tmp_path):
    led = SqliteLedger(tmp_path / "l.sqlite")
    led.begin(0, 0, ["a", "b"], policy_version=0)
    led.commit(0, 0, ["a", "b"])
    led.begin(1, 0, ["c"], 1)
    led.commit(1, 0, ["c"])
    led.begin(2, 0, ["d"], 2)  # crash before commit
    assert led.counts()["consumed"] == 3 and led.counts()["in_flight"] == 1
    with pytest.raises(ValueError, match="already consumed"):
        led.begin(3, 0, ["a"], 3)
    with pytest.raises(ValueError, match="not in flight"):
        led.commit(3, 0, ["zzz"])
    # resume from the checkpoint of step 0: c (consumed at 1) and d (in flight) are re-opened
    assert led.rollback_after(0) == 2
    assert sorted(s for s, _, _ in led.consumed()) == ["a", "b"]
    led.begin(1, 0, ["c"], 1)
    led.commit(1, 0, ["c"])
    assert led.counts()["attempts_total"] == 5  # a, b once; c twice; d once
    led.begin(4, 1, ["a"], 4)  # a new epoch may train on a again
    led.quarantine("q", "corrupt video")
    assert led.quarantined() == {"q": "corrupt video"}


@pytest.mark.redis
def test_redis_ledger_matches_sqlite_semantics(redis_server):
    from learner.ledger import RedisLedger

    # the server is shared by the session's Redis tests: only keys this ledger adds count
    before = set(redis_server.client().keys("*"))
    led = RedisLedger(redis_server.url, prefix="test:ledger:", run_name="r1")
    led.begin(0, 0, ["a", "b"], 0)
    led.commit(0, 0, ["a", "b"])
    led.begin(1, 0, ["c"], 1)
    with pytest.raises(ValueError, match="already consumed"):
        led.begin(2, 0, ["a"], 2)
    assert led.rollback_after(0) == 1
    assert [s for s, _, _ in led.consumed()] == ["a", "b"]
    led.record_event(1, "fault", {"role": "rollout"})
    assert led.events("fault")[0][0] == 1
    added = set(redis_server.client().keys("*")) - before
    assert added and all(k.startswith(b"test:ledger:") for k in added)


def test_run_dir_latest_prune_and_metrics_truncation(tmp_path):
    from configs import load_config
    from learner.run_dir import MetricsLog, RunDir

    cfg = load_config(overrides=[f"run.output_dir={tmp_path}", "run.keep_checkpoints=2"])
    run = RunDir(cfg)
    assert run.latest() is None
    for step in (1, 3, 5):
        p = run.begin_checkpoint(step)
        run.finish_checkpoint(p, {"step": step})
    run.begin_checkpoint(7)  # interrupted: no COMPLETE marker
    assert run.latest().name == "step_00000005"
    assert not run.step_dir(1).exists()  # pruned (keep 2)
    log = MetricsLog(run.metrics_path, 10)
    for s in range(5):
        log.log({"step": s})
    log.close()
    MetricsLog(run.metrics_path, 10, truncate_after=2).close()
    steps = [json.loads(x)["step"] for x in run.metrics_path.read_text().splitlines()]
    assert steps == [0, 1, 2]


def test_advantages_group_by_sample():
    from types import SimpleNamespace

    from configs import load_config
    from learner.rl_step import advantages

    cfg = load_config(overrides=["learner.drop_zero_variance_groups=true"])
    trajs = [SimpleNamespace(sample=SimpleNamespace(sample_id=s)) for s in ["x", "x", "y", "y"]]
    results = [SimpleNamespace(total=t) for t in [1.0, 3.0, 2.0, 2.0]]
    adv, keep = advantages(trajs, results, cfg)
    assert adv[0] == pytest.approx(-adv[1]) and adv[0] < 0
    assert keep == [True, True, False, False]
