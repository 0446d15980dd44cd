"""``ray``: each run is a Ray task with the manifest's CPU/GPU request.

By default a local Ray cluster is started (``ray.init`` with this machine's CPUs, or ``--workers``);
``--address`` connects to an existing cluster. The code reaches the workers through the runtime
environment's ``working_dir`` (this checkout, without .venv, results and caches), so the nodes only
need the same Python packages (the project's Docker image carries them). Workers write into the
same run dirs, so on a multi-node cluster ``--out`` must be on a filesystem every node mounts; a
worker that cannot see its run dir fails with a message saying so.

Progress and stop requests go through a small hub actor: workers push events to it and poll its
stop flag at their safe points.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from suites.backends.base import Backend, BackendError, Job
from suites.provenance import REPO_ROOT
from suites.protocol import EventSink
from suites.worker import execute

# Not shipped to the workers: the virtualenv, results, caches, VCS data.
# (Ray itself already leaves out .git and .venv.)
WORKING_DIR_EXCLUDES = ["results", "runs", "out", ".benchmarks", ".pytest_cache", "**/__pycache__", "*.pt", "*.pyc"]
# ray.init keeps retrying an address where nothing listens (GCS warnings for minutes), so check()
# first tries a plain TCP connection to it, this long at most.
PROBE_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001  # ray://host without a port


class _Hub:
    """Actor: event mailbox + stop flag shared by the driver and the workers."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.stop = False

    def put(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def drain(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    def request_stop(self) -> None:
        self.stop = True

    def should_stop(self) -> bool:
        return self.stop


class HubSink(EventSink):
    POLL_S = 1.0

    def __init__(self, hub: Any):
        self.hub, self.stop, self.last_poll = hub, False, 0.0

    def emit(self, event: dict[str, Any]) -> None:
        self.hub.put.remote(event)

    def should_stop(self) -> bool:
        import ray

        if not self.stop and time.monotonic() - self.last_poll >= self.POLL_S:
            self.last_poll = time.monotonic()
            self.stop = bool(ray.get(self.hub.should_stop.remote()))
        return self.stop


def run_task(
    run_dir: str,
    hub: Any,
    provenance: dict[str, Any],
    threads: int,
    device: str,
    task: str = "train",
    request: dict[str, Any] | None = None,
) -> tuple[str, str | None]:
    """The body of a run's Ray task (imported on the worker from the shipped working_dir)."""
    import os

    if os.environ.get("SUITE_IMAGE_DIGEST"):
        provenance = {**provenance, "image_digest": os.environ["SUITE_IMAGE_DIGEST"]}
    return execute(run_dir, HubSink(hub), "ray", provenance, threads, device, task, request)


def probe_address(address: str, origin: str = "--address", timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise BackendError unless something accepts TCP connections at a Ray address
    (``host:port`` of the GCS, or ``ray://host[:port]`` of a Ray client server)."""
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port_text = hostport.rpartition(":")
    if not sep:
        host, port_text = hostport, str(RAY_CLIENT_PORT) if address.startswith("ray://") else ""
    host = host.strip("[]")  # [::1]:6379
    if not host or not port_text.isdigit():
        raise BackendError(
            f"{origin} {address!r} is not a Ray address; use HOST:PORT of the head node (e.g. "
            "127.0.0.1:6379), ray://HOST:10001, or auto"
        )
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise BackendError(
            f"no Ray cluster at {address} ({origin}): connecting to {host}:{port_text} failed ({why}). "
            "Start one there (ray start --head), fix the address, or leave out --address to start a "
            "local cluster"
        ) from None


class RayBackend(Backend):
    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, **_: Any):
        self.workers, self.address = workers, address
        self.refs: dict[Any, str] = {}  # ObjectRef -> run id
        self.hub: Any = None
        self.started_cluster = False

    def check(self) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise BackendError(f"the ray backend needs the 'ray' package ({exc}); use --backend local") from None
        # ray.init(address=None) connects to $RAY_ADDRESS when it is set: probe that one too.
        address, origin = (
            (self.address, "--address") if self.address else (os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS")
        )
        if address and address not in ("auto", "local"):  # "auto" is found by Ray itself, from its own files
            probe_address(address, origin)

    def start(self) -> None:
        import ray

        runtime_env = {"working_dir": str(REPO_ROOT), "excludes": WORKING_DIR_EXCLUDES}
        kwargs: dict[str, Any] = {
            "runtime_env": runtime_env,
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if self.address:
            kwargs["address"] = self.address
        else:
            kwargs["num_cpus"] = self.workers or None
        if ray.is_initialized():
            raise BackendError("Ray is already initialised in this process; the ray backend starts its own connection")
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray cluster"
            raise BackendError(f"could not start or reach {where}: {exc}") from None
        self.started_cluster = True
        self.hub = ray.remote(num_cpus=0)(_Hub).remote()
        self._task = ray.remote(run_task)

    def slots(self) -> int:
        return 1_000_000  # Ray queues tasks by their resource requests

    def submit(self, job: Job, provenance: dict[str, Any]) -> None:
        task = self._task.options(
            num_cpus=job.cpus,
            num_gpus=job.gpus,
            max_retries=0,
            name=f"{'run' if job.task == 'train' else job.task}-{job.spec.id}",
        )
        ref = task.remote(str(job.run_dir), self.hub, provenance, job.threads, job.device, job.task, job.request)
        self.refs[ref] = job.spec.id

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        import ray

        if not self.refs:
            time.sleep(timeout)
            return self._drain()
        ready, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        events = self._drain()  # after the wait, so a finished run's last progress comes before its end
        for ref in ready:
            run_id = self.refs.pop(ref)
            try:
                state, error = ray.get(ref)
            except Exception as exc:  # a raising task or a lost worker: the run failed
                state, error = "failed", f"Ray task failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"
            events.append({"event": "end", "run": run_id, "state": state, "error": error})
        return events

    def _drain(self) -> list[dict[str, Any]]:
        import ray

        # The task's return value is the authoritative end of a run; the worker's own end event is dropped.
        return [e for e in ray.get(self.hub.drain.remote()) if e.get("event") != "end"]

    def request_stop(self) -> None:
        if self.hub is not None:
            self.hub.request_stop.remote()

    def kill(self) -> None:
        import ray

        for ref in list(self.refs):
            ray.cancel(ref, force=True)
        self.refs.clear()

    def close(self) -> None:
        import ray

        self.kill()
        if self.started_cluster:
            ray.shutdown()
            self.started_cluster = False
