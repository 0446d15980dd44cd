"""The run store: ``<out>/<suite>/{manifest.yaml, runs/<run_id>/..., report/}`` (see run_store.md).

Every write is atomic (marl/run_io.py). The suite directory is locked (``flock`` on ``.lock``, which
the kernel releases when the holder dies, even by kill -9) so two invocations cannot write it at
once. A run directory that cannot be trusted (unreadable spec.json, a spec whose content does not
hash to its directory name, an unknown status) is reported as corrupt and never touched.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from marl.run_io import atomic_write_json, atomic_write_text
from suites.manifest import RunSpec, Suite, content_id, spec_content_from_json

SPEC, STATUS, METRICS, CHECKPOINT, PROVENANCE = (
    "spec.json",
    "status.json",
    "metrics.csv",
    "checkpoint.pt",
    "provenance.json",
)
STATES = ("pending", "running", "done", "failed")
LOCK_NAME = ".lock"


class StoreLockedError(RuntimeError):
    pass


class CorruptRunError(RuntimeError):
    pass


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class RunState:
    """What the store holds for one RunSpec. ``kind``: new | pending | interrupted | done | failed |
    corrupt. ``steps``: env steps of the latest evaluation on disk (the resume point is the last
    checkpoint, at or before it)."""

    kind: str
    steps: int = 0
    attempts: int = 0
    error: str | None = None
    detail: str = ""


def read_json_file(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def last_metrics_steps(path: Path) -> int:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return int(float(rows[-1]["env_steps"])) if rows else 0
    except (OSError, KeyError, ValueError, IndexError):
        return 0


def validate_run_dir(run_dir: Path) -> dict[str, Any]:
    """Check a run dir's spec.json (and status.json) and return the spec; raise CorruptRunError
    with the specific problem."""
    spec_path = run_dir / SPEC
    try:
        spec = read_json_file(spec_path)
    except FileNotFoundError:
        raise CorruptRunError(
            f"{spec_path} is missing but the directory holds {sorted(p.name for p in run_dir.iterdir())}"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptRunError(f"{spec_path} is unreadable ({exc})") from None
    if not isinstance(spec, dict):
        raise CorruptRunError(f"{spec_path} is not a JSON object")
    try:
        content = spec_content_from_json(spec)
    except KeyError as exc:
        raise CorruptRunError(f"{spec_path} lacks the field {exc.args[0]!r}") from None
    if spec.get("id") != run_dir.name:
        raise CorruptRunError(f"{spec_path} says id {spec.get('id')!r} but lives in run dir {run_dir.name!r}")
    if content_id(content) != run_dir.name:
        raise CorruptRunError(
            f"{spec_path} does not match its id {run_dir.name!r}: its content hashes to "
            f"{content_id(content)!r} (edited by hand?)"
        )
    status_path = run_dir / STATUS
    if status_path.exists():
        try:
            status = read_json_file(status_path)
        except (OSError, json.JSONDecodeError) as exc:
            raise CorruptRunError(f"{status_path} is unreadable ({exc})") from None
        if not isinstance(status, dict) or status.get("state") not in STATES:
            raise CorruptRunError(f"{status_path} has no valid state (one of {', '.join(STATES)})")
    return spec


class SuiteStore:
    def __init__(self, out: str | Path, suite_name: str):
        self.out = Path(out).resolve()
        self.root = self.out / suite_name
        self.runs = self.root / "runs"
        self._lock_fd: int | None = None

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def unusable(self, write: bool = True) -> str | None:
        """Why this store cannot be used, or None; creates nothing. A path on the way to the suite's
        runs that exists but is not a directory is always a problem; with ``write``, so is a
        directory that cannot be written (tried, not guessed from permission bits: root ignores them)."""
        chain = [self.runs, self.root, self.out, *self.out.parents]
        deepest = next(p for p in chain if os.path.lexists(p))
        if not deepest.is_dir():
            if deepest == self.out:
                return f"--out {self.out} exists and is not a directory; choose another --out (or move it away)"
            return (
                f"{deepest} exists and is not a directory, so the suite directory {self.root} cannot be "
                "created there; choose another --out (or move it away)"
            )
        if not write:
            return None
        # Every directory this run writes in: the suite's, or the nearest one that exists (it is created
        # there), and the runs directory when it exists.
        targets = [deepest if deepest != self.runs else self.root] + ([self.runs] if self.runs.is_dir() else [])
        for directory in targets:
            try:
                with tempfile.TemporaryFile(dir=directory):  # unnamed where the OS allows; removed at once
                    pass
            except OSError as exc:
                return (
                    f"cannot write in {directory} ({exc.strerror or exc}), so the run store under --out "
                    f"{self.out} cannot be created or updated; choose a writable --out"
                )
        return None

    # Lock -----------------------------------------------------------------------------------

    def acquire(self, command: str = "") -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = path.read_text().strip() or "unknown process"
            raise StoreLockedError(
                f"{self.root} is in use by another reproduce.py ({holder}); wait for it to finish, stop it, "
                f"or use another --out directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now()}: {command}".encode())
        # Children must not inherit the lock: it is this process's, released when it dies.
        os.set_inheritable(fd, False)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # Runs -----------------------------------------------------------------------------------

    def inspect(self, spec: RunSpec) -> RunState:
        """Read-only: what is on disk for this spec."""
        run_dir = self.run_dir(spec.id)
        if not run_dir.is_dir() or not any(p for p in run_dir.iterdir() if not p.name.startswith(".")):
            return RunState("new")
        try:
            validate_run_dir(run_dir)
        except CorruptRunError as exc:
            return RunState("corrupt", detail=str(exc))
        steps = last_metrics_steps(run_dir / METRICS)
        try:
            status = read_json_file(run_dir / STATUS)
        except FileNotFoundError:
            return RunState("pending", steps)
        state, attempts, error = status["state"], int(status.get("attempts", 0)), status.get("error")
        if state == "done":
            if not (run_dir / METRICS).is_file():
                return RunState("corrupt", detail=f"{run_dir / STATUS} says done but {METRICS} is missing")
            return RunState("done", steps, attempts)
        if state == "running":
            # Nobody holds the suite lock but us, so its worker died: resume from its checkpoint.
            return RunState("interrupted", steps, attempts)
        return RunState(state, steps, attempts, error)

    def write_manifest(self, suite: Suite) -> None:
        atomic_write_text(self.root / "manifest.yaml", suite.text)

    def prepare(self, spec: RunSpec) -> Path:
        """Create the run dir with spec.json (first, so a dir with files always has its spec) and a
        pending status. Existing dirs keep their status; their spec.json is refreshed only for the
        table placement (memberships), which is not part of the id."""
        run_dir = self.run_dir(spec.id)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / SPEC, spec.to_json())
        if not (run_dir / STATUS).exists():
            write_status(run_dir, state="pending", attempts=0)
        elif read_json_file(run_dir / STATUS).get("retryable") is not None:
            # A new attempt: an earlier attempt's "not retryable" verdict must not stick to it.
            write_status(run_dir, retryable=None)
        return run_dir

    def existing_run_ids(self) -> Iterator[str]:
        if self.runs.is_dir():
            for p in sorted(self.runs.iterdir()):
                if p.is_dir():
                    yield p.name


def write_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Update status.json atomically (merging with what is there)."""
    path = run_dir / STATUS
    try:
        status = read_json_file(path)
    except (FileNotFoundError, json.JSONDecodeError):
        status = {}
    base = {
        "state": "pending",
        "attempts": 0,
        "error": None,
        "started_at": None,
        "finished_at": None,
        "backend": None,
        "host": None,
    }
    status = {**base, **status, **fields}
    atomic_write_json(path, status)
    return status
