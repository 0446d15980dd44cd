"""Execute one run in its run dir (or its cross-play evaluation, ``--task crossplay``); the same
code whichever backend (local subprocess, Ray task, Docker container) calls it.

The worker reads spec.json, marks status.json running, trains through the algorithm kind's trainer
(resuming from checkpoint.pt when there is one) and marks the run done or failed. Progress goes to
an :class:`EventSink`. A stop request (SIGTERM to ``python -m suites.worker``, the Ray hub's stop
flag, the parent process dying) raises from the trainer's progress callback, so the run stops at the
next safe point with its last checkpoint intact and status back to pending.

A failure is recorded in status.json with ``retryable``: false for errors that fail the same way on
every try (a bad learner config or environment option, a missing backend: :data:`DETERMINISTIC`),
which the orchestrator then reports at once instead of retrying.

``python -m suites.worker RUN_DIR`` prints its events as JSON lines prefixed with ``EVENT_PREFIX``
on stdout (anything else printed there is ordinary log output); its exit code is 0 done,
1 failed, 3 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

from envs.base import BackendUnavailableError, EnvError
from marl.config import ConfigError
from suites.protocol import (
    EVENT_PREFIX,
    EXIT_DONE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EventSink,
    StopRequested,
    lock_run_dir,
)
from suites.provenance import cpu_model, image_provenance
from suites.crossplay_worker import execute_crossplay
from suites.store import SPEC, STATUS, read_json_file, write_status, now

SUMMARY_KEYS = ("test_win_rate", "test_return_mean", "train_return_mean", "epsilon")
# Errors a second attempt cannot fix (the same spec, the same machine): not retried.
DETERMINISTIC: tuple[type[BaseException], ...] = (ConfigError, EnvError, BackendUnavailableError)


def is_retryable(exc: BaseException) -> bool:
    return not isinstance(exc, DETERMINISTIC)


class _Throttle:
    """Progress events at most every ``interval`` seconds (evaluation rows always go out)."""

    def __init__(self, interval: float = 1.0):
        self.interval, self.last = interval, 0.0

    def due(self, force: bool) -> bool:
        t = time.monotonic()
        if force or t - self.last >= self.interval:
            self.last = t
            return True
        return False


TASKS = ("train", "crossplay")


def execute(
    run_dir: str | Path,
    sink: EventSink,
    backend: str,
    provenance_extra: Mapping[str, Any] | None = None,
    threads: int = 1,
    device: str = "cpu",
    task: str = "train",
    request: Mapping[str, Any] | None = None,
) -> tuple[str, str | None]:
    """Run the spec in ``run_dir`` to its budget (task "train"), or evaluate its finished policy in
    cross-play (task "crossplay", suites/crossplay_phase.py, with the driver's ``request``). Returns
    (state, error): state is "done", "failed" or "interrupted" (a training's status.json is then
    "pending", ready to resume)."""
    run_dir = Path(run_dir)
    if task not in TASKS:
        raise ValueError(f"unknown worker task {task!r}; valid choices: {', '.join(TASKS)}")
    if not (run_dir / SPEC).is_file():
        raise FileNotFoundError(
            f"{run_dir / SPEC} not found on host {socket.gethostname()}: the output directory "
            "must be visible to the workers (a shared filesystem for a multi-node Ray cluster)"
        )
    if task == "crossplay":
        return execute_crossplay(run_dir, sink, dict(request or {}), threads, device)
    lock_fd = lock_run_dir(run_dir)
    try:
        spec = read_json_file(run_dir / SPEC)
        run_id = spec["id"]
        if sink.should_stop():
            return "interrupted", None
        previous = read_json_file(run_dir / STATUS) if (run_dir / STATUS).exists() else {}
        attempts = int(previous.get("attempts", 0))
        write_status(
            run_dir,
            state="running",
            attempts=attempts + 1,
            error=None,
            retryable=None,
            started_at=now(),
            finished_at=None,
            backend=backend,
            host=socket.gethostname(),
        )
        sink.emit({"event": "start", "run": run_id, "attempt": attempts + 1, "pid": os.getpid()})
        throttle = _Throttle()

        def progress(t_env: int, total: int, row: Mapping[str, Any] | None) -> None:
            if throttle.due(row is not None):
                summary = {k: row[k] for k in SUMMARY_KEYS if row is not None and k in row}
                sink.emit({"event": "progress", "run": run_id, "t": int(t_env), "total": int(total), "row": summary})
            if sink.should_stop():
                raise StopRequested

        try:
            _train(
                spec,
                run_dir,
                progress,
                threads,
                device,
                {**(provenance_extra or {}), "backend": backend, "host": socket.gethostname(), "cpu": cpu_model()},
            )
        except StopRequested:
            write_status(run_dir, state="pending", attempts=attempts, finished_at=None)
            sink.emit({"event": "end", "run": run_id, "state": "interrupted", "error": None})
            return "interrupted", None
        except BaseException as exc:  # recorded, then reported; the orchestrator decides on retries
            error = f"{type(exc).__name__}: {exc}"
            tb = traceback.format_exc(limit=-4)
            retryable = is_retryable(exc)
            write_status(run_dir, state="failed", error=error, traceback=tb, retryable=retryable, finished_at=now())
            sink.emit({"event": "end", "run": run_id, "state": "failed", "error": error, "retryable": retryable})
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return "failed", error
        write_status(run_dir, state="done", error=None, traceback=None, finished_at=now())
        sink.emit({"event": "end", "run": run_id, "state": "done", "error": None})
        return "done", None
    finally:
        os.close(lock_fd)


def _train(
    spec: Mapping[str, Any],
    run_dir: Path,
    progress: Callable,
    threads: int,
    device: str,
    provenance_extra: dict[str, Any],
) -> None:
    import torch

    from marl.trainer import Budget, train_run  # its kind's trainer (marl/trainer.py TRAINERS)

    torch.set_num_threads(max(1, threads))
    # The run id travels into provenance.json and into policy.pt's info (held-out members name their run).
    train_run(
        spec["algorithm"],
        spec["family"],
        spec["scenario"],
        int(spec["seed"]),
        Budget(**spec["budget"]),
        overrides=spec["overrides"],
        env_options=spec["env_options"],
        run_dir=run_dir,
        device=device,
        progress=progress,
        provenance_extra={**provenance_extra, "run_id": spec["id"]},
        snapshots=tuple(spec.get("snapshots") or ()),
    )


# Command line (local subprocesses and Docker containers) ---------------------------------------


class StdoutSink(EventSink):
    """Events as prefixed JSON lines on stdout; stop on SIGTERM or when the parent process is gone."""

    def __init__(self, parent_pid: int | None, immediate: bool = False):
        self.parent_pid = parent_pid
        self.stop = False
        # A cross-play evaluation has no state worth a safe point (its result is written at the end,
        # atomically), so it stops at once rather than after a long evaluation.
        self.immediate = immediate
        signal.signal(signal.SIGTERM, self._on_term)
        # The driver forwards Ctrl-C as SIGTERM; a stray SIGINT must not kill the run mid-write.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stop = True
        if self.immediate:
            raise StopRequested

    def emit(self, event: dict[str, Any]) -> None:
        sys.stdout.write(EVENT_PREFIX + json.dumps(event) + "\n")
        sys.stdout.flush()

    def should_stop(self) -> bool:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.stop = True  # the driver died (kill -9): stop cleanly rather than run unsupervised
        return self.stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Execute one run of a suite in its run dir (used by reproduce.py's backends)."
    )
    parser.add_argument("run_dir")
    parser.add_argument("--backend", default="local")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--provenance", default="{}", help="JSON merged into provenance.json")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process is no longer the parent")
    parser.add_argument(
        "--task", default="train", choices=TASKS, help="train the run (default) or evaluate its policy in cross-play"
    )
    parser.add_argument("--request", default="{}", help="crossplay: the driver's request (JSON)")
    args = parser.parse_args(argv)
    extra = json.loads(args.provenance)
    extra.update(image_provenance())  # the image's digest and version record, inside a container
    sink = StdoutSink(args.parent_pid, immediate=args.task == "crossplay")
    state, _ = execute(
        args.run_dir, sink, args.backend, extra, args.threads, args.device, args.task, json.loads(args.request)
    )
    return {"done": EXIT_DONE, "failed": EXIT_FAILED, "interrupted": EXIT_INTERRUPTED}[state]


if __name__ == "__main__":
    sys.exit(main())
