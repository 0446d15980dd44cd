"""What the orchestrator adds to every run's provenance.json: code version, package versions, host.
(The trainer adds the environment's backend and versions, e.g. the SC2 build, itself.)"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "jax", "jaxmarl", "dm-meltingpot", "ray")


def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit and dirty flag; from SUITE_GIT_COMMIT when the code is not a git checkout (images)."""
    if os.environ.get("SUITE_GIT_COMMIT"):
        return {"commit": os.environ["SUITE_GIT_COMMIT"], "dirty": os.environ.get("SUITE_GIT_DIRTY") == "1"}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            != ""
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def cpu_model() -> str | None:
    """The processor's model name (/proc/cpuinfo on Linux, else platform's guess): whether two runs
    can agree to the last digit depends on it (float reduction order of the BLAS kernels)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance_extra(backend: str) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "git": git_info(),
        "packages": package_versions(),
        "orchestrator_backend": backend,
        "orchestrator_host": socket.gethostname(),
    }
    extra.update(image_provenance())
    return extra


def image_provenance() -> dict[str, Any]:
    """Inside the project's image: its digest (SUITE_IMAGE_DIGEST, set by the docker backend) and its
    version record (SUITE_IMAGE_INFO, written by docker/Dockerfile: SC2 build, Melting Pot asset
    version and checksum, lock hash, torch variant, ...). Empty elsewhere."""
    out: dict[str, Any] = {}
    if os.environ.get("SUITE_IMAGE_DIGEST"):
        out["image_digest"] = os.environ["SUITE_IMAGE_DIGEST"]
    info = Path(os.environ.get("SUITE_IMAGE_INFO") or "/nonexistent")
    if info.is_file():
        out["image"] = json.loads(info.read_text())
    return out
