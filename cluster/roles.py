"""What each actor role asks of the cluster, and whether a cluster can hold it.

Pure Python (no Ray import): the Ray setup, the preflight check and the KubeRay generator all
read the same numbers from here, so a manifest, a placement group and a preflight report cannot
disagree about how many GPUs the learner needs.

Roles and how many actors each has:
  rollout  cfg.rollout.num_workers   vLLM engines
  reward   cfg.reward.num_actors     SAM2 reward pool
  env      cfg.env.num_actors        video environment (CPU only in every preset)
  learner  cfg.learner.num_ranks     DeepSpeed ranks
Per-actor CPUs/GPUs come from cfg.cluster.<role> (RoleResources).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from configs.schema import Config

ROLES = ("rollout", "reward", "env", "learner")

# Ray accounts resources in units of 1/10000; compare with a tolerance below that.
_EPS = 1e-6


def role_resource_name(role: str) -> str:
    """Custom Ray resource a node advertises to say "actors of this role belong here".

    The KubeRay manifests put it on each worker group (one unit per actor slot); placement
    bundles ask for it only when the cluster advertises it, so a plain local cluster is unaffected.
    """
    _check_role(role)
    return f"videoseg_{role}"


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role '{role}'; known roles: {list(ROLES)}")


@dataclass(frozen=True)
class RoleDemand:
    """`count` actors of one role, each needing `num_cpus` CPUs and `num_gpus` GPUs."""

    role: str
    count: int
    num_cpus: float
    num_gpus: float

    @property
    def total_cpus(self) -> float:
        return self.count * self.num_cpus

    @property
    def total_gpus(self) -> float:
        return self.count * self.num_gpus

    @property
    def uses_gpus(self) -> bool:
        return self.num_gpus > 0


def role_count(cfg: Config, role: str) -> int:
    _check_role(role)
    return {
        "rollout": cfg.rollout.num_workers,
        "reward": cfg.reward.num_actors,
        "env": cfg.env.num_actors,
        "learner": cfg.learner.num_ranks,
    }[role]


def role_demand(cfg: Config, role: str) -> RoleDemand:
    _check_role(role)
    res = getattr(cfg.cluster, role)
    return RoleDemand(role, role_count(cfg, role), float(res.num_cpus), float(res.num_gpus))


def role_demands(cfg: Config) -> dict[str, RoleDemand]:
    return {role: role_demand(cfg, role) for role in ROLES}


def total_demand(cfg: Config) -> tuple[float, float]:
    """(CPUs, GPUs) that all role actors together reserve."""
    demands = role_demands(cfg).values()
    return sum(d.total_cpus for d in demands), sum(d.total_gpus for d in demands)


def local_num_cpus(cfg: Config) -> int:
    """Logical CPUs for an in-process Ray started for this config.

    Every role actor must be schedulable at once, plus one spare CPU for the small helper tasks a
    driver runs (default num_cpus=1). Logical CPUs may exceed the physical cores: on a 2-core
    debug machine the actors time-share, which is what the local debug mode is for.
    """
    cpus, _ = total_demand(cfg)
    return int(math.ceil(cpus - _EPS)) + 1


def config_problems(cfg: Config) -> list[str]:
    """Resource settings that cannot work whatever the cluster (checked before touching Ray)."""
    problems = []
    roll = role_demand(cfg, "rollout")
    tp = cfg.rollout.tensor_parallel_size
    if roll.uses_gpus and roll.num_gpus + _EPS < tp:
        problems.append(
            f"rollout.tensor_parallel_size={tp} but cluster.rollout.num_gpus={roll.num_gpus}: each "
            f"rollout worker runs one engine over {tp} GPUs, so it must reserve at least {tp}"
        )
    for d in role_demands(cfg).values():
        if d.num_gpus > 1 and abs(d.num_gpus - round(d.num_gpus)) > _EPS:
            problems.append(f"cluster.{d.role}.num_gpus={d.num_gpus}: "
                            "more than one GPU must be a whole number")
        if d.num_cpus == 0 and d.num_gpus == 0:
            # Ray would pack unlimited actors of this role onto one node.
            problems.append(f"cluster.{d.role} reserves no CPU and no GPU; give it num_cpus > 0")
    return problems


# ------------------------------------------------------------------------------ fit check
@dataclass
class NodeCapacity:
    """Free resources of one Ray node (CPU, GPU and any custom resources)."""

    node_id: str
    resources: dict[str, float]


@dataclass
class FitReport:
    ok: bool
    assignment: dict[str, list[str]] = field(default_factory=dict)  # role -> node id per actor
    problems: list[str] = field(default_factory=list)


def _actor_needs(d: RoleDemand, role_resources: set[str]) -> dict[str, float]:
    needs = {"CPU": d.num_cpus, "GPU": d.num_gpus}
    name = role_resource_name(d.role)
    if name in role_resources:
        needs[name] = 1.0
    return {k: v for k, v in needs.items() if v > 0}


def _fits(free: dict[str, float], needs: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + _EPS >= v for k, v in needs.items())


def _take(free: dict[str, float], needs: dict[str, float]) -> None:
    for k, v in needs.items():
        free[k] = free.get(k, 0.0) - v


def _describe(free: dict[str, dict[str, float]]) -> str:
    parts = []
    for node, res in free.items():
        shown = ", ".join(f"{k}={v:g}" for k, v in sorted(res.items()) if not k.startswith("node:")
                          and k not in ("memory", "object_store_memory"))
        parts.append(f"{node[:12]}: {shown or 'nothing'}")
    return "; ".join(parts) or "no nodes"


def check_fit(demands: dict[str, RoleDemand], nodes: list[NodeCapacity],
              strategy: str = "PACK") -> FitReport:
    """Place every actor on a node (best fit, GPU-heavy roles first) without over-committing.

    This mirrors what Ray will have to do when the driver creates its placement groups and actors:
    each actor's CPUs and GPUs must come from a single node. With STRICT_PACK the bundles of one
    GPU role must share a node. Greedy placement can miss a packing that exists in rare cases;
    then the report errs on the side of "does not fit".
    """
    free = {n.node_id: dict(n.resources) for n in nodes}
    role_resources = {k for n in nodes for k in n.resources if k.startswith("videoseg_")}
    report = FitReport(ok=True)
    order = sorted(demands.values(), key=lambda d: (-d.num_gpus, -d.num_cpus, d.role))
    for d in order:
        needs = _actor_needs(d, role_resources)
        report.assignment[d.role] = []
        if d.count == 0:
            continue
        if strategy == "STRICT_PACK" and d.uses_gpus:
            group = {k: v * d.count for k, v in needs.items()}
            candidates = [n for n, res in free.items() if _fits(res, group)]
            if not candidates:
                report.ok = False
                report.problems.append(
                    f"{d.role}: STRICT_PACK needs {d.count} x ({_fmt(needs)}) on one node; free: "
                    f"{_describe(free)}")
                continue
            node = min(candidates, key=lambda n: (free[n].get("GPU", 0), free[n].get("CPU", 0)))
            _take(free[node], group)
            report.assignment[d.role] = [node] * d.count
            continue
        for i in range(d.count):
            candidates = [n for n, res in free.items() if _fits(res, needs)]
            if not candidates:
                report.ok = False
                report.problems.append(
                    f"{d.role}: actor {i + 1} of {d.count} ({_fmt(needs)}) fits on no node; "
                    f"free after placing the others: {_describe(free)}")
                break
            # Best fit: the node left with the least GPU (then CPU) keeps big holes for big actors.
            node = min(candidates, key=lambda n: (free[n].get("GPU", 0) - needs.get("GPU", 0),
                                                  free[n].get("CPU", 0) - needs.get("CPU", 0), n))
            _take(free[node], needs)
            report.assignment[d.role].append(node)
    return report


def _fmt(needs: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in needs.items())
