"""The real thing, against a private Docker daemon: build docker/Dockerfile with docker/build.sh on a
locally made Debian bookworm base (StarCraft II stage and Melting Pot bundle off, CPU torch), run the
`smoke` suite through `reproduce.py --backend docker`, and check the run dirs and their provenance.

It takes several minutes (first run ~10 min on 2 cores: apt, 1.2 GB of wheels, the suite), so it is
not part of `make test`: run it with `make docker-smoke` (root, Debian/Ubuntu host: it apt-installs
docker.io and debootstrap when missing). The daemon's data (base image, layers) stays under
$DOCKER_SMOKE_ROOT (default /var/tmp/marl-repro-docker) so later runs reuse it; the daemon is stopped
by its pid file at the end.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker.daemon import BASE_TAG, PrivateDaemon, docker_cli, ensure_packages

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "marl-repro-suite:smoke"

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("DOCKER_SMOKE") != "1",
        reason="real-daemon image build, several minutes: run `make docker-smoke`",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="starting a private dockerd needs root"),
    pytest.mark.timeout(3600),
]


@pytest.fixture(scope="module")
def daemon():
    ensure_packages()
    d = PrivateDaemon(Path(os.environ.get("DOCKER_SMOKE_ROOT", "/var/tmp/marl-repro-docker")))
    d.start()
    try:
        d.ensure_debian_base()
        subprocess.run(
            [
                "bash",
                "docker/build.sh",
                "--tag",
                IMAGE,
                "--base",
                BASE_TAG,
                "--python-from",
                "apt",
                "--torch",
                "cpu",
                "--no-sc2",
                "--no-meltingpot-assets",
                "--",
                "--network=host",
            ],
            cwd=ROOT,
            env={**d.env, "DOCKER": docker_cli(), "DOCKER_BUILDKIT": "1"},
            check=True,
        )
        yield d
    finally:
        d.stop()


def test_image_records_its_versions(daemon):
    out = daemon.docker("run", "--rm", IMAGE, "cat", "/opt/marl-repro/image.json", capture=True).stdout
    info = json.loads(out)
    assert info["lock_sha256"] == hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()
    assert info["sc2_installed"] is False and info["sc2_build"] is None
    assert info["meltingpot"] == {
        "version": "2.4.1",
        "mode": "offline",
        "assets_version": "2.3.0",
        "assets_sha256": "null",
    }
    assert info["python"].startswith("3.11.") and info["torch_variant"] == "cpu"
    user = daemon.docker("run", "--rm", IMAGE, "id", "-u", capture=True).stdout.strip()
    assert user == "1000", "the image's default user is not root"
    helptext = daemon.docker("run", "--rm", IMAGE, capture=True).stdout
    assert "reproduce.py" in helptext, "the entry point is reproduce.py"
    # The fused GRU extension was built into the image and loads without a compiler (as uid 1000).
    ready = daemon.docker(
        "run", "--rm", "-e", "MARL_FAST_GRU=cpp", IMAGE, "python", "-m", "marl.value.fast_gru", capture=True
    ).stdout
    assert "C++ extension ready" in ready, ready


def test_smoke_suite_through_the_docker_backend(daemon, tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "reproduce.py",
            "--suite",
            "smoke",
            "--backend",
            "docker",
            "--image",
            IMAGE,
            "--out",
            str(out),
            "--workers",
            "2",
            "--no-report",
        ],
        cwd=ROOT,
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted((out / "smoke" / "runs").iterdir())
    assert len(runs) == 6  # qmix on two scenarios + vdn, ow_wqmix, cw_wqmix, ddn on stag_hunt_small
    lock_sha = hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()
    for run in runs:
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "done" and status["backend"] == "docker", status
        assert run.stat().st_uid == os.getuid(), "results belong to the calling user"
        prov = json.loads((run / "provenance.json").read_text())
        assert prov["backend"] == "docker"
        assert prov["image_digest"].startswith("sha256:")
        assert prov["image"]["lock_sha256"] == lock_sha and prov["image"]["meltingpot"]["mode"] == "offline"
        assert prov["python"].startswith("3.11.")
        rows = list(csv.DictReader(open(run / "metrics.csv")))
        assert rows and int(rows[-1]["env_steps"]) >= 600
    # Rerunning the same command finds every run done and starts no container.
    again = subprocess.run(
        [
            sys.executable,
            "reproduce.py",
            "--suite",
            "smoke",
            "--backend",
            "docker",
            "--image",
            IMAGE,
            "--out",
            str(out),
            "--dry-run",
        ],
        cwd=ROOT,
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and again.stdout.count("done") >= 6, again.stdout
