"""What the driver, the backends and the workers share, in one small module everything imports
(and that imports nothing of theirs): the event line format, the worker's exit codes, the stop
request and the per-run-dir lock."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

EVENT_PREFIX = "@@suite-event "
EXIT_DONE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 3
RUN_LOCK = ".run.lock"
RUN_LOCK_WAIT_S = 120.0  # an orphaned worker of a killed driver stops at its next safe point


class StopRequested(Exception):
    """Raised from the trainer's progress callback to stop at a safe point."""


class EventSink:
    """Where a worker reports to. Subclasses send events somewhere and say when to stop."""

    def emit(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def should_stop(self) -> bool:
        return False


def lock_run_dir(run_dir: Path) -> int:
    """An exclusive lock on the run dir for the worker's lifetime (released by the kernel on death)."""
    fd = os.open(run_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + RUN_LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError(
                    f"{run_dir} is still being written by another worker after "
                    f"{RUN_LOCK_WAIT_S:.0f} s (a worker left behind by a killed reproduce.py?)"
                ) from None
            time.sleep(0.5)
