"""Run store: the lock on the output directory, corrupt run dirs, status records."""

from __future__ import annotations

import json

import pytest

import reproduce
from suites.manifest import load_suite
from suites.store import SPEC, STATUS, CorruptRunError, StoreLockedError, SuiteStore, validate_run_dir, write_status


def test_second_lock_holder_gets_a_clear_message(tmp_path, tiny_manifest, capsys):
    first = SuiteStore(tmp_path / "out", "tiny")
    first.acquire(command="reproduce.py --suite tiny")
    try:
        with pytest.raises(
            StoreLockedError, match=r"is in use by another reproduce.py \(pid \d+ on .* reproduce.py --suite tiny\)"
        ):
            SuiteStore(tmp_path / "out", "tiny").acquire()
        # The CLI refuses before starting any run and leaves the store as it was.
        assert reproduce.main(["--suite", str(tiny_manifest), "--out", str(tmp_path / "out")]) == 2
        assert "is in use by another reproduce.py" in capsys.readouterr().err
        assert not (tmp_path / "out" / "tiny" / "runs").exists()
    finally:
        first.release()
    other = SuiteStore(tmp_path / "out", "tiny")
    other.acquire()  # released: the next invocation gets it
    other.release()


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, time; sys.path.insert(0, '.'); from suites.store import SuiteStore; "
        f"s = SuiteStore({str(tmp_path)!r}, 'tiny'); s.acquire(); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError):
            SuiteStore(tmp_path, "tiny").acquire()
    finally:
        proc.kill()
        proc.wait()
    store = SuiteStore(tmp_path, "tiny")
    store.acquire()
    store.release()


@pytest.fixture
def prepared(tmp_path, tiny_manifest):
    suite = load_suite(str(tiny_manifest))
    store = SuiteStore(tmp_path / "out", suite.name)
    spec = suite.runs[0]
    run_dir = store.prepare(spec)
    return store, spec, run_dir


def test_prepare_writes_spec_and_pending_status(prepared):
    store, spec, run_dir = prepared
    stored = json.loads((run_dir / SPEC).read_text())
    assert stored["id"] == spec.id == run_dir.name
    for key in (
        "suite",
        "paper",
        "family",
        "scenario",
        "env_options",
        "algorithm",
        "label",
        "group",
        "overrides",
        "seed",
        "budget",
    ):
        assert key in stored
    assert stored["memberships"] == [{"group": "main", "label": "qmix"}]
    status = json.loads((run_dir / STATUS).read_text())
    assert status["state"] == "pending" and status["attempts"] == 0 and status["error"] is None
    assert store.inspect(spec).kind == "pending"
    write_status(run_dir, state="running", attempts=1)
    assert store.inspect(spec).kind == "interrupted"  # nobody else holds the lock: its worker died
    write_status(run_dir, state="failed", error="boom")
    state = store.inspect(spec)
    assert (state.kind, state.attempts, state.error) == ("failed", 1, "boom")


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: (d / SPEC).write_text('{"id": "abc'), "spec.json is unreadable"),
        (
            lambda d: (d / SPEC).write_text(json.dumps({**json.loads((d / SPEC).read_text()), "seed": 99})),
            "does not match its id",
        ),
        (
            lambda d: (d / SPEC).write_text(json.dumps({**json.loads((d / SPEC).read_text()), "id": "000000000000"})),
            "says id '000000000000' but lives in run dir",
        ),
        (lambda d: (d / SPEC).unlink(), "spec.json is missing but the directory holds"),
        (lambda d: (d / STATUS).write_text('{"state": "sleeping"}'), "status.json has no valid state"),
        (lambda d: (d / STATUS).write_text(""), "status.json is unreadable"),
    ],
)
def test_corrupt_run_dirs_are_reported_specifically(prepared, damage, message):
    store, spec, run_dir = prepared
    damage(run_dir)
    with pytest.raises(CorruptRunError, match=message):
        validate_run_dir(run_dir)
    state = store.inspect(spec)
    assert state.kind == "corrupt" and message in state.detail


def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    """mkstemp's temp files are 0600: the renamed file must not keep that (a report or record
    unreadable to the machine's other users), and an existing file keeps its own mode."""
    import os
    import stat

    from marl.run_io import atomic_write_text

    mask = os.umask(0o022)
    try:
        import importlib

        import marl.run_io

        importlib.reload(marl.run_io)  # the module reads the umask once, at import
        marl.run_io.atomic_write_text(tmp_path / "new.txt", "a")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644
        (tmp_path / "old.txt").write_text("x")
        os.chmod(tmp_path / "old.txt", 0o640)
        atomic_write_text(tmp_path / "old.txt", "b")
        assert stat.S_IMODE((tmp_path / "old.txt").stat().st_mode) == 0o640
        assert (tmp_path / "old.txt").read_text() == "b"
    finally:
        os.umask(mask)
        importlib.reload(marl.run_io)
