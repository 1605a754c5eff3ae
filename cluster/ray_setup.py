"""Start or connect to Ray, size actors per role, reserve GPUs with placement groups, shut down.

The driver (`learner.main`) calls, in order:

    ctx = init_ray(cfg)                              # start in-process, or connect
    placements = create_role_placement(cfg)          # GPU roles: one placement group each
    opts = actor_options(cfg, "learner", placements, rank)   # kwargs for ActorClass.options(...)
    ...
    shutdown_ray(ctx, placements)

Importing this module starts nothing and does not import Ray (Ray is imported inside the
functions that need it), so configs, unit tests and manifest tools can use the pure helpers.

Address resolution: the `RAY_ADDRESS` environment variable wins over `cluster.ray_address`
(a submitted job gets RAY_ADDRESS from Ray itself). No address at all: Ray starts in-process with
`local_num_cpus(cfg)` logical CPUs (all role actors at once plus one spare), the dashboard, if
enabled, bound to `cluster.dashboard_host` (loopback by default).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from cluster.roles import (
    ROLES,
    RoleDemand,
    config_problems,
    local_num_cpus,
    role_demand,
    role_resource_name,
)
from configs.schema import Config

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ray.util.placement_group import PlacementGroup

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Set for every Ray worker of a run: no model hub is reachable anywhere this system runs, and
# tokenizers' own thread pool fights Ray's worker processes for cores.
DEFAULT_ENV_VARS: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# Environment variable holding the job-level runtime env inside a job started by `ray job submit`.
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
_SECRET_PARTS = {"PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "CREDENTIALS", "APIKEY"}


class RaySetupError(RuntimeError):
    """Ray could not be started, reached, or could not hold what the config asks for."""


@dataclass(frozen=True)
class RayContext:
    """What init_ray did. `started_here`: this process owns the Ray instance and stops it."""

    started_here: bool
    address: str
    namespace: str
    dashboard_url: str | None = None
    runtime_env: dict = field(default_factory=dict)
    # True when Ray was already initialised by someone else (a test fixture, a notebook):
    # init_ray then changes nothing and shutdown_ray leaves the connection alone.
    reused: bool = False


# ------------------------------------------------------------------------------ pure helpers
def resolve_address(cfg: Config, environ: Mapping[str, str] | None = None) -> str | None:
    """The address to connect to, or None to start Ray in-process. RAY_ADDRESS wins."""
    environ = os.environ if environ is None else environ
    address = (environ.get("RAY_ADDRESS") or "").strip() or cfg.cluster.ray_address
    if address and address.startswith(("http://", "https://")):
        raise RaySetupError(
            f"Ray address '{address}' is a dashboard (job submission) URL; the driver connects to "
            "the cluster's GCS address host:port (or 'auto'). Unset RAY_ADDRESS, or use "
            "`python -m cluster.submit` for job submission."
        )
    return address or None


def ray_namespace(cfg: Config) -> str:
    """Namespace for the run's named actors: runs with different names never see each other's."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.run.name).strip("-") or "run"
    return f"videoseg-{name}"


def looks_secret(name: str) -> bool:
    """True for variable names that carry credentials (HF_TOKEN, REDIS_PASSWORD, ...)."""
    parts = set(name.upper().split("_"))
    return bool(parts & _SECRET_PARTS) or name.upper().endswith(("_KEY", "API_KEY"))


def check_no_secrets(env_vars: Mapping[str, str]) -> None:
    """Runtime envs are shown by the dashboard and stored in the GCS: secrets must not go there."""
    bad = sorted(k for k in env_vars if looks_secret(k))
    if bad:
        raise RaySetupError(
            f"refusing to put {bad} into the Ray runtime_env: the dashboard shows runtime envs to "
            "anyone who can reach it. Set secrets in the environment of the Ray processes instead "
            "(locally: export them before starting; KubeRay: env from a secretKeyRef)."
        )


def job_runtime_env(environ: Mapping[str, str] | None = None) -> dict | None:
    """The runtime env of the submitted job this process is the driver of, if any."""
    environ = os.environ if environ is None else environ
    raw = environ.get(_JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        return json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}


def driver_runtime_env(cfg: Config, extra_env: Mapping[str, str] | None = None, *,
                       start_local: bool, job_env: Mapping[str, Any] | None = None) -> dict:
    """The runtime_env the driver passes to ray.init.

    - env vars: DEFAULT_ENV_VARS plus `extra_env` (which wins);
    - starting locally, PYTHONPATH gets the project root so worker processes import the project's
      packages whatever their working directory;
    - inside a submitted job, keys the job already sets are dropped: Ray refuses to merge a driver
      runtime_env that repeats a job-level env var, and the job's values were chosen by whoever
      submitted it.
    """
    env_vars = dict(DEFAULT_ENV_VARS)
    if start_local:
        env_vars["PYTHONPATH"] = str(PROJECT_ROOT)
    env_vars.update({str(k): str(v) for k, v in (extra_env or {}).items()})
    check_no_secrets(env_vars)
    if job_env is not None:
        already = set((job_env.get("env_vars") or {}))
        env_vars = {k: v for k, v in env_vars.items() if k not in already}
    return {"env_vars": env_vars} if env_vars else {}


def role_options(cfg: Config, role: str) -> dict:
    """Keyword arguments for `ray.remote(...)` / `ActorClass.options(...)` of one role's actors.

    Restarts and retries follow what each role can survive:
      env, reward  restart and retry (their calls are pure functions of the arguments: a retried
                   call gives the same answer);
      rollout      restart, no retry (a lost generation call is re-issued by the driver, which
                   knows which groups are still owed);
      learner      neither: a DeepSpeed rank that restarts alone cannot rejoin its process group;
                   a lost rank is recovered by resuming the run from its last checkpoint.
    """
    d = role_demand(cfg, role)
    restarts = cfg.cluster.actor_max_restarts
    opts: dict[str, Any] = {
        "num_cpus": d.num_cpus,
        "num_gpus": d.num_gpus,
        "max_restarts": 0 if role == "learner" else restarts,
        "max_task_retries": restarts if role in ("env", "reward") else 0,
    }
    if role == "rollout" and not d.uses_gpus:
        # The CPU build of vLLM sizes its KV cache from this variable (GiB), not from memory use.
        opts["runtime_env"] = {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(cfg.rollout.cpu_kv_cache_gib)}}
    return opts


def role_bundles(demand: RoleDemand, advertised: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """One placement bundle per actor of the role; `advertised` = custom resources the cluster has.

    A cluster built from our KubeRay manifests advertises `videoseg_<role>` on the worker group
    meant for that role; bundles then ask for one unit so the role lands on its own group.
    """
    bundle: dict[str, float] = {}
    if demand.num_cpus > 0:
        bundle["CPU"] = demand.num_cpus
    if demand.num_gpus > 0:
        bundle["GPU"] = demand.num_gpus
    name = role_resource_name(demand.role)
    if name in advertised:
        bundle[name] = 1.0
    return [dict(bundle) for _ in range(demand.count)]


# ------------------------------------------------------------------------------ Ray calls
def init_ray(cfg: Config, extra_env: dict | None = None) -> RayContext:
    """Start Ray in-process (no address) or connect (RAY_ADDRESS / cluster.ray_address).

    Raises RaySetupError with a readable message when the config's resources cannot work or the
    cluster cannot be reached.
    """
    import ray

    problems = config_problems(cfg)
    if problems:
        raise RaySetupError("cluster resources in the config cannot work:\n  - " + "\n  - ".join(problems))
    namespace = ray_namespace(cfg)
    if ray.is_initialized():
        log.warning("Ray is already initialised in this process; using that connection as it is "
                    "(runtime_env and namespace of init_ray are not applied)")
        current = ray.get_runtime_context()
        return RayContext(False, current.gcs_address, current.namespace, reused=True)

    address = resolve_address(cfg)
    start_local = address is None
    in_job = job_runtime_env()
    runtime_env = driver_runtime_env(cfg, extra_env, start_local=start_local, job_env=in_job)
    kwargs: dict[str, Any] = {"namespace": namespace, "runtime_env": runtime_env or None}
    if start_local:
        # "local" (not None): never attach to some other `ray start` cluster found on this machine.
        kwargs.update(
            address="local",
            num_cpus=local_num_cpus(cfg),
            include_dashboard=cfg.cluster.include_dashboard,
            dashboard_host=cfg.cluster.dashboard_host,
        )
        if cfg.cluster.object_store_memory_mb:
            kwargs["object_store_memory"] = cfg.cluster.object_store_memory_mb * 1024 * 1024
    else:
        kwargs["address"] = address
    try:
        info = ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = "start a local Ray instance" if start_local else f"connect to Ray at '{address}'"
        raise RaySetupError(f"could not {where}: {exc}") from exc
    gcs = (getattr(info, "address_info", None) or {}).get("gcs_address") \
        or ray.get_runtime_context().gcs_address
    dashboard = getattr(info, "dashboard_url", None) or None
    if dashboard and not dashboard.startswith("http"):
        dashboard = f"http://{dashboard}"
    log.info("Ray %s at %s (namespace %s)", "started" if start_local else "connected", gcs, namespace)
    return RayContext(start_local, gcs, namespace, dashboard, runtime_env)


def advertised_role_resources() -> frozenset[str]:
    """The `videoseg_<role>` resources the connected cluster offers (empty on a plain cluster)."""
    import ray

    wanted = {role_resource_name(r) for r in ROLES}
    return frozenset(k for k in ray.cluster_resources() if k in wanted)


def create_role_placement(cfg: Config, *, timeout_s: float | None = 600.0,
                          ) -> dict[str, "PlacementGroup | None"]:
    """One placement group per GPU role (bundle per actor, cfg.cluster.placement_strategy).

    CPU-only roles map to None: their actors are scheduled by plain CPU resources. With a timeout,
    waits until every group is placed; if one cannot be, removes the groups it made and raises
    RaySetupError naming what was asked and what the cluster has.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    advertised = advertised_role_resources()
    namespace = ray_namespace(cfg)
    placements: dict[str, PlacementGroup | None] = {}
    for role in ROLES:
        demand = role_demand(cfg, role)
        if not demand.uses_gpus or demand.count == 0:
            placements[role] = None
            continue
        placements[role] = placement_group(role_bundles(demand, advertised),
                                           strategy=cfg.cluster.placement_strategy,
                                           name=f"{namespace}-{role}")
    groups = {r: pg for r, pg in placements.items() if pg is not None}
    if timeout_s is None or not groups:
        return placements
    ready, _ = ray.wait([pg.ready() for pg in groups.values()], num_returns=len(groups),
                        timeout=timeout_s)
    if len(ready) < len(groups):
        asked = {r: role_bundles(role_demand(cfg, r), advertised) for r in groups}
        available = ray.available_resources()
        for pg in groups.values():
            remove_placement_group(pg)
        raise RaySetupError(
            f"placement groups not placed within {timeout_s:g} s (strategy "
            f"{cfg.cluster.placement_strategy}); asked per role: {asked}; cluster has free: "
            f"{ {k: v for k, v in available.items() if not k.startswith('node:')} }. "
            "Run `python -m cluster.preflight` against the cluster for a per-node report."
        )
    return placements


def placement_options(pg: "PlacementGroup | None", bundle_index: int = -1, *,
                      capture_child_tasks: bool = False) -> dict:
    """`.options(...)` kwargs that put an actor into bundle `bundle_index` of `pg` ({} for None)."""
    if pg is None:
        return {}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if bundle_index >= pg.bundle_count:
        raise ValueError(f"bundle index {bundle_index} out of range: the group has {pg.bundle_count}")
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=bundle_index,
        placement_group_capture_child_tasks=capture_child_tasks)}


def actor_options(cfg: Config, role: str, placements: Mapping[str, "PlacementGroup | None"] | None = None,
                  index: int = 0) -> dict:
    """role_options plus, for GPU roles, the scheduling strategy of bundle `index` of its group."""
    opts = role_options(cfg, role)
    pg = (placements or {}).get(role)
    opts.update(placement_options(pg, index))
    return opts


def remove_role_placement(placements: Mapping[str, "PlacementGroup | None"] | None) -> None:
    if not placements:
        return
    import ray
    from ray.util.placement_group import remove_placement_group

    if not ray.is_initialized():
        return
    for pg in placements.values():
        if pg is not None:
            try:
                remove_placement_group(pg)
            except Exception as exc:  # already gone with its job; nothing left to free
                log.debug("placement group removal: %s", exc)


def shutdown_ray(ctx: RayContext, placements: Mapping[str, "PlacementGroup | None"] | None = None) -> None:
    """Release what init_ray/create_role_placement took.

    Placement groups are removed; a Ray instance started here is stopped; a connection to an
    existing cluster is closed (the cluster keeps running); a reused connection is left alone.
    """
    import ray

    remove_role_placement(placements)
    if ctx.reused or not ray.is_initialized():
        return
    ray.shutdown()
