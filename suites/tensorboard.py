"""TensorBoard event files from the runs' metrics.csv, for watching long runs live as PyMARL, EPyMARL
and BenchMARL users do: ``reproduce.py --tensorboard`` keeps ``<run dir>/tb/`` in step with each
run's metrics.csv while the suite runs (every backend writes the run dirs this process sees), and
``python -m suites.tensorboard <out>/<suite> [--follow]`` does it for a store on its own. Then
``tensorboard --logdir <out>/<suite>/runs`` (TensorBoard itself is not a dependency of the suite).

The event files are written here without TensorFlow or TensorBoard: each record is a serialized
``tensorflow.Event`` protobuf (wall_time, step, one simple_value per column) framed as TFRecord
(length, masked CRC-32C of the length, data, masked CRC-32C of the data). The step is the row's
``env_steps``; every other numeric column is a scalar under its own name. metrics.csv is only ever
extended, except when a run restarts from scratch: then the event file is rewritten from the top.
"""

from __future__ import annotations

import argparse
import csv
import math
import socket
import struct
import sys
import threading
import time
from pathlib import Path

TB_DIR = "tb"
STEP_COLUMN = "env_steps"
_SYNCED = ".synced_rows"  # how many metrics.csv rows the event file holds


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint((number << 3) | wire) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def encode_event(
    wall_time: float, step: int, scalars: dict[str, float] | None = None, file_version: str | None = None
) -> bytes:
    """``Event{wall_time=1 (double), step=2 (int64), file_version=3 | summary=5}`` with
    ``Summary{value=1: Value{tag=1, simple_value=2 (float)}}``."""
    event = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step & (2**64 - 1)))
    if file_version is not None:
        event += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode()) + _field(2, 5, struct.pack("<f", v)))
            for tag, v in scalars.items()
        )
        event += _length_delimited(5, values)
    return event


def frame(record: bytes) -> bytes:
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", _masked_crc(header)) + record + struct.pack("<I", _masked_crc(record))


def _numeric(row: dict[str, str]) -> dict[str, float]:
    out = {}
    for key, raw in row.items():
        if key == STEP_COLUMN or raw in (None, ""):
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if math.isfinite(value):
            out[key] = value
    return out


def sync_run(run_dir: Path) -> int:
    """Bring ``run_dir/tb`` up to date with ``run_dir/metrics.csv``; returns the rows written now."""
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return 0
    try:
        with open(metrics, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return 0
    tb = run_dir / TB_DIR
    marker = tb / _SYNCED
    synced = int(marker.read_text()) if marker.is_file() else 0
    files = sorted(tb.glob("events.out.tfevents.*")) if tb.is_dir() else []
    if synced > len(rows) or not files:  # a restarted run (or nothing yet): start the file again
        for old in files:
            old.unlink()
        synced = 0
    new = rows[synced:]
    if not new and files:
        return 0
    tb.mkdir(exist_ok=True)
    now = time.time()
    if synced == 0:
        path = tb / f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        path.write_bytes(frame(encode_event(now, 0, file_version="brain.Event:2")))
    else:
        path = files[-1]
    with open(path, "ab") as f:
        for row in new:
            try:
                step = int(float(row.get(STEP_COLUMN) or 0))
            except ValueError:
                continue
            f.write(frame(encode_event(now, step, _numeric(row))))
        f.flush()
    marker.write_text(str(len(rows)))
    return len(new)


def sync_suite(suite_root: Path) -> int:
    runs = suite_root / "runs"
    return sum(sync_run(d) for d in sorted(runs.iterdir()) if d.is_dir()) if runs.is_dir() else 0


class LiveSync:
    """A daemon thread syncing every run of a suite every ``interval`` seconds, and once at stop."""

    def __init__(self, suite_root: Path, interval: float = 10.0):
        self.suite_root, self.interval = Path(suite_root), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tensorboard-sync", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._safe_sync()

    def _safe_sync(self) -> None:
        try:
            sync_suite(self.suite_root)
        except OSError as exc:  # a watcher must never stop the suite
            print(f"tensorboard: sync failed: {exc}", file=sys.stderr)

    def __enter__(self) -> "LiveSync":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._safe_sync()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m suites.tensorboard", description=__doc__.strip().splitlines()[0])
    p.add_argument("suite_dir", help="a suite directory of the run store, e.g. results/quick")
    p.add_argument("--follow", action="store_true", help="keep syncing every --interval seconds until Ctrl-C")
    p.add_argument("--interval", type=float, default=10.0)
    args = p.parse_args(argv)
    root = Path(args.suite_dir)
    if not (root / "runs").is_dir():
        print(
            f"suites.tensorboard: error: {root} is not a suite directory (no runs/ inside); "
            "pass <out>/<suite>, e.g. results/quick",
            file=sys.stderr,
        )
        return 2
    try:
        while True:
            written = sync_suite(root)
            print(f"tensorboard: {written} new rows; view with: tensorboard --logdir {root / 'runs'}")
            if not args.follow:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
