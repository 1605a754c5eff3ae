"""`python -m cluster.preflight`: can this Ray cluster hold the run? Answers in JSON before training.

    .venv/bin/python -m cluster.preflight --preset paper_2b            # against RAY_ADDRESS
    .venv/bin/python -m cluster.submit -- python -m cluster.preflight --preset debug_cpu

It connects like the driver does (RAY_ADDRESS, else cluster.ray_address; with neither, it starts
Ray in-process exactly as the local debug mode would), lists every node's free resources, and
places each role's actors on nodes the way the driver's placement groups will have to. Exit codes:
0 the run fits, 1 it does not (the report says why), 2 bad configuration, 3 no cluster reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from cluster.ray_setup import RaySetupError, init_ray, job_runtime_env, shutdown_ray
from cluster.roles import (
    NodeCapacity,
    check_fit,
    config_problems,
    role_demands,
    role_resource_name,
    total_demand,
)
from configs import ConfigError, available_presets, load_config
from configs.schema import Config

_GIB = 1024 ** 3
_BYTES_KEYS = ("memory", "object_store_memory")


def _plain_resources(res: dict[str, float]) -> dict[str, float]:
    """Resources without the per-node `node:<ip>` markers; memory shown in GiB."""
    out = {}
    for key, value in sorted(res.items()):
        if key.startswith("node:"):
            continue
        out[f"{key}_gib" if key in _BYTES_KEYS else key] = round(value / _GIB, 2) if key in _BYTES_KEYS \
            else value
    return out


def cluster_nodes() -> list[dict[str, Any]]:
    """Alive nodes with total and currently free resources (needs a connected Ray)."""
    import ray

    try:  # DeveloperAPI: free resources per node; totals are the fallback on an idle cluster.
        from ray._private.state import available_resources_per_node

        free = available_resources_per_node()
    except Exception:
        free = {}
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        node_id = node["NodeID"]
        total = dict(node.get("Resources") or {})
        nodes.append({"node_id": node_id, "ip": node.get("NodeManagerAddress"),
                      "total": total, "free": dict(free.get(node_id, total))})
    return nodes


def build_report(cfg: Config, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The preflight verdict for `cfg` on `nodes` (pure: unit-testable without Ray)."""
    demands = role_demands(cfg)
    capacities = [NodeCapacity(n["node_id"], {k: float(v) for k, v in n["free"].items()
                                               if not k.startswith("node:") and k not in _BYTES_KEYS})
                  for n in nodes]
    fit = check_fit(demands, capacities, cfg.cluster.placement_strategy)
    problems = config_problems(cfg) + fit.problems
    advertised = {k for c in capacities for k in c.resources}
    need_cpus, need_gpus = total_demand(cfg)

    def summed(key: str) -> dict[str, float]:
        acc: dict[str, float] = {}
        for n in nodes:
            for k, v in n[key].items():
                acc[k] = acc.get(k, 0.0) + float(v)
        return _plain_resources(acc)

    return {
        "ok": not problems,
        "problems": problems,
        "needs": {
            "roles": {r: {"actors": d.count, "cpus_each": d.num_cpus, "gpus_each": d.num_gpus,
                          "cpus": d.total_cpus, "gpus": d.total_gpus,
                          "placement_group": d.uses_gpus,
                          "pinned_to_resource": role_resource_name(r) if role_resource_name(r) in advertised
                          else None}
                      for r, d in demands.items()},
            "total": {"CPU": need_cpus, "GPU": need_gpus},
            "placement_strategy": cfg.cluster.placement_strategy,
        },
        "cluster": {
            "nodes": [{"node_id": n["node_id"], "ip": n["ip"], "total": _plain_resources(n["total"]),
                       "free": _plain_resources(n["free"])} for n in nodes],
            "total": summed("total"),
            "free": summed("free"),
        },
        "assignment": {role: [node[:12] for node in where] for role, where in fit.assignment.items()},
    }


def _job_info() -> dict[str, Any] | None:
    """When run as a submitted job: where its working dir landed and what was uploaded."""
    env = job_runtime_env()
    if env is None:
        return None
    cwd = os.getcwd()
    return {"working_dir": cwd, "entries": sorted(os.listdir(cwd)),
            "runtime_env_vars": sorted((env.get("env_vars") or {}))}


def run_preflight(cfg: Config) -> dict[str, Any]:
    ctx = init_ray(cfg)
    try:
        import ray

        report = build_report(cfg, cluster_nodes())
        report.update(address=ctx.address, started_here=ctx.started_here, namespace=ctx.namespace,
                      ray_version=ray.__version__, python=sys.executable, job=_job_info())
        return report
    finally:
        shutdown_ray(ctx)


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m cluster.preflight", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="debug_cpu", help=f"one of {available_presets()}")
    ap.add_argument("--config", default=None, help="a YAML config file (instead of a preset)")
    ap.add_argument("--address", default=None, help="Ray GCS address (default: RAY_ADDRESS, then the config)")
    ap.add_argument("--out", default=None, help="also write the JSON report to this file")
    ap.add_argument("overrides", nargs="*", help="dotted overrides such as cluster.learner.num_gpus=1")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    try:
        cfg = load_config(args.preset, args.overrides, args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    bad = config_problems(cfg)
    if bad:
        print(json.dumps({"ok": False, "problems": bad}, indent=2))
        return 2
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address  # what init_ray reads first
    try:
        report = run_preflight(cfg)
    except RaySetupError as exc:
        print(json.dumps({"ok": False, "problems": [str(exc)]}, indent=2))
        return 3
    report["preset"] = None if args.config else args.preset
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if not report["ok"]:
        print("preflight: the cluster cannot hold this run:\n  - " + "\n  - ".join(report["problems"]),
              file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
