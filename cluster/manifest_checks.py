"""Offline checks of KubeRay manifests: the CRD's OpenAPI schema, then what the schema cannot say.

    .venv/bin/python -m cluster.manifest_checks cluster/manifests/*.yaml

No cluster is needed. Schema validation uses the `openAPIV3Schema` of the KubeRay CRDs in
../shared/k8s_schemas/kuberay (or $VIDEOSEG_K8S_SCHEMAS) with jsonschema, in the API server's
strict mode: unknown fields are errors, where a plain apply would silently drop them (a misspelt
`gcsFaultTolerance` would otherwise just switch fault tolerance off).

The semantic checks encode this project's rules and the operator's own validation: non-root pods,
requests and limits on every container, pinned images, secrets referenced and never inlined,
GCS fault tolerance configured the one supported way, HF_HUB_OFFLINE set, checkpoints on a volume,
names within KubeRay's length limits.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

from cluster.ray_setup import PROJECT_ROOT, looks_secret

SCHEMA_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47}  # KubeRay's limits (it appends suffixes to names)
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def schema_dir() -> Path:
    default = PROJECT_ROOT.parent / "shared" / "k8s_schemas"
    return Path(os.environ.get("VIDEOSEG_K8S_SCHEMAS", default)) / "kuberay"


def _strict(node: Any) -> Any:
    """Forbid properties the schema does not declare, except where Kubernetes keeps unknown fields."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str, version: str = "v1", strict: bool = True) -> dict:
    path = schema_dir() / SCHEMA_FILES[kind]
    if not path.exists():
        raise FileNotFoundError(f"CRD schema for {kind} not found at {path}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are MBs of YAML
    crd = yaml.load(path.read_text(), Loader=loader)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = v["schema"]["openAPIV3Schema"]
            return _strict(copy.deepcopy(schema)) if strict else schema
    raise KeyError(f"{path} has no version {version}")


def schema_errors(doc: dict) -> list[str]:
    """jsonschema errors of a RayCluster/RayJob against its CRD (other kinds: no schema here)."""
    import jsonschema

    kind = doc.get("kind")
    if kind not in SCHEMA_FILES:
        return []
    version = str(doc.get("apiVersion", "")).split("/")[-1]
    validator = jsonschema.Draft7Validator(crd_schema(kind, version))
    return [f"{kind} {'/'.join(str(p) for p in err.absolute_path) or '(root)'}: {err.message}"
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


# ------------------------------------------------------------------------------ walking
def cluster_spec_of(doc: dict) -> dict | None:
    if doc.get("kind") == "RayCluster":
        return doc.get("spec", {})
    if doc.get("kind") == "RayJob":
        return doc.get("spec", {}).get("rayClusterSpec")
    return None


def pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod template) for the head, every worker group and the RayJob submitter."""
    spec = cluster_spec_of(doc)
    if spec:
        yield "head", spec.get("headGroupSpec", {}).get("template", {})
        for group in spec.get("workerGroupSpecs", []):
            yield f"worker group {group.get('groupName')}", group.get("template", {})
    if doc.get("kind") == "RayJob" and doc["spec"].get("submitterPodTemplate"):
        yield "submitter", doc["spec"]["submitterPodTemplate"]


def gpus_per_group(doc: dict) -> dict[str, int]:
    """GPUs each worker group asks Kubernetes for: replicas x nvidia.com/gpu limit."""
    out = {}
    for group in (cluster_spec_of(doc) or {}).get("workerGroupSpecs", []):
        per_pod = sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
                      for c in group["template"]["spec"]["containers"])
        out[group["groupName"]] = per_pod * int(group.get("replicas", 0))
    return out


# ------------------------------------------------------------------------------ semantics
def _container_problems(where: str, c: dict) -> list[str]:
    problems = []
    name = f"{where}, container {c.get('name')}"
    sc = c.get("securityContext") or {}
    if sc.get("privileged"):
        problems.append(f"{name}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{name}: allowPrivilegeEscalation must be false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        problems.append(f"{name}: capabilities must drop ALL")
    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for key in ("cpu", "memory"):
            if key not in (res.get(kind) or {}):
                problems.append(f"{name}: no {kind}.{key}")
    gpu_req = (res.get("requests") or {}).get("nvidia.com/gpu")
    if gpu_req is not None and gpu_req != (res.get("limits") or {}).get("nvidia.com/gpu"):
        problems.append(f"{name}: GPU requests differ from limits")
    image = str(c.get("image", ""))
    if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
        problems.append(f"{name}: image '{image}' is not pinned to a tag or digest")
    for env in c.get("env") or []:
        if looks_secret(env["name"]) and "value" in env:
            problems.append(f"{name}: env {env['name']} inlines a secret; use valueFrom.secretKeyRef")
    return problems


def _pod_problems(where: str, template: dict) -> list[str]:
    spec = template.get("spec") or {}
    psc = spec.get("securityContext") or {}
    problems = []
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot must be true")
    if psc.get("runAsUser") == 0:
        problems.append(f"{where}: runAsUser 0 is root")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        problems += _container_problems(where, c)
    return problems


def _ft_problems(doc: dict, spec: dict) -> list[str]:
    """GCS fault tolerance through external Redis, configured as KubeRay accepts it."""
    where = doc["kind"]
    ft = spec.get("gcsFaultToleranceOptions")
    if not ft:
        return [f"{where}: no gcsFaultToleranceOptions (GCS fault tolerance is off)"]
    problems = []
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    if "ray.io/ft-enabled" in annotations:
        problems.append(f"{where}: ray.io/ft-enabled annotation together with gcsFaultToleranceOptions")
    if not ft.get("redisAddress"):
        problems.append(f"{where}: gcsFaultToleranceOptions.redisAddress is empty")
    elif "@" in ft["redisAddress"]:
        problems.append(f"{where}: redisAddress carries credentials")
    password = ft.get("redisPassword") or {}
    if "value" in password:
        problems.append(f"{where}: redisPassword is inlined; reference a Secret")
    if not ((password.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name"):
        problems.append(f"{where}: redisPassword must come from a secretKeyRef")
    head = spec.get("headGroupSpec", {})
    if "redis-password" in (head.get("rayStartParams") or {}):
        problems.append(f"{where}: redis-password in rayStartParams (KubeRay rejects it with FT options)")
    head_env = {e["name"] for c in head.get("template", {}).get("spec", {}).get("containers", [])
                for e in c.get("env") or []}
    for name in ("REDIS_PASSWORD", "RAY_REDIS_ADDRESS", "REDIS_USERNAME"):
        if name in head_env:
            problems.append(f"{where}: head sets {name}; KubeRay sets it from gcsFaultToleranceOptions")
    return problems


def semantic_problems(doc: dict) -> list[str]:
    kind = doc.get("kind")
    problems: list[str] = []
    if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
        return [f"Secret {doc['metadata'].get('name')}: secret values must not be committed"]
    name = (doc.get("metadata") or {}).get("name", "")
    if kind in NAME_LIMITS:
        if len(name) > NAME_LIMITS[kind] or not _DNS1035.match(name):
            problems.append(f"{kind} name '{name}': must be a DNS-1035 label of at most {NAME_LIMITS[kind]}")
    spec = cluster_spec_of(doc)
    if spec is None:
        return problems
    problems += _ft_problems(doc, spec)
    if str((spec.get("headGroupSpec") or {}).get("rayStartParams", {}).get("num-cpus")) != "0":
        problems.append(f"{kind}: the head should run the driver only (rayStartParams num-cpus: '0')")
    for where, template in pod_templates(doc):
        problems += _pod_problems(f"{kind} {where}", template)
        if where != "submitter":
            for c in template.get("spec", {}).get("containers", []):
                env = {e["name"]: e.get("value") for e in c.get("env") or []}
                if env.get("HF_HUB_OFFLINE") != "1":
                    problems.append(f"{kind} {where}: HF_HUB_OFFLINE=1 is not set")
                mounts = {m["mountPath"] for m in c.get("volumeMounts") or []}
                if "/checkpoints" not in mounts:
                    problems.append(f"{kind} {where}: checkpoint volume not mounted at /checkpoints")
    for group in spec.get("workerGroupSpecs", []):
        if not (group.get("minReplicas") == group.get("replicas") == group.get("maxReplicas")):
            problems.append(f"{kind} group {group.get('groupName')}: replicas must be fixed (min = max)")
    if kind == "RayJob":
        job = doc["spec"]
        if "--resume" not in str(job.get("entrypoint", "")).split():
            problems.append("RayJob: the entrypoint must pass --resume so retries continue the run")
        backoff = job.get("backoffLimit")
        if not isinstance(backoff, int) or backoff < 1:
            problems.append("RayJob: backoffLimit must allow at least one retry")
        if job.get("ttlSecondsAfterFinished") and not job.get("shutdownAfterJobFinishes"):
            problems.append("RayJob: ttlSecondsAfterFinished needs shutdownAfterJobFinishes")
        try:
            env = yaml.safe_load(job.get("runtimeEnvYAML") or "") or {}
        except yaml.YAMLError as exc:
            problems.append(f"RayJob: runtimeEnvYAML is not YAML: {exc}")
        else:
            bad = [k for k in (env.get("env_vars") or {}) if looks_secret(k)]
            if bad:
                problems.append(f"RayJob: runtimeEnvYAML carries secrets {bad}")
    return problems


def check_documents(docs: list[dict]) -> list[str]:
    problems = []
    for doc in docs:
        errors = schema_errors(doc)
        try:
            errors += semantic_problems(doc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if not errors:  # a schema-valid manifest must never trip the semantic checks
                raise
            errors.append(f"{doc.get('kind')}: semantic checks stopped on the invalid structure ({exc!r})")
        problems += errors
    return problems


def load_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def main(argv=None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m cluster.manifest_checks FILE.yaml ...", file=sys.stderr)
        return 2
    failed = 0
    for path in paths:
        problems = check_documents(load_documents(path))
        for p in problems:
            print(f"{path}: {p}")
        failed += bool(problems)
    print(f"{len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
