"""KubeRay manifests: committed files = generator output, CRD schema validity (offline, strict),
and the semantic rules (16 GPUs, secrets by reference, non-root, resume, volumes)."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

from cluster import kuberay
from cluster.kuberay import DeploySettings, ManifestError, render_files, render_manifests
from cluster.manifest_checks import (
    check_documents,
    cluster_spec_of,
    gpus_per_group,
    load_documents,
    pod_templates,
    schema_dir,
    schema_errors,
    semantic_problems,
)
from cluster.roles import role_demands
from configs import load_config

MANIFEST_DIR = Path(kuberay.__file__).parent / "manifests"
PRESETS = ("paper_2b", "paper_4b")
COMMITTED = sorted(MANIFEST_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def schemas_present():
    if not (schema_dir() / "ray.io_rayjobs.yaml").exists():
        pytest.skip(f"KubeRay CRD schemas not found under {schema_dir()} (../shared/k8s_schemas)")


def _ray_docs():
    docs = []
    for path in COMMITTED:
        docs += [(path.name, d) for d in load_documents(path) if d["kind"] in ("RayCluster", "RayJob")]
    return docs


def test_committed_manifests_match_the_generator():
    expected = {}
    for preset in PRESETS:
        expected.update(render_files(preset, DeploySettings()))
    assert sorted(expected) == [p.name for p in COMMITTED]
    for path in COMMITTED:
        assert path.read_text() == expected[path.name], f"{path.name} is stale: rerun cluster.kuberay"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_every_committed_manifest_passes_schema_and_semantic_checks(path, schemas_present):
    docs = load_documents(path)
    assert docs
    assert check_documents(docs) == []


def test_gpu_counts_add_up_to_sixteen_per_role():
    for name, doc in _ray_docs():
        preset = name.split("-")[0]
        cfg = load_config(preset, list(kuberay.DEFAULT_MODEL_OVERRIDES))
        demands = role_demands(cfg)
        per_group = gpus_per_group(doc)
        assert per_group == {r: int(demands[r].total_gpus) for r in ("rollout", "reward", "learner")}
        assert sum(per_group.values()) == 16
        for group in cluster_spec_of(doc)["workerGroupSpecs"]:
            units = int(group["resources"][f"videoseg_{group['groupName']}"]) * group["replicas"]
            assert units == demands[group["groupName"]].count
            pod = group["template"]["spec"]
            assert int(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) <= 8


def test_secrets_are_referenced_never_inlined():
    for path in COMMITTED:
        text = path.read_text()
        assert "kind: Secret" not in text
    for _, doc in _ray_docs():
        ft = cluster_spec_of(doc)["gcsFaultToleranceOptions"]
        ref = {"name": "videoseg-redis", "key": "password"}
        assert ft["redisPassword"] == {"valueFrom": {"secretKeyRef": ref}}
        for where, template in pod_templates(doc):
            for c in template["spec"]["containers"]:
                for env in c.get("env", []):
                    if "PASSWORD" in env["name"]:
                        assert "value" not in env
                        assert env["valueFrom"]["secretKeyRef"]["name"] == "videoseg-redis"


def test_pods_are_non_root_with_guaranteed_resources():
    seen = set()
    for _, doc in _ray_docs():
        for where, template in pod_templates(doc):
            seen.add(where.split()[0])
            spec = template["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["runAsUser"] == 1000
            assert spec["automountServiceAccountToken"] is False
            for c in spec["containers"]:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
                assert c["resources"]["requests"] == c["resources"]["limits"]
    assert seen == {"head", "worker", "submitter"}


def test_job_resumes_and_writes_checkpoints_to_the_volume():
    for name, doc in _ray_docs():
        spec = cluster_spec_of(doc)
        for where, template in pod_templates(doc):
            if where == "submitter":
                continue
            claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
                      for v in template["spec"]["volumes"]}
            assert claims["checkpoints"] == "videoseg-checkpoints"
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        # the object store leaves a third of /dev/shm to weight folders and staged weight copies
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            template = group["template"]["spec"]
            shm = next(v for v in template["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"]
            store = int(group["rayStartParams"]["object-store-memory"])
            assert store == int(shm.removesuffix("Gi")) * 2 // 3 * 1024 ** 3
        if doc["kind"] != "RayJob":
            continue
        words = shlex.split(doc["spec"]["entrypoint"])
        assert words[:3] == ["python", "-m", "learner.main"] and "--resume" in words
        preset = words[words.index("--preset") + 1]
        overrides = [w for w in words[3:] if "=" in w]
        cfg = load_config(preset, overrides)  # the job's own config is valid
        assert str(cfg.run.output_dir).startswith("/checkpoints/")
        assert doc["spec"]["backoffLimit"] >= 1 and doc["spec"]["shutdownAfterJobFinishes"] is True
        assert yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]["HF_HUB_OFFLINE"] == "1"
    storage = yaml.safe_load((MANIFEST_DIR / "paper_2b-storage.yaml").read_text())
    assert storage["kind"] == "PersistentVolumeClaim" and storage["spec"]["accessModes"] == ["ReadWriteMany"]


def test_strict_schema_catches_typos_and_bad_types(schemas_present):
    doc = yaml.safe_load((MANIFEST_DIR / "paper_2b-rayjob.yaml").read_text())
    bad = copy.deepcopy(doc)
    spec = bad["spec"]["rayClusterSpec"]
    spec["gcsFaultTolerance"] = spec.pop("gcsFaultToleranceOptions")  # misspelt: would be pruned
    bad["spec"]["backoffLimit"] = "three"
    spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "lots"
    del spec["workerGroupSpecs"][1]["groupName"]
    errors = "\n".join(schema_errors(bad))
    assert "'gcsFaultTolerance' was unexpected" in errors
    assert "'three' is not of type 'integer'" in errors
    assert "'lots' does not match" in errors
    assert "'groupName' is a required property" in errors


def _container(job: dict, worker: int | None = None) -> dict:
    spec = job["spec"]["rayClusterSpec"]
    group = spec["headGroupSpec"] if worker is None else spec["workerGroupSpecs"][worker]
    return group["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["spec"]["rayClusterSpec"]["gcsFaultToleranceOptions"].update(
        redisPassword={"value": "hunter2"}),
     "redisPassword is inlined"),
    (lambda d: d["metadata"].setdefault("annotations", {}).update({"ray.io/ft-enabled": "true"}),
     "ray.io/ft-enabled"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["securityContext"].update(
        runAsNonRoot=False, runAsUser=0), "runAsNonRoot must be true"),
    (lambda d: d["spec"].update(entrypoint="python -m learner.main --preset paper_2b"), "--resume"),
    (lambda d: d["spec"].update(backoffLimit=0), "backoffLimit"),
    (lambda d: _container(d, worker=0).update(image="videoseg-o3-gpu:latest"), "not pinned"),
    (lambda d: _container(d, worker=2)["env"].append({"name": "HF_TOKEN", "value": "abc"}),
     "inlines a secret"),
    (lambda d: _container(d)["env"].append({"name": "RAY_REDIS_ADDRESS", "value": "redis:6379"}),
     "RAY_REDIS_ADDRESS"),
    (lambda d: d["metadata"].update(name="Paper_2b"), "DNS-1035"),
])
def test_semantic_checks_catch(mutate, expected):
    doc = yaml.safe_load((MANIFEST_DIR / "paper_2b-rayjob.yaml").read_text())
    assert semantic_problems(doc) == []
    mutate(doc)
    assert any(expected in p for p in semantic_problems(doc)), semantic_problems(doc)


def test_committed_secret_would_be_flagged():
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "videoseg-redis"},
              "stringData": {"password": "x"}}
    assert semantic_problems(secret)


def test_generator_refuses_configs_it_cannot_deploy():
    with pytest.raises(ManifestError):
        render_manifests("debug_cpu", DeploySettings(overrides=[]))  # CPU roles: not a GPU deployment
    outside = DeploySettings(overrides=list(kuberay.DEFAULT_MODEL_OVERRIDES) + ["run.output_dir=/tmp/run"])
    with pytest.raises(ManifestError, match="checkpoint volume"):
        render_manifests("paper_2b", outside)
    with pytest.raises(ManifestError, match=r"model.policy=/opt/policy is not under /models"):
        render_manifests("paper_2b", DeploySettings(overrides=["model.policy=/opt/policy",
                                                               "model.sam2_checkpoint=/models/s.pt"]))
    uneven = DeploySettings(overrides=list(kuberay.DEFAULT_MODEL_OVERRIDES) + ["learner.num_ranks=9"])
    with pytest.raises(ManifestError, match="do not split evenly"):
        render_manifests("paper_2b", uneven)
    with pytest.raises(ManifestError, match="credentials"):
        render_manifests("paper_2b", DeploySettings(redis_address="user:pw@redis:6379"))
    with pytest.raises(ManifestError, match="longer than 47"):
        render_manifests("paper_2b", DeploySettings(name="x" * 48))


def test_settings_flow_into_the_manifests():
    settings = DeploySettings(image="registry.local/videoseg-o3-gpu:1.2.3", redis_address="redis.infra:6380",
                              namespace="ml", gpus_per_node=4, storage_class="nfs")
    docs = render_manifests("paper_2b", settings)
    job = docs["paper_2b-rayjob.yaml"]
    assert job["metadata"]["namespace"] == "ml"
    assert cluster_spec_of(job)["gcsFaultToleranceOptions"]["redisAddress"] == "redis.infra:6380"
    groups = {g["groupName"]: g for g in cluster_spec_of(job)["workerGroupSpecs"]}
    assert groups["learner"]["replicas"] == 2  # 8 GPUs in pods of at most 4
    assert groups["learner"]["resources"] == {"videoseg_learner": "4"}
    assert sum(gpus_per_group(job).values()) == 16
    assert {c["image"] for _, t in pod_templates(job) for c in t["spec"]["containers"]} == {settings.image}
    assert docs["paper_2b-storage.yaml"]["spec"]["storageClassName"] == "nfs"


def test_cli_writes_the_files(tmp_path, capsys):
    assert kuberay.main(["--preset", "paper_2b", "--out", str(tmp_path), "--image", "r/v:9"]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["paper_2b-raycluster.yaml", "paper_2b-rayjob.yaml", "paper_2b-storage.yaml"]
    assert "image: r/v:9" in (tmp_path / "paper_2b-raycluster.yaml").read_text()
    assert kuberay.main(["--preset", "debug_cpu", "--out", str(tmp_path / "x")]) == 2
