"""TensorBoard event files from metrics.csv: the framing and protobuf are read back by TensorFlow's
own reader; syncing appends only new rows and restarts with a restarted run; the flag keeps a real
suite's runs in step."""

from __future__ import annotations

import csv

import pytest

from suites.tensorboard import crc32c, main, sync_run
from tests.suites.conftest import run_reproduce


def _write_metrics(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _read_events(run_dir):
    tf = pytest.importorskip("tensorflow")
    (path,) = (run_dir / "tb").glob("events.out.tfevents.*")
    events = list(tf.compat.v1.train.summary_iterator(str(path)))
    assert events[0].file_version == "brain.Event:2"
    return [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events[1:]]


def test_crc32c_known_value():
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def test_events_read_back_by_tensorflow_and_only_new_rows_are_appended(tmp_path):
    run = tmp_path / "runs" / "abc"
    rows = [
        {"env_steps": 1000, "test_win_rate": 0.25, "loss": 1.5, "phase": "train", "grad": ""},
        {"env_steps": 2000, "test_win_rate": 0.5, "loss": 0.75, "phase": "train", "grad": "nan"},
    ]
    _write_metrics(run, rows)
    assert sync_run(run) == 2
    assert sync_run(run) == 0  # nothing new
    assert _read_events(run) == [
        (1000, {"test_win_rate": 0.25, "loss": 1.5}),
        (2000, {"test_win_rate": 0.5, "loss": 0.75}),
    ]  # text, empty, nan skipped
    _write_metrics(run, rows + [{"env_steps": 3000, "test_win_rate": 1.0, "loss": 0.5, "phase": "x", "grad": "2"}])
    assert sync_run(run) == 1
    assert [step for step, _ in _read_events(run)] == [1000, 2000, 3000]
    _write_metrics(run, rows[:1])  # the run restarted from scratch: the file starts again
    assert sync_run(run) == 1
    assert _read_events(run) == [(1000, {"test_win_rate": 0.25, "loss": 1.5})]


def test_the_command_refuses_what_is_not_a_suite_dir(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "not a suite directory" in capsys.readouterr().err


def test_the_flag_writes_event_files_for_every_run_of_a_suite(tmp_path, tiny_manifest):
    out = tmp_path / "out"
    result = run_reproduce(
        "--suite", str(tiny_manifest), "--out", str(out), "--seeds", "0", "--tensorboard", "--no-report"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (out / "tiny" / "runs").iterdir()
    with open(run / "metrics.csv", newline="") as f:
        steps = [int(r["env_steps"]) for r in csv.DictReader(f)]
    assert [step for step, _ in _read_events(run)] == steps
    rerun = run_reproduce("--suite", str(tiny_manifest), "--out", str(out), "--seeds", "0", "--no-report")
    assert rerun.returncode == 0 and "already done" in rerun.stderr  # tb/ does not disturb the store
