"""End to end through reproduce.py: the smoke suite on local and on a real local Ray cluster,
interruption (SIGINT, SIGKILL of the process tree) and resume, failing runs, corrupt run dirs."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from suites.manifest import load_suite
from suites.store import CHECKPOINT, METRICS, SPEC, STATUS, validate_run_dir
from tests.suites.conftest import REPO, TINY, deterministic, read_metrics, reproduce_cmd, run_reproduce, write_manifest


def _statuses(suite_root: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / STATUS).read_text()) for d in sorted((suite_root / "runs").iterdir())}


def _check_complete(suite_root: Path, manifest: str) -> None:
    """Every run of the manifest is done, its dir valid, its metrics complete and in order."""
    suite = load_suite(manifest)
    for spec in suite.runs:
        run_dir = suite_root / "runs" / spec.id
        validate_run_dir(run_dir)
        status = json.loads((run_dir / STATUS).read_text())
        assert status["state"] == "done" and status["error"] is None, status
        rows = read_metrics(run_dir)
        steps = [int(r["env_steps"]) for r in rows]
        assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] >= spec.budget["env_steps"]
        assert (run_dir / CHECKPOINT).is_file()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny suite run once without interruption."""
    root = tmp_path_factory.mktemp("reference")
    manifest = write_manifest(root / "tiny.yaml", TINY)
    result = run_reproduce("--suite", str(manifest), "--out", str(root / "out"), "--workers", "2", "--no-report")
    assert result.returncode == 0, result.stdout + result.stderr
    return manifest, root / "out" / "tiny"


def test_smoke_suite_end_to_end_on_local(tmp_path):
    out = tmp_path / "out"
    result = run_reproduce("--suite", "smoke", "--out", str(out), "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    root = out / "smoke"
    _check_complete(root, "smoke")
    assert (root / "manifest.yaml").read_text() == (REPO / "suites" / "smoke.yaml").read_text()
    assert "summary: 6 runs" in result.stdout and "6 done" in result.stdout
    assert "report: " in result.stdout
    report = Path(result.stdout.split("report: ")[-1].strip())
    assert report.is_file() and root in report.parents
    # Progress lines: each run starts, is evaluated and finishes.
    for spec in load_suite("smoke").runs:
        assert f"start  {spec.id}" in result.stderr and f"done   {spec.id}" in result.stderr
        assert f"eval   {spec.id}" in result.stderr
    status = next(iter(_statuses(root).values()))
    assert status["backend"] == "local" and status["attempts"] == 1 and status["host"]
    provenance = json.loads(next((root / "runs").iterdir()).joinpath("provenance.json").read_text())
    assert provenance["backend"] == "local" and set(provenance["packages"]) >= {"torch", "jax", "jaxmarl", "ray"}
    assert "commit" in provenance["git"] and provenance["torch_threads"] == 1

    # A second invocation skips everything finished and touches nothing.
    before = {d.name: (d / METRICS).read_bytes() for d in (root / "runs").iterdir()}
    again = run_reproduce("--suite", "smoke", "--out", str(out), "--no-report")
    assert again.returncode == 0 and "6 run(s) already done: skipped" in again.stderr
    assert "start " not in again.stderr
    assert {d.name: (d / METRICS).read_bytes() for d in (root / "runs").iterdir()} == before


def test_smoke_suite_end_to_end_on_a_local_ray_cluster(tmp_path):
    out = tmp_path / "out"
    result = run_reproduce(
        "--suite", "smoke", "--out", str(out), "--backend", "ray", "--workers", "2", "--no-report", timeout=400
    )
    assert result.returncode == 0, result.stdout + result.stderr
    _check_complete(out / "smoke", "smoke")
    assert {s["backend"] for s in _statuses(out / "smoke").values()} == {"ray"}
    assert "summary: 6 runs" in result.stdout


def _interrupt_and_resume(tmp_path: Path, reference: tuple[Path, Path], interrupt) -> None:
    manifest, ref_root = reference
    out = tmp_path / "out"
    proc = subprocess.Popen(
        reproduce_cmd("--suite", str(manifest), "--out", str(out), "--workers", "2", "--no-report"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Wait for a random point of the training (after some run has reported progress).
    deadline = time.monotonic() + 120
    seen = 0
    target = random.Random().randint(1, 4)
    for line in proc.stdout:
        seen += "eval " in line
        if seen >= target or time.monotonic() > deadline:
            break
    time.sleep(random.Random().uniform(0.0, 1.5))
    interrupt(proc)
    proc.communicate(timeout=120)
    root = out / "tiny"
    done_before = {}
    for run_dir in (root / "runs").iterdir():
        validate_run_dir(run_dir)  # never corrupt, whatever the moment
        status = json.loads((run_dir / STATUS).read_text())
        if status["state"] == "done":
            done_before[run_dir.name] = ((run_dir / METRICS).read_bytes(), status)

    resumed = run_reproduce("--suite", str(manifest), "--out", str(out), "--workers", "2", "--no-report")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _check_complete(root, str(manifest))
    for run_id, (metrics, status) in done_before.items():  # finished runs ran exactly once
        assert (root / "runs" / run_id / METRICS).read_bytes() == metrics
        assert json.loads((root / "runs" / run_id / STATUS).read_text()) == status
        assert f"start  {run_id}" not in resumed.stderr
    for run_dir in (root / "runs").iterdir():  # resumed runs equal the uninterrupted ones
        assert deterministic(read_metrics(run_dir)) == deterministic(read_metrics(ref_root / "runs" / run_dir.name))


def test_sigint_stops_cleanly_and_the_rerun_resumes(tmp_path, reference):
    codes = []

    def ctrl_c(proc):
        proc.send_signal(signal.SIGINT)
        codes.append(proc)

    _interrupt_and_resume(tmp_path, reference, ctrl_c)
    assert codes[0].returncode in (130, 0)  # 0 only if every run happened to finish first


def test_sigkill_of_the_process_tree_loses_nothing_finished(tmp_path, reference):
    def kill_tree(proc):
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    _interrupt_and_resume(tmp_path, reference, kill_tree)


def test_a_failing_run_is_retried_recorded_and_does_not_stop_the_others(tmp_path):
    data = copy.deepcopy(TINY)
    data["seeds"] = [0, 1]
    data["budget"] = {**data["budget"], "env_steps": 500}
    manifest = write_manifest(tmp_path / "failing.yaml", data)
    # Seed 1 resumes from a checkpoint that cannot be read: an error that is not known to be
    # deterministic (unlike a bad config), so it is retried like a crash.
    victim = next(r for r in load_suite(str(manifest)).runs if r.seed == 1)
    run_dir = tmp_path / "out" / "tiny" / "runs" / victim.id
    run_dir.mkdir(parents=True)
    (run_dir / SPEC).write_text(json.dumps(victim.to_json()))
    (run_dir / CHECKPOINT).write_bytes(b"not a checkpoint")
    result = run_reproduce(
        "--suite", str(manifest), "--out", str(tmp_path / "out"), "--workers", "2", "--retries", "1", "--no-report"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    statuses = _statuses(tmp_path / "out" / "tiny")
    assert statuses[victim.id]["state"] == "failed" and statuses[victim.id]["attempts"] == 2
    assert statuses[victim.id]["retryable"] is True and "UnpicklingError" in statuses[victim.id]["error"]
    assert [s["state"] for k, s in statuses.items() if k != victim.id] == ["done"]
    assert "retry " in result.stderr and "(attempt 2 of 2)" in result.stderr
    assert "FAILED" in result.stdout and "(2 attempt(s)): " in result.stdout
    assert "1 done, 1 failed" in result.stdout


def test_a_run_failing_on_a_bad_config_is_reported_at_once_not_retried(tmp_path):
    """Validation refuses bad configs, but one that still reaches a worker (a spec written by other
    code) fails the same way every time: recorded as not retryable and reported after one attempt.
    The retry budget still applies to the next run, so the decision is per failure."""
    from suites.backends.local_backend import LocalBackend
    from suites.orchestrator import execute, plan
    from suites.store import SuiteStore

    suite = load_suite(str(write_manifest(tmp_path / "tiny.yaml", {**TINY, "seeds": [0, 1]})))
    store = SuiteStore(tmp_path / "out", suite.name)
    bad = dataclasses.replace(suite.runs[0], overrides={"mixer": "qmx"})  # past validation, as if by hand
    unreadable = suite.runs[1]
    store.prepare(unreadable)
    (store.run_dir(unreadable.id) / CHECKPOINT).write_bytes(b"not a checkpoint")
    progress = io.StringIO()
    summary = execute(
        plan([bad, unreadable], store), store, LocalBackend(workers=2), suite, {}, retries=2, stream=progress
    )
    outcomes = {o.spec.id: o for o in summary.outcomes}
    assert outcomes[bad.id].state == "failed" and outcomes[bad.id].attempts == 1
    assert "ConfigError" in outcomes[bad.id].error and "'mixer' must be one of qmix, vdn" in outcomes[bad.id].error
    status = json.loads((store.run_dir(bad.id) / STATUS).read_text())
    assert status["retryable"] is False and status["attempts"] == 1
    assert f"not retried: {bad.id}" in progress.getvalue()
    assert outcomes[unreadable.id].state == "failed" and outcomes[unreadable.id].attempts == 3  # 1 + 2 retries
    assert (
        f"retry  {unreadable.id}" in progress.getvalue() and f"not retried: {unreadable.id}" not in progress.getvalue()
    )
    # The next attempt of a run starts without the earlier verdict.
    store.prepare(bad)
    assert json.loads((store.run_dir(bad.id) / STATUS).read_text())["retryable"] is None


def test_a_corrupt_run_dir_is_reported_and_left_untouched(tmp_path, reference):
    manifest, ref_root = reference
    out = tmp_path / "out"
    runs = load_suite(str(manifest)).runs
    victim = out / "tiny" / "runs" / runs[0].id
    victim.mkdir(parents=True)
    (victim / SPEC).write_text('{"id": "' + runs[0].id + '", "suite": "ti')  # truncated
    result = run_reproduce(
        "--suite", str(manifest), "--out", str(out), "--workers", "2", "--no-report", "--seeds", "0,1"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"CORRUPT run dir {victim}" in result.stderr and "spec.json is unreadable" in result.stderr
    assert (victim / SPEC).read_text() == '{"id": "' + runs[0].id + '", "suite": "ti'
    assert sorted(p.name for p in victim.iterdir()) == [SPEC]
    assert "1 corrupt" in result.stdout and "1 done" in result.stdout


def test_a_stop_request_reaching_a_worker_still_starting_up_interrupts_its_run(tmp_path):
    """Ctrl-C can arrive while a local worker is still importing, before it handles SIGTERM: the
    signal then ends the process. That is the stop the driver asked for, so the run is reported
    interrupted (it resumes on the next invocation), never failed."""
    from suites.backends.base import Job
    from suites.backends.local_backend import LocalBackend
    from suites.store import SuiteStore

    suite = load_suite(str(write_manifest(tmp_path / "tiny.yaml", TINY)))
    store = SuiteStore(tmp_path / "out", suite.name)
    spec = suite.runs[0]
    backend = LocalBackend(workers=1)
    backend.submit(Job(spec, store.prepare(spec), 1, "cpu", 1.0, 0.0), provenance={})
    backend.request_stop()  # at once: the worker has not reached its SIGTERM handler
    ends, deadline = [], time.monotonic() + 120
    while not ends and time.monotonic() < deadline:
        ends = [e for e in backend.poll(timeout=0.5) if e.get("event") == "end"]
    backend.close()
    assert [(e["run"], e["state"], e["error"]) for e in ends] == [(spec.id, "interrupted", None)]
    assert store.inspect(spec).kind in ("pending", "interrupted")  # the next invocation runs it
