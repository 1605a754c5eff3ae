"""`python -m cluster.kuberay`: KubeRay RayCluster / RayJob manifests for a preset.

    .venv/bin/python -m cluster.kuberay --preset paper_2b --out cluster/manifests \
        [--image REGISTRY/videoseg-o3-gpu:0.1.0] [--redis-address videoseg-redis:6379]

Writes `<preset>-raycluster.yaml` (a long-lived cluster for `ray job submit` through a
port-forward), `<preset>-rayjob.yaml` (cluster + training job in one object) and
`<preset>-storage.yaml` (the checkpoint volume claim). The shape follows the config:

- one worker group per GPU role (rollout, reward, learner); a group's GPUs = actors x GPUs per
  actor, split into pods of at most --gpus-per-node GPUs; each group advertises the custom Ray
  resource `videoseg_<role>` (one unit per actor) so the driver's placement groups land there;
- env actors (CPU only) get their CPUs in the rollout pods, next to the workers that call them;
- the head runs the driver only (`num-cpus: 0`: no actor is scheduled on it);
- GCS fault tolerance through an external Redis whose password comes from a Secret
  (`gcsFaultToleranceOptions`, the form this KubeRay CRD version has);
- checkpoints on a ReadWriteMany claim mounted at /checkpoints; models and data on existing claims
  mounted read-only at /models and /data; the job runs `learner.main --resume`, and `backoffLimit`
  retries bring up a fresh cluster that continues from the latest checkpoint;
- pods run as a non-root user with no privilege escalation and all capabilities dropped, with
  requests = limits, HF_HUB_OFFLINE=1, and no Kubernetes API token mounted.

The config is validated (and its paths checked against the mounts) before anything is written.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from cluster.ray_setup import DEFAULT_ENV_VARS
from cluster.roles import config_problems, role_demand, role_resource_name
from configs import ConfigError, load_config
from configs.schema import Config

RAY_VERSION = "2.60.0"
DEFAULT_IMAGE = "videoseg-o3-gpu:0.1.0"
GPU_ROLES = ("rollout", "reward", "learner")
MOUNTS = {"checkpoints": "/checkpoints", "models": "/models", "data": "/data"}
# Paper presets ship with model paths unset; the job points them at the models volume.
DEFAULT_MODEL_OVERRIDES = ("model.policy=/models/policy",
                           "model.sam2_checkpoint=/models/sam2/sam2.1_hiera_large.pt")
SPARE_CPUS = 4       # per worker pod, for raylet, object transfers and small helper tasks
HEAD_CPUS, HEAD_MEMORY_GIB = 8, 64


class ManifestError(ValueError):
    pass


@dataclass
class DeploySettings:
    image: str = DEFAULT_IMAGE
    name: str | None = None                 # default: vso3-<preset>
    namespace: str | None = None            # default: the kubectl context's namespace
    redis_address: str = "videoseg-redis:6379"
    redis_secret: str = "videoseg-redis"    # Secret with the Redis password under redis_secret_key
    redis_secret_key: str = "password"
    checkpoint_claim: str = "videoseg-checkpoints"
    checkpoint_size: str = "2Ti"
    storage_class: str | None = None
    models_claim: str = "videoseg-models"
    data_claim: str = "videoseg-data"
    gpus_per_node: int = 8
    memory_per_gpu_gib: int = 96
    backoff_limit: int = 3
    ttl_after_finished_s: int = 600
    run_as_user: int = 1000
    overrides: list[str] = field(default_factory=lambda: list(DEFAULT_MODEL_OVERRIDES))


# ------------------------------------------------------------------------------ config checks
def resource_name(preset: str, settings: DeploySettings) -> str:
    name = settings.name or "vso3-" + preset.replace("_", "-").lower()
    if len(name) > 47:  # KubeRay appends 6 characters for a RayJob's cluster; 53 is its limit
        raise ManifestError(f"name '{name}' is longer than 47 characters")
    return name


def _under(path, root: str) -> bool:
    return path is not None and PurePosixPath(str(path)).is_relative_to(root)


def path_problems(cfg: Config) -> list[str]:
    """Paths the job reads or writes that no volume provides (they would vanish with the pod)."""
    problems = []
    if not _under(cfg.run.output_dir, MOUNTS["checkpoints"]):
        problems.append(f"run.output_dir={cfg.run.output_dir} is not under the checkpoint volume "
                        f"{MOUNTS['checkpoints']}: checkpoints would be lost with the pod")
    for spec in cfg.data.train + cfg.data.eval:
        if spec.root is not None and not _under(spec.root, MOUNTS["data"]):
            problems.append(f"dataset {spec.name}: root {spec.root} is not under {MOUNTS['data']}")
    if not cfg.model.is_tiny_policy and not _under(cfg.model.policy, MOUNTS["models"]):
        problems.append(f"model.policy={cfg.model.policy} is not under {MOUNTS['models']}")
    for name in ("sam2_checkpoint", "projector_checkpoint"):
        value = getattr(cfg.model, name)
        if value is not None and not _under(value, MOUNTS["models"]):
            problems.append(f"model.{name}={value} is not under {MOUNTS['models']}")
    return problems


def load_job_config(preset: str, overrides: list[str]) -> Config:
    try:
        cfg = load_config(preset, overrides)
    except ConfigError as exc:
        raise ManifestError(f"preset {preset} with overrides {overrides}: {exc}") from None
    problems = config_problems(cfg) + path_problems(cfg)
    for role in GPU_ROLES:
        if not role_demand(cfg, role).uses_gpus:
            problems.append(f"cluster.{role}.num_gpus is 0: these manifests are for GPU runs "
                            "(use the local debug mode for CPU presets)")
    if problems:
        raise ManifestError("cannot deploy this config:\n  - " + "\n  - ".join(problems))
    return cfg


def job_entrypoint(preset: str, overrides: list[str]) -> str:
    """The driver command; --resume continues from the latest checkpoint when there is one."""
    return shlex.join(["python", "-m", "learner.main", "--preset", preset, "--resume", *overrides])


# ------------------------------------------------------------------------------ pod pieces
def _container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "privileged": False, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


def _pod_security(settings: DeploySettings) -> dict:
    uid = settings.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _env(settings: DeploySettings) -> list[dict]:
    env = [{"name": k, "value": v} for k, v in DEFAULT_ENV_VARS.items()]
    env += [
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
        {"name": "TORCH_EXTENSIONS_DIR", "value": "/tmp/torch_extensions"},
        # For a Redis-backed ledger or frame cache (cluster.ledger_redis_url, env.frame_cache):
        # the same Redis, the password from the same Secret, never from the config.
        {"name": "VIDEOSEG_REDIS_PASSWORD",
         "valueFrom": {"secretKeyRef": {"name": settings.redis_secret, "key": settings.redis_secret_key}}},
    ]
    return env


def _volumes(settings: DeploySettings, shm_gib: int) -> tuple[list[dict], list[dict]]:
    volumes = [
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": settings.checkpoint_claim}},
        {"name": "models", "persistentVolumeClaim": {"claimName": settings.models_claim, "readOnly": True}},
        {"name": "data", "persistentVolumeClaim": {"claimName": settings.data_claim, "readOnly": True}},
        # Ray's object store and NCCL live in /dev/shm; the container default (64 MiB) is far too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gib}Gi"}},
    ]
    mounts = [
        {"name": "checkpoints", "mountPath": MOUNTS["checkpoints"]},
        {"name": "models", "mountPath": MOUNTS["models"], "readOnly": True},
        {"name": "data", "mountPath": MOUNTS["data"], "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    return volumes, mounts


def shm_gib(memory_gib: int) -> int:
    """The pod's /dev/shm size: 30% of its memory (at least 8 GiB)."""
    return max(8, memory_gib * 3 // 10)


def ray_start_params(memory_gib: int, **params: str) -> dict:
    """`ray start` flags of a pod. The object store gets two thirds of /dev/shm, not Ray's default
    (30% of memory, i.e. all of it): the rest holds weight versions the learner writes and the
    copies rollout workers on other nodes stage there during a sync."""
    return {**params, "object-store-memory": str(shm_gib(memory_gib) * 2 // 3 * 1024 ** 3)}


def pod_template(container: str, component: str, cpus: int, memory_gib: int, gpus: int,
                 settings: DeploySettings) -> dict:
    """A Ray pod: guaranteed QoS (requests = limits), non-root, volumes mounted."""
    limits = {"cpu": str(cpus), "memory": f"{memory_gib}Gi"}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    volumes, mounts = _volumes(settings, shm_gib(memory_gib))
    spec = {
        "automountServiceAccountToken": False,  # Ray pods never call the Kubernetes API
        "securityContext": _pod_security(settings),
        "containers": [{
            "name": container,
            "image": settings.image,
            "imagePullPolicy": "IfNotPresent",
            "env": _env(settings),
            "resources": {"requests": dict(limits), "limits": dict(limits)},
            "securityContext": _container_security(),
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }
    if gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    labels = {"app.kubernetes.io/name": "videoseg-o3", "app.kubernetes.io/component": component}
    return {"metadata": {"labels": labels}, "spec": spec}


# ------------------------------------------------------------------------------ groups
@dataclass(frozen=True)
class GroupShape:
    role: str
    replicas: int
    gpus_per_pod: int
    actors_per_pod: int
    cpus_per_pod: int
    memory_gib_per_pod: int


def group_shapes(cfg: Config, settings: DeploySettings) -> list[GroupShape]:
    """Pods per GPU role; env actors' CPUs are added to the rollout pods."""
    env = role_demand(cfg, "env")
    shapes = []
    for role in GPU_ROLES:
        d = role_demand(cfg, role)
        total_gpus = d.total_gpus
        if abs(total_gpus - round(total_gpus)) > 1e-6:
            raise ManifestError(f"{role}: {d.count} actors x {d.num_gpus} GPUs is not a whole number of GPUs")
        total_gpus = int(round(total_gpus))
        replicas = max(1, math.ceil(total_gpus / settings.gpus_per_node))
        if total_gpus % replicas or d.count % replicas:
            raise ManifestError(f"{role}: {d.count} actors on {total_gpus} GPUs do not split evenly over "
                                f"{replicas} pods of at most {settings.gpus_per_node} GPUs")
        actors = d.count // replicas
        cpus = actors * d.num_cpus + SPARE_CPUS
        if role == "rollout":
            cpus += env.total_cpus / replicas
        gpus = total_gpus // replicas
        shapes.append(GroupShape(role, replicas, gpus, actors, int(math.ceil(cpus)),
                                 gpus * settings.memory_per_gpu_gib + 32))
    return shapes


def worker_group(shape: GroupShape, settings: DeploySettings) -> dict:
    return {
        "groupName": shape.role,
        "replicas": shape.replicas, "minReplicas": shape.replicas, "maxReplicas": shape.replicas,
        "rayStartParams": ray_start_params(shape.memory_gib_per_pod),
        # Structured group resources: KubeRay passes custom keys to `ray start --resources`.
        "resources": {role_resource_name(shape.role): str(shape.actors_per_pod)},
        "template": pod_template("ray-worker", shape.role, shape.cpus_per_pod, shape.memory_gib_per_pod,
                                 shape.gpus_per_pod, settings),
    }


def cluster_spec(cfg: Config, settings: DeploySettings) -> dict:
    if "@" in settings.redis_address:
        raise ManifestError("redis_address must not carry credentials; the password comes from the Secret")
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": False,  # fixed size: every group is needed from the first step
        "gcsFaultToleranceOptions": {
            "redisAddress": settings.redis_address,
            "redisPassword": {"valueFrom": {"secretKeyRef": {"name": settings.redis_secret,
                                                             "key": settings.redis_secret_key}}},
        },
        "headGroupSpec": {
            "serviceType": "ClusterIP",
            # num-cpus 0: the driver only; no actor lands on the head
            "rayStartParams": ray_start_params(HEAD_MEMORY_GIB, **{"num-cpus": "0"}),
            "template": pod_template("ray-head", "head", HEAD_CPUS, HEAD_MEMORY_GIB, 0, settings),
        },
        "workerGroupSpecs": [worker_group(s, settings) for s in group_shapes(cfg, settings)],
    }


def _metadata(name: str, settings: DeploySettings) -> dict:
    meta = {"name": name, "labels": {"app.kubernetes.io/name": "videoseg-o3",
                                     "app.kubernetes.io/part-of": "videoseg-o3"}}
    if settings.namespace:
        meta["namespace"] = settings.namespace
    return meta


def raycluster_manifest(cfg: Config, name: str, settings: DeploySettings) -> dict:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": _metadata(name, settings),
            "spec": cluster_spec(cfg, settings)}


def rayjob_manifest(cfg: Config, preset: str, name: str, settings: DeploySettings) -> dict:
    runtime_env = yaml.safe_dump({"env_vars": dict(DEFAULT_ENV_VARS)}, sort_keys=True)
    submitter = pod_template("ray-job-submitter", "submitter", 1, 1, 0, settings)
    submitter["spec"]["restartPolicy"] = "Never"
    # The submitter only talks to the dashboard: no volumes, no secrets.
    container = submitter["spec"]["containers"][0]
    container.pop("volumeMounts")
    container["env"] = [e for e in container["env"] if "valueFrom" not in e]
    submitter["spec"].pop("volumes")
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _metadata(name, settings),
        "spec": {
            "entrypoint": job_entrypoint(preset, settings.overrides),
            "runtimeEnvYAML": runtime_env,
            # Each retry is a fresh cluster whose driver resumes from the latest checkpoint.
            "backoffLimit": settings.backoff_limit,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": settings.ttl_after_finished_s,
            "submissionMode": "K8sJobMode",
            "submitterPodTemplate": submitter,
            "rayClusterSpec": cluster_spec(cfg, settings),
        },
    }


def storage_manifest(settings: DeploySettings) -> dict:
    spec = {"accessModes": ["ReadWriteMany"],  # head (driver) and learner pods write to it
            "resources": {"requests": {"storage": settings.checkpoint_size}}}
    if settings.storage_class:
        spec["storageClassName"] = settings.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _metadata(settings.checkpoint_claim, settings), "spec": spec}


def render_manifests(preset: str, settings: DeploySettings) -> dict[str, dict]:
    """File name -> manifest, for one preset."""
    cfg = load_job_config(preset, settings.overrides)
    name = resource_name(preset, settings)
    return {
        f"{preset}-raycluster.yaml": raycluster_manifest(cfg, name, settings),
        f"{preset}-rayjob.yaml": rayjob_manifest(cfg, preset, name, settings),
        f"{preset}-storage.yaml": storage_manifest(settings),
    }


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (runtimeEnvYAML) as literal blocks, so the YAML inside stays readable."""


def _str_representer(dumper: yaml.SafeDumper, data: str):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_ManifestDumper.add_representer(str, _str_representer)


def generated_header(preset: str, settings: DeploySettings) -> str:
    return (f"# Generated by `python -m cluster.kuberay --preset {preset}` (image {settings.image}, "
            f"redis {settings.redis_address}).\n# Edit the generator or its flags, not this file.\n")


def render_files(preset: str, settings: DeploySettings) -> dict[str, str]:
    """File name -> YAML text, exactly as written by the CLI."""
    header = generated_header(preset, settings)
    return {name: header + yaml.dump(doc, Dumper=_ManifestDumper, sort_keys=False, width=100)
            for name, doc in render_manifests(preset, settings).items()}


def write_manifests(preset: str, out_dir: Path, settings: DeploySettings) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in render_files(preset, settings).items():
        path = out_dir / filename
        path.write_text(text)
        written.append(path)
    return written


def _parse(argv):
    d = DeploySettings()
    ap = argparse.ArgumentParser(prog="python -m cluster.kuberay", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", required=True)
    ap.add_argument("--out", type=Path, required=True, help="directory to write the YAML files into")
    ap.add_argument("--image", default=d.image,
                    help="GPU image built from docker/Dockerfile.gpu (pinned tag)")
    ap.add_argument("--redis-address", default=d.redis_address, help="host:port of the external Redis")
    ap.add_argument("--redis-secret", default=d.redis_secret, help="Secret holding the Redis password")
    ap.add_argument("--name", default=None)
    ap.add_argument("--namespace", default=None)
    ap.add_argument("--storage-class", default=None, help="a class offering ReadWriteMany")
    ap.add_argument("--checkpoint-size", default=d.checkpoint_size)
    ap.add_argument("--gpus-per-node", type=int, default=d.gpus_per_node)
    ap.add_argument("--backoff-limit", type=int, default=d.backoff_limit)
    ap.add_argument("--override", action="append", default=None,
                    help="dotted override for the job (repeatable); default: "
                         f"{list(DEFAULT_MODEL_OVERRIDES)}")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    settings = DeploySettings(image=args.image, name=args.name, namespace=args.namespace,
                              redis_address=args.redis_address, redis_secret=args.redis_secret,
                              storage_class=args.storage_class, checkpoint_size=args.checkpoint_size,
                              gpus_per_node=args.gpus_per_node, backoff_limit=args.backoff_limit)
    if args.override is not None:
        settings.overrides = args.override
    try:
        paths = write_manifests(args.preset, args.out, settings)
    except ManifestError as exc:
        print(f"kuberay: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
