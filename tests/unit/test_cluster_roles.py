"""Role demands, local sizing, config checks and the fit check (pure Python, no Ray)."""

from __future__ import annotations

import pytest

from cluster.roles import (
    ROLES,
    NodeCapacity,
    check_fit,
    config_problems,
    local_num_cpus,
    role_demand,
    role_demands,
    role_resource_name,
    total_demand,
)
from configs import load_config

PAPER_MODELS = ["model.policy=/models/policy", "model.sam2_checkpoint=/models/sam2.pt"]


def paper(*overrides):
    return load_config("paper_2b", PAPER_MODELS + list(overrides))


def test_debug_preset_demands_and_local_cpus():
    cfg = load_config("debug_cpu")
    d = role_demands(cfg)
    assert [d[r].count for r in ROLES] == [1, 1, 1, 1]
    assert (d["reward"].num_cpus, d["env"].num_cpus) == (0.5, 0.25)
    assert not any(x.uses_gpus for x in d.values())
    assert total_demand(cfg) == (2.75, 0.0)
    assert local_num_cpus(cfg) == 4  # ceil(2.75) + 1 spare


def test_paper_preset_uses_sixteen_gpus():
    cfg = paper()
    d = role_demands(cfg)
    assert {r: (d[r].count, d[r].total_gpus) for r in ROLES} == {
        "rollout": (4, 4.0), "reward": (4, 4.0), "env": (2, 0.0), "learner": (8, 8.0)}
    assert total_demand(cfg)[1] == 16


def test_unknown_role_is_rejected():
    with pytest.raises(ValueError, match="unknown role 'critic'"):
        role_demand(load_config("debug_cpu"), "critic")
    with pytest.raises(ValueError):
        role_resource_name("critic")


def test_config_problems():
    assert config_problems(paper()) == []
    tp = config_problems(paper("rollout.tensor_parallel_size=2"))
    assert len(tp) == 1 and "tensor_parallel_size=2" in tp[0]
    assert config_problems(paper("rollout.tensor_parallel_size=2", "cluster.rollout.num_gpus=2")) == []
    frac = config_problems(paper("cluster.learner.num_gpus=1.5"))
    assert any("whole number" in p for p in frac)
    idle = config_problems(load_config("debug_cpu", ["cluster.env.num_cpus=0"]))
    assert any("cluster.env reserves no CPU" in p for p in idle)


def _nodes(*specs):
    return [NodeCapacity(f"node{i}", dict(spec)) for i, spec in enumerate(specs)]


def test_debug_fits_one_small_node_and_not_a_smaller_one():
    cfg = load_config("debug_cpu")
    ok = check_fit(role_demands(cfg), _nodes({"CPU": 4}))
    assert ok.ok and ok.problems == []
    assert all(ok.assignment[r] == ["node0"] for r in ROLES)
    short = check_fit(role_demands(cfg), _nodes({"CPU": 2}))
    assert not short.ok
    assert any("fits on no node" in p for p in short.problems)


def test_paper_fits_two_gpu_nodes_but_not_one():
    demands = role_demands(paper())
    two = check_fit(demands, _nodes({"CPU": 128, "GPU": 8}, {"CPU": 128, "GPU": 8}))
    assert two.ok, two.problems
    assert len(two.assignment["learner"]) == 8
    placed_gpus = {n: 0 for n in ("node0", "node1")}
    for role in ("rollout", "reward", "learner"):
        for node in two.assignment[role]:
            placed_gpus[node] += 1
    assert placed_gpus == {"node0": 8, "node1": 8}
    one = check_fit(demands, _nodes({"CPU": 256, "GPU": 8}))
    assert not one.ok
    assert any("GPU=1" in p for p in one.problems)


def test_role_resources_pin_actors_to_their_group():
    demands = role_demands(paper())
    learner_node = {"CPU": 72, "GPU": 8, "videoseg_learner": 8}
    other_node = {"CPU": 72, "GPU": 8, "videoseg_rollout": 4, "videoseg_reward": 4}
    fit = check_fit(demands, [NodeCapacity("L", learner_node), NodeCapacity("O", other_node)])
    assert fit.ok, fit.problems
    assert set(fit.assignment["learner"]) == {"L"}
    assert set(fit.assignment["rollout"]) == set(fit.assignment["reward"]) == {"O"}
    # Without a unit of videoseg_learner on the free node, the learner cannot go there.
    starved = dict(learner_node, videoseg_learner=4)
    bad = check_fit(demands, [NodeCapacity("L", starved), NodeCapacity("O", other_node)])
    assert not bad.ok and any(p.startswith("learner:") for p in bad.problems)


def test_strict_pack_needs_one_node_per_gpu_role():
    demands = {"learner": role_demand(load_config("debug_cpu", [
        "learner.num_ranks=4", "cluster.learner.num_gpus=1", "cluster.learner.num_cpus=1"]), "learner")}
    nodes = _nodes({"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 2})
    assert check_fit(demands, nodes, "PACK").ok
    strict = check_fit(demands, nodes, "STRICT_PACK")
    assert not strict.ok and "STRICT_PACK" in strict.problems[0]
    one_node = check_fit(demands, _nodes({"CPU": 8, "GPU": 4}), "STRICT_PACK")
    assert one_node.assignment["learner"] == ["node0"] * 4
