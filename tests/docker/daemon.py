"""A private Docker daemon and a locally made Debian bookworm base image, for the smoke test.

No registry is reachable from the project's machines (see docker/README in the main README's
"Docker" section), so the base is made with debootstrap and `docker import`. The daemon keeps its
data under ``root`` between runs (layers and the base are reused) and is stopped by its pid file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

BASE_TAG = "local/debian:bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
APT_PACKAGES = ("docker.io", "debootstrap")


def docker_cli() -> str:
    # Debian's 20.10 CLI builds through the daemon's own BuildKit; the preinstalled 28.x CLI has no
    # buildx. Either works with docker/Dockerfile (no BuildKit-only syntax); prefer Debian's.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def ensure_packages() -> None:
    """docker.io and debootstrap from apt when missing (needs root, ~15 s)."""
    if shutil.which("dockerd") and shutil.which("debootstrap"):
        return
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES], check=True, stdout=subprocess.DEVNULL
    )


class PrivateDaemon:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.pidfile = self.root / "dockerd.pid"
        self.host = f"unix://{self.root / 'docker.sock'}"
        self.env = {**os.environ, "DOCKER_HOST": self.host}

    def start(self, timeout: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.running():
            return
        log = open(self.root / "dockerd.log", "ab")
        subprocess.Popen(
            [
                "dockerd",
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.pidfile),
                "-H",
                self.host,
                "--storage-driver=overlay2",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.docker("info", check=False, capture=True).returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"dockerd did not come up in {timeout:.0f} s; see {self.root / 'dockerd.log'}")

    def running(self) -> bool:
        return self.pidfile.exists() and self.docker("info", check=False, capture=True).returncode == 0

    def stop(self, timeout: float = 30.0) -> None:
        if not self.pidfile.exists():
            return
        pid = int(self.pidfile.read_text().strip())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)

    def docker(
        self, *args: str, check: bool = True, capture: bool = False, timeout: float | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [docker_cli(), *args], env=self.env, check=check, text=True, timeout=timeout, capture_output=capture
        )

    def has_image(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False, capture=True).returncode == 0

    def ensure_debian_base(self) -> None:
        """local/debian:bookworm from debootstrap (~35 s once; kept in the daemon's data root)."""
        if self.has_image(BASE_TAG):
            return
        rootfs = self.root / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            [docker_cli(), "import", "-", BASE_TAG],
            stdin=tar.stdout,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)
