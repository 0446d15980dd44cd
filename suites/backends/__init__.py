"""Execution backends: where a run's worker (suites/worker.py) executes.

Every backend takes jobs (a run dir to execute) and reports events as dicts with ``event`` in
``start | progress | log | end`` and ``run`` (the run id). Exactly one ``end`` event
(``state``: done | failed | interrupted, ``error``) is reported per submitted job, whatever happens
to the worker. ``check()`` fails fast, before anything is written; ``start()`` brings up what the
backend needs (a Ray cluster); ``request_stop()`` asks workers to stop at their next safe point;
``kill()`` ends them at once.
"""

from __future__ import annotations

from typing import Any

from suites.backends.base import BACKENDS, Backend, BackendError


def make_backend(name: str, **kwargs: Any) -> Backend:
    if name == "local":
        from suites.backends.local_backend import LocalBackend

        return LocalBackend(**kwargs)
    if name == "ray":
        from suites.backends.ray_backend import RayBackend

        return RayBackend(**kwargs)
    if name == "docker":
        from suites.backends.docker_backend import DockerBackend

        return DockerBackend(**kwargs)
    raise BackendError(f"unknown backend {name!r}; valid choices: {', '.join(BACKENDS)}")
