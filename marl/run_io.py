"""Atomic file writes for run directories: a kill at any instant leaves either the old or the new
file, never a torn one (write to a temp file in the same directory, fsync, rename)."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import torch


def _process_umask() -> int:
    mask = os.umask(0)  # the only portable read of the umask is to set it: restore it at once
    os.umask(mask)
    return mask


# Read once, at import (single-threaded then): the mode a plain open() would give a new file.
_NEW_FILE_MODE = 0o666 & ~_process_umask()


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """``write(f)`` into a temp file beside ``path``, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it what open() would (the old file's mode, or the
        # umask's), so reports and records stay readable to the other users of a shared machine.
        with os.fdopen(fd, "wb") as f:
            try:
                os.fchmod(f.fileno(), path.stat().st_mode & 0o777)
            except FileNotFoundError:
                os.fchmod(f.fileno(), _NEW_FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    # Streamed into the temp file: a checkpoint holding a full replay is not also built in memory
    # (an in-memory copy and its bytes doubled a run's peak memory at every checkpoint).
    _atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)
