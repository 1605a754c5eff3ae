"""Checks of docker/Dockerfile.* that need no Docker engine (hadolint covers the generic style).

    .venv/bin/python -m cluster.dockerfile_checks docker/Dockerfile.gpu docker/Dockerfile.cpu

What is checked, because a build could only find it out much later (or never):
- every COPY/ADD source exists in the repository and is not dropped by .dockerignore
  (the image builds from the repository's own files only: no URLs, no other build contexts);
- base images are pinned to a tag (not `latest`) or a digest;
- the final USER is a non-root user, given numerically (Kubernetes can only verify runAsNonRoot
  for a numeric user);
- no ENV/ARG carries a value under a secret-looking name;
- the image documents how it is run: a HEALTHCHECK, or a CMD/ENTRYPOINT with an `Entrypoint:`
  note in the header comment.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from cluster.ray_setup import PROJECT_ROOT, looks_secret


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and parser directives dropped."""
    out: list[Instruction] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1].rstrip() + " "
            continue
        buf += stripped
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        buf = ""
    return out


def header_comment(text: str) -> str:
    lines = []
    for raw in text.splitlines():
        if not raw.startswith("#"):
            break
        lines.append(raw.lstrip("# "))
    return "\n".join(lines)


def dockerignore_patterns(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.exists():
        return []
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def ignored(rel_path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a path is out if it or a parent matches (later `!` re-includes)."""
    parts = Path(rel_path).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        for cand in candidates:
            if fnmatch.fnmatch(cand, pat) or (pat.startswith("**/") and fnmatch.fnmatch(cand, pat[3:])) \
                    or (pat.startswith("**/") and fnmatch.fnmatch(Path(cand).name, pat[3:])):
                result = not negate
                break
    return result


def _copy_sources(ins: Instruction) -> list[str]:
    args = ins.args
    if args.startswith("["):
        words = json.loads(args)
    else:
        words = shlex.split(args)
    words = [w for w in words if not w.startswith("--")]  # --chown=..., --link
    return words[:-1]


def dockerfile_problems(path: Path, root: Path = PROJECT_ROOT) -> list[str]:
    text = Path(path).read_text()
    instructions = parse_dockerfile(text)
    patterns = dockerignore_patterns(root)
    problems: list[str] = []
    stages: set[str] = set()
    for ins in instructions:
        where = f"{Path(path).name}:{ins.line}"
        if ins.keyword == "FROM":
            words = ins.args.split()
            image = words[0]
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2].lower())
            if image.lower() in stages or "@sha256:" in image:
                continue
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if not tag or tag == "latest":
                problems.append(f"{where}: base image '{image}' is not pinned to a tag or digest")
        elif ins.keyword in ("COPY", "ADD"):
            if "--from" in ins.args:
                continue
            for src in _copy_sources(ins):
                if re.match(r"^[a-z]+://", src):
                    problems.append(f"{where}: {ins.keyword} from a URL ({src}); "
                                    "build from the repository only")
                    continue
                if not (root / src).exists():
                    problems.append(f"{where}: {ins.keyword} source '{src}' does not exist in the repository")
                elif ignored(src, patterns):
                    problems.append(f"{where}: {ins.keyword} source '{src}' is excluded by .dockerignore")
        elif ins.keyword in ("ENV", "ARG"):
            for name, value in _assignments(ins.args):
                if looks_secret(name) and value:
                    problems.append(f"{where}: {ins.keyword} {name} carries a secret value")
    users = [ins for ins in instructions if ins.keyword == "USER"]
    if not users:
        problems.append(f"{Path(path).name}: no USER: the image runs as root")
    else:
        user = users[-1].args.split(":")[0]
        if user in ("root", "0"):
            problems.append(f"{Path(path).name}: the final USER is root")
        elif not user.isdigit():
            problems.append(f"{Path(path).name}: USER '{user}' is not numeric "
                            "(runAsNonRoot cannot verify it)")
    keywords = {ins.keyword for ins in instructions}
    if "HEALTHCHECK" not in keywords:
        if not keywords & {"CMD", "ENTRYPOINT"}:
            problems.append(f"{Path(path).name}: neither HEALTHCHECK nor CMD/ENTRYPOINT")
        elif "Entrypoint:" not in header_comment(text):
            problems.append(f"{Path(path).name}: no HEALTHCHECK and the header comment does not document "
                            "the entrypoint ('Entrypoint: ...')")
    return problems


def _assignments(args: str) -> list[tuple[str, str]]:
    """NAME=value pairs of ENV/ARG (also the legacy `ENV NAME value` form)."""
    words = shlex.split(args, posix=True)
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    return [tuple(w.split("=", 1)) if "=" in w else (w, "") for w in words]


def main(argv=None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    failed = 0
    for path in paths:
        problems = dockerfile_problems(path)
        for p in problems:
            print(p)
        failed += bool(problems)
    print(f"{len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
