"""``local``: a pool of worker processes on this machine, one ``python -m suites.worker`` per run.

A fresh process per run isolates runs (a crash, a leak or a stuck game kills only its own run) and
gives each a clean JAX/torch state. Workers live in their own sessions, so a terminal's Ctrl-C
reaches only the driver, which turns it into SIGTERM (stop at the next safe point) or, the second
time, SIGKILL of each worker's process tree.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
from typing import Any

import psutil

from suites.backends.base import Backend, Job, LineStreamJob, drain, start_thread
from suites.provenance import REPO_ROOT


class LocalBackend(Backend):
    name = "local"

    def __init__(self, workers: int | None = None, **_: Any):
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.procs: dict[str, subprocess.Popen] = {}
        self.stop_requested = False

    def slots(self) -> int:
        return self.workers

    def submit(self, job: Job, provenance: dict[str, Any]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            sys.executable,
            "-m",
            "suites.worker",
            str(job.run_dir),
            "--backend",
            self.name,
            "--threads",
            str(job.threads),
            "--device",
            job.device,
            "--provenance",
            json.dumps(provenance),
            "--parent-pid",
            str(os.getpid()),
            *job.worker_args(),
        ]
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.procs[job.spec.id] = proc
        start_thread(self._watch, job.spec.id, proc)

    def _watch(self, run_id: str, proc: subprocess.Popen) -> None:
        stream = LineStreamJob(run_id, self.events)
        assert proc.stdout is not None
        stream.consume(proc.stdout)
        code = proc.wait()
        how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        stream.finish(how, stopped=self.stop_requested and code == -signal.SIGTERM)
        self.events.put({"event": "_reaped", "run": run_id})

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        return drain(self.events, timeout, self.procs)

    def request_stop(self) -> None:
        self.stop_requested = True
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        for proc in list(self.procs.values()):
            if proc.poll() is None:  # not reaped yet, so the pid is still our worker's
                kill_tree(proc.pid)
        for proc in list(self.procs.values()):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        self.kill()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (game servers included)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
