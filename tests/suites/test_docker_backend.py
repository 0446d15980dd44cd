"""The docker backend: argument and error handling without a daemon, and a real daemon when one is
reachable (skipped otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import reproduce
from suites.backends.base import BackendError, Job
from suites.backends.docker_backend import MOUNT, DockerBackend
from suites.manifest import load_suite


def _daemon_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:
        return False


def test_no_daemon_is_a_clear_error_and_nothing_is_written(tmp_path, tiny_manifest, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    out = tmp_path / "out"
    assert reproduce.main(["--suite", str(tiny_manifest), "--out", str(out), "--backend", "docker"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach a Docker daemon at unix://{tmp_path}/no-daemon.sock" in err
    assert "or use --backend local" in err
    assert not out.exists()


def test_container_arguments(tmp_path, tiny_manifest):
    suite = load_suite(str(tiny_manifest))
    spec = suite.runs[0]
    root = tmp_path / "out" / "tiny"
    backend = DockerBackend(image="marl-repro-suite:test", suite_root=root)
    backend.digest = "sha256:abc"
    job = Job(spec, root / "runs" / spec.id, threads=2, device="cpu", cpus=1.5, gpus=0.0)
    args = backend.container_args(job, {"git": {"commit": "c0ffee"}})
    assert args["image"] == "marl-repro-suite:test"
    assert args["volumes"] == {str(root.resolve()): {"bind": MOUNT, "mode": "rw"}}
    cmd = args["command"]
    assert cmd[:4] == ["python", "-m", "suites.worker", f"{MOUNT}/runs/{spec.id}"]
    assert cmd[cmd.index("--threads") + 1] == "2" and cmd[cmd.index("--backend") + 1] == "docker"
    assert json.loads(cmd[cmd.index("--provenance") + 1]) == {"git": {"commit": "c0ffee"}}
    assert args["environment"]["SUITE_IMAGE_DIGEST"] == "sha256:abc"
    assert args["nano_cpus"] == 1_500_000_000 and "device_requests" not in args
    gpu_args = backend.container_args(Job(spec, job.run_dir, 1, "cuda", 1.0, 1.0), {})
    assert gpu_args["device_requests"][0].count == 1
    with pytest.raises(ValueError):  # a run dir outside the mounted suite dir cannot be reached
        backend.container_args(Job(spec, tmp_path / "elsewhere", 1, "cpu", 1.0, 0.0), {})


def test_backend_needs_an_image():
    with pytest.raises(BackendError, match="needs an image"):
        DockerBackend(image="", suite_root=Path("/tmp"))


@pytest.mark.skipif(not _daemon_reachable(), reason="no Docker daemon reachable (see the README, Docker)")
def test_missing_image_on_a_real_daemon(tmp_path, tiny_manifest, capsys):
    out = tmp_path / "out"
    code = reproduce.main(
        [
            "--suite",
            str(tiny_manifest),
            "--out",
            str(out),
            "--backend",
            "docker",
            "--image",
            "marl-repro-suite:does-not-exist",
        ]
    )
    assert code == 2
    assert "Docker image 'marl-repro-suite:does-not-exist' is not on the daemon" in capsys.readouterr().err
    assert not out.exists()
