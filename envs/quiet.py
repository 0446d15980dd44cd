"""Quiet third-party imports: keep the terminal for the suite's own messages.

Importing jaxmarl prints "Importing submoduled environments..." on stdout, and TensorFlow (under
Melting Pot) writes absl's native log lines ("All log messages before absl::InitializeLog() ...",
"Could not find cuda drivers ...") straight to file descriptor 2, where no Python setting reaches
them. :func:`quiet_import` captures both file descriptors (and Python's streams) while a library
imports, then passes on every line that is not known noise, so real warnings still appear.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from typing import Iterator

NOISE = tuple(
    re.compile(p)
    for p in (
        # jaxmarl/environments/__init__.py
        r"Importing submoduled environments\.\.\.",
        r"Submoduled environments (not found\. Skipping import|imported successfully)\.",
        # absl (TensorFlow) before its logging is initialised, and its INFO lines:
        # I<mmdd> <time> <thread> <file>:<line>] ..., e.g. oneDNN and "Could not find cuda drivers" (before
        # absl is initialised the time reads 00:00:<epoch seconds>)
        r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
        r"I\d{4} [\d:.]+\s+\d+ \S+:\d+\] .*",
    )
)


def is_noise(line: str) -> bool:
    return any(p.fullmatch(line.rstrip("\r\n")) for p in NOISE)


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Capture stdout/stderr (file descriptors 1 and 2 and sys.stdout/sys.stderr) for the block,
    then write what was captured, minus :data:`NOISE`, to the streams in place before it. The
    streams in place are restored even if the library rebinds them (jaxmarl's Brax wrapper resets
    them to sys.__stdout__/__stderr__, which would discard pytest's or a logger's redirection)."""
    streams = sys.stdout, sys.stderr
    for stream in (*streams, sys.__stdout__, sys.__stderr__):
        _flush(stream)
    try:
        saved = os.dup(1), os.dup(2)
    except OSError:  # no usable descriptors (a detached process): nothing to quiet
        yield
        return
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = io.TextIOWrapper(io.FileIO(out.fileno(), "w", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(err.fileno(), "w", closefd=False), write_through=True)
            yield
        finally:
            # Whatever Python buffered for fds 1/2 during the block belongs in the captures.
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                _flush(stream)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sys.stdout, sys.stderr = streams
            for capture, stream in ((out, sys.stdout), (err, sys.stderr)):
                capture.seek(0)
                text = capture.read().decode("utf-8", errors="replace")
                kept = "".join(line for line in text.splitlines(keepends=True) if not is_noise(line))
                if kept and stream is not None:
                    stream.write(kept)
                    _flush(stream)


def _flush(stream: object) -> None:
    try:
        stream.flush()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        pass
