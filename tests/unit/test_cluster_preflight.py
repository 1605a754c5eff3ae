"""The preflight verdict on given nodes (no Ray), and its CLI's refusals that need no cluster."""

from __future__ import annotations

import json

from cluster import preflight
from cluster.preflight import build_report
from configs import load_config

PAPER = ["model.policy=/models/policy", "model.sam2_checkpoint=/models/sam2.pt"]
GIB = 1024 ** 3


def node(node_id, total, free=None):
    return {"node_id": node_id, "ip": "10.0.0.1", "total": total, "free": dict(free or total)}


def test_debug_preset_on_a_local_sized_node():
    cfg = load_config("debug_cpu")
    report = build_report(cfg, [node("a" * 40, {"CPU": 4.0, "memory": 8 * GIB, "node:10.0.0.1": 1.0})])
    assert report["ok"] and report["problems"] == []
    assert report["needs"]["total"] == {"CPU": 2.75, "GPU": 0.0}
    assert report["needs"]["roles"]["env"]["cpus_each"] == 0.25
    assert report["cluster"]["total"] == {"CPU": 4.0, "memory_gib": 8.0}
    assert report["assignment"]["learner"] == ["a" * 12]
    json.dumps(report)  # the CLI prints it


def test_busy_node_does_not_fit():
    cfg = load_config("debug_cpu")
    report = build_report(cfg, [node("n1", {"CPU": 4.0}, free={"CPU": 1.0})])
    assert not report["ok"]
    assert any("fits on no node" in p for p in report["problems"])
    assert report["cluster"]["free"] == {"CPU": 1.0}


def test_paper_preset_needs_two_gpu_nodes():
    cfg = load_config("paper_2b", PAPER)
    gpu_node = {"CPU": 96.0, "GPU": 8.0}
    assert build_report(cfg, [node("n1", gpu_node), node("n2", gpu_node)])["ok"]
    one = build_report(cfg, [node("n1", gpu_node)])
    assert not one["ok"] and one["needs"]["total"]["GPU"] == 16


def test_role_resources_show_in_the_report():
    cfg = load_config("paper_2b", PAPER)
    nodes = [node("L", {"CPU": 72.0, "GPU": 8.0, "videoseg_learner": 8.0}),
             node("O", {"CPU": 72.0, "GPU": 8.0, "videoseg_rollout": 4.0, "videoseg_reward": 4.0})]
    report = build_report(cfg, nodes)
    assert report["ok"], report["problems"]
    assert report["needs"]["roles"]["learner"]["pinned_to_resource"] == "videoseg_learner"
    assert report["needs"]["roles"]["env"]["pinned_to_resource"] is None
    assert set(report["assignment"]["learner"]) == {"L"}


def test_cli_config_errors_exit_2_without_a_cluster(capsys):
    assert preflight.main(["--preset", "no_such_preset"]) == 2
    capsys.readouterr()
    rc = preflight.main(["--preset", "paper_2b", *PAPER, "rollout.tensor_parallel_size=2"])
    assert rc == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and "tensor_parallel_size" in out["problems"][0]
