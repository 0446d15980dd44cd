"""``docker``: each run in its own container of the suite's image, through the Docker SDK.

The suite directory is mounted at ``/results`` and the container runs
``python -m suites.worker /results/runs/<id>`` from the image's working directory (the image carries
the code, StarCraft II and the Melting Pot assets; building it is docker/'s job). Containers run as
the calling user so results stay owned by them, get the image's digest as ``SUITE_IMAGE_DIGEST``
(provenance) and the manifest's CPU/GPU requests. Stop requests are SIGTERM to the container
(the worker stops at its next safe point); a kill is SIGKILL.
"""

from __future__ import annotations

import json
import os
import queue
from pathlib import Path
from typing import Any

from suites.backends.base import Backend, BackendError, Job, LineStreamJob, drain, start_thread

MOUNT = "/results"
LABEL = "marl-repro-suite.run"


class DockerBackend(Backend):
    name = "docker"

    def __init__(
        self,
        workers: int | None = None,
        image: str | None = None,
        suite_root: Path | None = None,
        python: str = "python",
        **_: Any,
    ):
        if not image:
            raise BackendError("the docker backend needs an image (the manifest's 'image' or --image)")
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.image_name, self.suite_root, self.python = image, suite_root, python
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.containers: dict[str, Any] = {}
        self.client: Any = None
        self.digest = ""

    def check(self) -> None:
        try:
            import docker
            from docker.errors import DockerException, ImageNotFound
        except ImportError as exc:
            raise BackendError(f"the docker backend needs the 'docker' package (Docker SDK): {exc}") from None
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        try:
            self.client = docker.from_env(timeout=30)
            self.client.ping()
        except DockerException as exc:
            raise BackendError(
                f"cannot reach a Docker daemon at {host} ({exc}). Start Docker (or point DOCKER_HOST "
                f"at a running daemon), or use --backend local"
            ) from None
        try:
            image = self.client.images.get(self.image_name)
        except ImageNotFound:
            raise BackendError(
                f"Docker image {self.image_name!r} is not on the daemon at {host}; build it first "
                f"(see docker/), or choose another with --image"
            ) from None
        except DockerException as exc:
            raise BackendError(f"could not inspect Docker image {self.image_name!r}: {exc}") from None
        digests = image.attrs.get("RepoDigests") or []
        self.digest = digests[0] if digests else image.id

    def slots(self) -> int:
        return self.workers

    def container_args(self, job: Job, provenance: dict[str, Any]) -> dict[str, Any]:
        """Arguments of ``containers.run`` for a job (separate so they can be checked without a daemon)."""
        if self.suite_root is None:
            raise BackendError("docker backend: the suite's output directory is not set")
        run_dir = Path(job.run_dir).resolve()
        inside = f"{MOUNT}/{run_dir.relative_to(Path(self.suite_root).resolve()).as_posix()}"
        command = [
            self.python,
            "-m",
            "suites.worker",
            inside,
            "--backend",
            self.name,
            "--threads",
            str(job.threads),
            "--device",
            job.device,
            "--provenance",
            json.dumps(provenance),
            *job.worker_args(),
        ]
        args: dict[str, Any] = {
            "image": self.image_name,
            "command": command,
            "detach": True,
            "volumes": {str(Path(self.suite_root).resolve()): {"bind": MOUNT, "mode": "rw"}},
            "environment": {"SUITE_IMAGE_DIGEST": self.digest, "PYTHONUNBUFFERED": "1", "HOME": "/tmp"},
            "user": f"{os.getuid()}:{os.getgid()}",
            "labels": {LABEL: job.spec.id},
            "nano_cpus": int(job.cpus * 1e9),
            "init": True,  # reap game processes and forward SIGTERM to the worker
        }
        if job.gpus > 0:
            import docker

            args["device_requests"] = [docker.types.DeviceRequest(count=max(1, int(job.gpus)), capabilities=[["gpu"]])]
        return args

    def submit(self, job: Job, provenance: dict[str, Any]) -> None:
        from docker.errors import DockerException

        try:
            container = self.client.containers.run(**self.container_args(job, provenance))
        except DockerException as exc:
            self.events.put(
                {
                    "event": "end",
                    "run": job.spec.id,
                    "state": "failed",
                    "error": f"could not start a container of {self.image_name!r}: {exc}",
                }
            )
            return
        self.containers[job.spec.id] = container
        start_thread(self._watch, job.spec.id, container)

    def _watch(self, run_id: str, container: Any) -> None:
        stream = LineStreamJob(run_id, self.events)
        try:
            stream.consume(_lines(container.logs(stream=True, follow=True)))
            code = container.wait().get("StatusCode", -1)
            stream.finish(f"container exited with code {code}")
        except Exception as exc:  # the daemon went away mid-run
            stream.finish(f"container lost: {exc}")
        finally:
            try:
                container.remove(force=True)
            except Exception:
                pass
            self.events.put({"event": "_reaped", "run": run_id})

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        return drain(self.events, timeout, self.containers)

    def request_stop(self) -> None:
        for container in list(self.containers.values()):
            try:
                container.kill(signal="SIGTERM")
            except Exception:
                pass

    def kill(self) -> None:
        for container in list(self.containers.values()):
            try:
                container.kill()
            except Exception:
                pass

    def close(self) -> None:
        self.kill()


def _lines(chunks: Any):
    """Docker streams bytes in arbitrary chunks; yield whole lines."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode(errors="replace")
    if buffer:
        yield buffer.decode(errors="replace")
