"""The backend contract: jobs, events, the Backend base class and the line-stream helpers every
backend shares (the package's __init__ only picks a backend by name)."""

from __future__ import annotations

import json
import queue
import threading
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from suites.manifest import RunSpec
from suites.protocol import EVENT_PREFIX

BACKENDS = ("local", "ray", "docker")


class BackendError(RuntimeError):
    """The backend cannot be used here; the message says why and what to do."""


@dataclass(frozen=True)
class Job:
    spec: RunSpec
    run_dir: Path
    threads: int
    device: str
    cpus: float
    gpus: float
    task: str = "train"  # "train" (suites/worker.py) | "crossplay" (suites/crossplay_phase.py) in that run dir
    request: dict[str, Any] | None = None  # the cross-play request

    def worker_args(self) -> list[str]:
        """The ``python -m suites.worker`` flags that select the task."""
        if self.task == "train":
            return []
        return ["--task", self.task, "--request", json.dumps(self.request or {})]


class Backend(ABC):
    name: str

    def check(self) -> None:
        """Raise BackendError when the backend cannot run here (cheap, writes nothing)."""

    def start(self) -> None:
        """Bring up what the backend needs."""

    @abstractmethod
    def slots(self) -> int:
        """How many jobs may run at once."""

    @abstractmethod
    def submit(self, job: Job, provenance: dict[str, Any]) -> None: ...

    @abstractmethod
    def poll(self, timeout: float) -> list[dict[str, Any]]:
        """Events since the last call, waiting up to ``timeout`` seconds for the first."""

    @abstractmethod
    def request_stop(self) -> None: ...

    @abstractmethod
    def kill(self) -> None: ...

    def close(self) -> None:
        """Release resources (after every job has ended or been killed)."""


class LineStreamJob:
    """Turns a worker's output lines (``python -m suites.worker``) into events: prefixed JSON lines
    are events, other lines are log output kept for error messages. ``finish(code)`` reports the
    ``end`` event if the worker died before sending its own: ``interrupted`` when the backend's own
    stop request ended it (a worker still starting up has no SIGTERM handler yet, so the signal ends
    the process; its run resumes like any stopped run), ``failed`` otherwise."""

    TAIL = 30

    def __init__(self, run_id: str, events: "queue.Queue[dict[str, Any]]"):
        self.run_id, self.events = run_id, events
        self.tail: deque[str] = deque(maxlen=self.TAIL)
        self.ended = False

    def consume(self, lines: Iterable[str]) -> None:

        for line in lines:
            line = line.rstrip("\n")
            if line.startswith(EVENT_PREFIX):
                try:
                    event = json.loads(line[len(EVENT_PREFIX) :])
                except json.JSONDecodeError:
                    self.tail.append(line)
                    continue
                if event.get("event") == "end":
                    self.ended = True
                self.events.put(event)
            elif line.strip():
                self.tail.append(line)
                self.events.put({"event": "log", "run": self.run_id, "line": line})

    def finish(self, description: str, stopped: bool = False) -> None:
        if not self.ended and stopped:
            self.ended = True
            self.events.put({"event": "end", "run": self.run_id, "state": "interrupted", "error": None})
        if not self.ended:
            self.ended = True
            tail = "\n".join(self.tail)
            self.events.put(
                {
                    "event": "end",
                    "run": self.run_id,
                    "state": "failed",
                    "error": f"worker {description}" + (f"; its last output:\n{tail}" if tail else ""),
                }
            )


def drain(events: "queue.Queue[dict[str, Any]]", timeout: float, running: dict[str, Any]) -> list[dict[str, Any]]:
    """Events queued by the watcher threads (waiting up to ``timeout`` for the first). A watcher's
    internal ``_reaped`` event removes its run from ``running`` and is not passed on."""
    out: list[dict[str, Any]] = []
    try:
        out.append(events.get(timeout=timeout))
        while True:
            out.append(events.get_nowait())
    except queue.Empty:
        pass
    for event in out:
        if event["event"] == "_reaped":
            running.pop(event["run"], None)
    return [e for e in out if e["event"] != "_reaped"]


def start_thread(target: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread
