"""Suite -> runs -> run dirs: planning, filtering, execution with retries, summary and report.

Reliability rules (docs/run-store.md, "Identity and resume"):
* finished runs are skipped; interrupted runs resume from their checkpoint (the trainer does it);
* a failed run is retried up to ``retries`` more times in this invocation and never stops the others,
  unless its failure cannot change on a second try (status.json ``retryable: false``: a bad config or
  environment option, suites/worker.py), which is reported at once;
* corrupt run dirs are reported and left untouched; so is everything already finished;
* first Ctrl-C (or SIGTERM): no new runs, running ones stop at their next safe point; second: kill.
"""

from __future__ import annotations

import collections
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from suites.backends.base import Backend, Job
from suites.manifest import RunSpec, Suite
from suites.progress import Progress
from suites.store import METRICS, SPEC, STATUS, RunState, SuiteStore, read_json_file, write_status

ONLY_KEYS = ("family", "scenario", "algorithm", "label", "group", "seed", "id")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """A bad command-line choice; the message lists the valid ones."""


# Filtering and planning ---------------------------------------------------------------------------


def filter_runs(suite: Suite, seeds: list[int] | None = None, only: list[str] | None = None) -> list[RunSpec]:
    """Restrict the suite's runs to ``seeds`` and to every ``--only`` term (all must match).

    A term is ``key=value[,value...]`` with key in ONLY_KEYS, or a bare word matching the scenario,
    algorithm, label or group."""
    runs = list(suite.runs)
    if seeds is not None:
        unknown = sorted(set(seeds) - set(suite.all_seeds))
        if unknown:
            raise UsageError(
                f"--seeds {','.join(map(str, unknown))}: not in suite {suite.name!r}'s seeds "
                f"{', '.join(map(str, suite.all_seeds))}"
            )
        runs = [r for r in runs if r.seed in seeds]
    for term in only or []:
        if "=" in term:
            key, _, values = term.partition("=")
            key = key.strip()
            if key not in ONLY_KEYS:
                raise UsageError(f"--only {term!r}: unknown key {key!r}; valid keys: {', '.join(ONLY_KEYS)}")
            wanted = {v.strip() for v in values.split(",") if v.strip()}
            choices = sorted({str(_field(r, key)) for r in suite.runs})
            bad = sorted(wanted - set(choices))
            if bad:
                raise UsageError(
                    f"--only {term!r}: {', '.join(bad)} is not a {key} of suite {suite.name!r}; "
                    f"valid choices: {', '.join(choices)}"
                )
            runs = [r for r in runs if str(_field(r, key)) in wanted]
        else:
            words = (
                {r.scenario for r in suite.runs}
                | {r.algorithm for r in suite.runs}
                | {lbl for r in suite.runs for _, lbl in r.memberships}
                | {g for r in suite.runs for g, _ in r.memberships}
            )
            if term not in words:
                raise UsageError(
                    f"--only {term!r} matches no scenario, algorithm, label or group of suite "
                    f"{suite.name!r}; valid words: {', '.join(sorted(words))} (or key=value with key in "
                    f"{', '.join(ONLY_KEYS)})"
                )
            runs = [r for r in runs if term in (r.scenario, r.algorithm) or any(term in m for m in r.memberships)]
    if not runs:
        raise UsageError(f"the filters leave no run of suite {suite.name!r}")
    return runs


def _field(run: RunSpec, key: str) -> Any:
    if key in ("label", "group"):
        return getattr(run, key)
    return run.id if key == "id" else getattr(run, key)


@dataclass
class PlanItem:
    spec: RunSpec
    state: RunState


def plan(specs: list[RunSpec], store: SuiteStore) -> list[PlanItem]:
    return [PlanItem(spec, store.inspect(spec)) for spec in specs]


def describe_state(item: PlanItem, notes: dict[str, int] | None = None) -> str:
    """One line; with ``notes``, long unavailability reasons become numbered footnotes."""
    s = item.state
    if item.spec.unavailable and s.kind != "done":
        if notes is None:
            return f"UNAVAILABLE: {item.spec.unavailable}"
        number = notes.setdefault(item.spec.unavailable, len(notes) + 1)
        return f"UNAVAILABLE [{number}]"
    budget = item.spec.budget["env_steps"]
    return {
        "new": "to run",
        "pending": f"to run (resumes near {s.steps}/{budget} steps)" if s.steps else "to run",
        "interrupted": f"interrupted: resumes near {s.steps}/{budget} steps",
        "done": f"done ({s.steps} steps)",
        "failed": f"failed after {s.attempts} attempt(s), will retry: {s.error}",
        "corrupt": f"CORRUPT: {s.detail}",
    }[s.kind]


def format_plan(items: list[PlanItem], suite: Suite) -> str:
    rows = [("id", "scenario", "algorithm", "label (group)", "seed", "steps", "state")]
    notes: dict[str, int] = {}
    for it in items:
        sp = it.spec
        cells = "; ".join(f"{lbl} ({grp})" for grp, lbl in sp.memberships)
        rows.append(
            (
                sp.id,
                f"{sp.family}/{sp.scenario}",
                sp.algorithm,
                cells,
                str(sp.seed),
                str(sp.budget["env_steps"]),
                describe_state(it, notes),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    counts = collections.Counter(
        "unavailable" if it.spec.unavailable and it.state.kind != "done" else it.state.kind for it in items
    )
    lines.append("")
    lines.extend(f"[{n}] {reason}" for reason, n in notes.items())
    lines.append(
        f"suite {suite.name!r} ({suite.paper}): {len(items)} runs - "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    )
    return "\n".join(lines)


# Execution -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    spec: RunSpec
    state: str  # done | failed | interrupted | skipped | corrupt | unavailable | pending
    attempts: int = 0
    error: str | None = None


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False
    elapsed: float = 0.0
    title: str = "summary"
    noun: str = "runs"

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if any(o.state in ("failed", "corrupt") for o in self.outcomes) else EXIT_OK

    def format(self) -> str:
        counts = collections.Counter(o.state for o in self.outcomes)
        lines = [
            f"{self.title}: {len(self.outcomes)} {self.noun} in {self.elapsed:.0f} s - "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        ]
        for o in self.outcomes:
            if o.state in ("failed", "corrupt", "unavailable", "waiting"):
                lines.append(
                    f"  {o.state.upper()} {o.spec.id} {o.spec.describe()}"
                    + (f" ({o.attempts} attempt(s))" if o.state == "failed" else "")
                    + f": {o.error}"
                )
        if self.interrupted:
            lines.append("  interrupted: run the same command again to resume where it stopped")
        return "\n".join(lines)


class _Interrupts:
    """First SIGINT/SIGTERM: stop at the next safe point. Second: kill at once.

    The handler only sets flags (printing from a signal handler can collide with the main thread's
    own writes); the main loop acts on the first request within one poll. The second kills directly,
    in case the main loop is stuck."""

    def __init__(self, kill: Callable[[], None]):
        self.count = 0
        self.kill = kill
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count >= 2:
            self.kill()


def execute(
    items: list[PlanItem],
    store: SuiteStore,
    backend: Backend,
    suite: Suite,
    provenance: dict[str, Any],
    retries: int = 2,
    threads: int | None = None,
    stream: TextIO | None = None,
) -> Summary:
    """Run every runnable item through ``backend`` (the caller holds the store's lock)."""
    started = time.monotonic()
    summary = Summary()
    todo: list[PlanItem] = []
    for it in items:
        if it.state.kind == "done":
            summary.outcomes.append(Outcome(it.spec, "skipped", it.state.attempts))
        elif it.state.kind == "corrupt":
            summary.outcomes.append(Outcome(it.spec, "corrupt", error=it.state.detail))
        elif it.spec.unavailable:
            summary.outcomes.append(Outcome(it.spec, "unavailable", error=it.spec.unavailable))
        else:
            todo.append(it)

    progress = Progress([it.spec for it in todo], already_done=0, total_runs=len(todo), stream=stream)
    for it in todo:
        progress.steps[it.spec.id] = min(it.state.steps, it.spec.budget["env_steps"])
    skipped = summary.count("skipped")
    if skipped:
        progress.line(f"{skipped} run(s) already done: skipped")
    final, stopping = run_jobs(
        [it.spec for it in todo],
        backend,
        suite,
        provenance,
        retries,
        threads,
        progress,
        prepare=store.prepare,
        on_failed=lambda spec, error: _record_failure(store.run_dir(spec.id), error),
        attempts=lambda spec: _attempts(store.run_dir(spec.id)),
        retryable=lambda spec: _retryable(store.run_dir(spec.id)),
    )
    progress.close()
    summary.outcomes.extend(final[it.spec.id] for it in todo if it.spec.id in final)
    summary.interrupted = stopping and any(o.state in ("interrupted", "pending") for o in summary.outcomes)
    summary.elapsed = time.monotonic() - started
    return summary


def run_jobs(
    specs: list[RunSpec],
    backend: Backend,
    suite: Suite,
    provenance: dict[str, Any],
    retries: int,
    threads: int | None,
    progress: Progress,
    prepare: Callable[[RunSpec], Path],
    on_failed: Callable[[RunSpec, str | None], None],
    attempts: Callable[[RunSpec], int],
    task: str = "train",
    requests: dict[str, dict[str, Any]] | None = None,
    retryable: Callable[[RunSpec], bool] = lambda spec: True,
) -> tuple[dict[str, Outcome], bool]:
    """Submit one ``task`` job per spec (at most ``backend.slots()`` at once), retry failures that
    ``retryable`` allows, stop on Ctrl-C. Returns (an outcome per spec, whether it was stopped)."""
    queue = collections.deque(specs)
    tries: dict[str, int] = collections.Counter()
    active: dict[str, RunSpec] = {}
    final: dict[str, Outcome] = {}
    cpus, gpus = suite.resources.cpus, suite.resources.gpus
    job_threads = threads or max(1, int(cpus))
    device = "cuda" if gpus > 0 else "cpu"
    stopping = False

    with _Interrupts(backend.kill) as interrupts:
        while active or (queue and not stopping):
            if interrupts.count >= 2:
                stopping = True
                progress.line("second interrupt: stopped at once")
                break
            if interrupts.count == 1 and not stopping:
                stopping = True
                progress.line(
                    "interrupt: stopping the running jobs at their next safe point (interrupt again to stop at once)"
                )
                backend.request_stop()
            while queue and not stopping and len(active) < backend.slots():
                spec = queue.popleft()
                run_dir = prepare(spec)
                tries[spec.id] += 1
                active[spec.id] = spec
                backend.submit(
                    Job(spec, run_dir, job_threads, device, cpus, gpus, task, (requests or {}).get(spec.id)), provenance
                )
            for event in backend.poll(timeout=0.5):
                if interrupts.count >= 2:
                    break  # killed: the workers' ends are our doing, not failures
                progress.event(event)
                if event.get("event") != "end" or event.get("run") not in active:
                    continue
                spec = active.pop(event["run"])
                state, error = event["state"], event.get("error")
                if state == "failed":
                    on_failed(spec, error)
                    if not retryable(spec):
                        progress.line(
                            f"not retried: {spec.id} {spec.describe()} fails the same way on every try "
                            "(fix the manifest or the code, then rerun)"
                        )
                    elif tries[spec.id] <= retries and not stopping:
                        progress.line(
                            f"retry  {spec.id} {spec.describe()} (attempt {tries[spec.id] + 1} of {retries + 1})"
                        )
                        queue.append(spec)
                        continue
                final[spec.id] = Outcome(spec, state, attempts(spec), error)
            progress.tick()

    for spec in [*active.values(), *queue]:  # stopped before finishing (or before starting)
        final[spec.id] = Outcome(spec, "interrupted" if spec.id in active else "pending", attempts(spec))
    return final, stopping


def _record_failure(run_dir: Path, error: str | None) -> None:
    """A worker that died without recording its failure (killed, crashed) leaves status running."""
    try:
        status = read_json_file(run_dir / STATUS)
    except (OSError, ValueError):
        status = {}
    if status.get("state") != "failed":
        write_status(run_dir, state="failed", error=error, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _retryable(run_dir: Path) -> bool:
    """False when the worker recorded a failure no retry can fix (suites/worker.py DETERMINISTIC)."""
    try:
        return read_json_file(run_dir / STATUS).get("retryable") is not False
    except (OSError, ValueError):
        return True


def _attempts(run_dir: Path) -> int:
    try:
        return int(read_json_file(run_dir / STATUS).get("attempts", 0))
    except (OSError, ValueError):
        return 0


# Report ------------------------------------------------------------------------------------------


def render_report(suite_root: Path, say: Callable[[str], None] = print) -> Path | None:
    """The reports package's report when it is importable, else a minimal summary.md table."""
    try:
        from reports.render import render_report as full_report
    except ImportError as exc:
        say(f"report: the full report is not available ({exc}); writing a minimal summary table")
    else:
        try:
            paths = full_report(suite_root)
            return Path(paths.get("html") or paths.get("pdf") or next(iter(paths.values())))
        except Exception as exc:  # the runs are safe on disk; say what broke and still give a table
            say(
                f"report: rendering the full report failed ({type(exc).__name__}: {exc}); writing a minimal summary table"
            )
    return write_minimal_report(suite_root)


def write_minimal_report(suite_root: Path) -> Path:
    """report/summary.md: final test win rate / return per scenario x label, median over seeds."""
    import csv

    from marl.run_io import atomic_write_text

    cells: dict[tuple[str, str, str], list[dict[str, float]]] = collections.defaultdict(list)
    states: collections.Counter = collections.Counter()
    for run_dir in sorted((suite_root / "runs").glob("*")):
        try:
            spec = read_json_file(run_dir / SPEC)
            status = read_json_file(run_dir / STATUS)
        except (OSError, ValueError):
            states["unreadable"] += 1
            continue
        states[status.get("state", "?")] += 1
        if status.get("state") != "done":
            continue
        try:
            with open(run_dir / METRICS, newline="") as f:
                last = list(csv.DictReader(f))[-1]
        except (OSError, IndexError):
            continue
        memberships = spec.get("memberships") or [{"group": spec["group"], "label": spec["label"]}]
        for m in memberships:
            cells[(m["group"], f"{spec['family']}/{spec['scenario']}", m["label"])].append(
                {
                    "win": float(last.get("test_win_rate") or "nan"),
                    "ret": float(last.get("test_return_mean") or "nan"),
                    "steps": float(last.get("env_steps") or 0),
                }
            )
    lines = [
        f"# {suite_root.name}: summary",
        "",
        "Final greedy evaluation of each run; median over seeds (n = seeds done). Run states: "
        + ", ".join(f"{n} {k}" for k, n in sorted(states.items())),
        "",
    ]
    for group in sorted({g for g, _, _ in cells}):
        lines += [
            f"## {group}",
            "",
            "| scenario | label | test win rate | test return | env steps | n |",
            "|---|---|---|---|---|---|",
        ]
        for (g, scenario, label), values in sorted(cells.items()):
            if g != group:
                continue
            med = {k: statistics.median(v[k] for v in values) for k in ("win", "ret", "steps")}
            win = "-" if med["win"] != med["win"] else f"{med['win']:.3f}"
            lines.append(f"| {scenario} | {label} | {win} | {med['ret']:.3f} | {med['steps']:.0f} | {len(values)} |")
        lines.append("")
    path = suite_root / "report" / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def eprint(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)
