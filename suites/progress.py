"""Progress: an overall bar over the env steps of the runs being executed (runs done / total and
ETA in its description) and one line per run event (start, every evaluation, end).

In a terminal the bar redraws in place; in CI logs (not a TTY) there is no bar but a plain status
line every ``log_interval`` seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from suites.manifest import RunSpec

WON_FAMILIES = ("smac", "smax")  # families whose episodes are won or lost


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _fmt_row(row: dict[str, Any], has_won: bool) -> str:
    parts = []
    if has_won and "test_win_rate" in row:
        parts.append(f"test win {row['test_win_rate']:.2f}")
    if "test_return_mean" in row:
        parts.append(f"test return {row['test_return_mean']:.2f}")
    return ", ".join(parts)


class Progress:
    def __init__(
        self,
        specs: list[RunSpec],
        already_done: int,
        total_runs: int,
        stream: TextIO | None = None,
        log_interval: float = 30.0,
        totals: dict[str, int] | None = None,
        unit: str = "step",
        what: str = "runs",
    ):
        """``totals``: units of work per job (default: the run's env-step budget); ``unit`` names them."""
        self.stream = stream or sys.stderr
        self.specs = {s.id: s for s in specs}
        self.steps = {s.id: 0 for s in specs}
        self.totals = {s.id: totals[s.id] if totals and s.id in totals else s.budget["env_steps"] for s in specs}
        self.total_steps = sum(self.totals.values())
        self.done_runs, self.total_runs = already_done, total_runs
        self.unit, self.what = unit, what
        self.start = time.monotonic()
        self.first_steps: dict[str, int] = {}
        self.tty = self.stream.isatty()
        self.bar = tqdm(
            total=self.total_steps,
            unit=unit,
            unit_scale=True,
            dynamic_ncols=True,
            file=self.stream,
            disable=not self.tty,
            desc=self._desc(),
            smoothing=0.1,
        )
        self.log_interval, self.last_log = log_interval, time.monotonic()

    def _desc(self) -> str:
        return f"{self.what} {self.done_runs}/{self.total_runs}"

    def line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self.tty:
            self.bar.write(f"[{stamp}] {text}", file=self.stream)
        else:
            print(f"[{stamp}] {text}", file=self.stream, flush=True)

    def _tag(self, run_id: str) -> str:
        spec = self.specs.get(run_id)
        tag = f"{run_id} {spec.describe()}" if spec else run_id
        return tag if self.what == "runs" else f"{self.what} of {tag}"

    def eta(self) -> float | None:
        """Seconds left, from the env-step rate of this invocation (resumed steps excluded)."""
        fresh = sum(self.steps[r] - self.first_steps.get(r, self.steps[r]) for r in self.steps)
        elapsed = time.monotonic() - self.start
        if fresh <= 0 or elapsed <= 0:
            return None
        return (self.total_steps - sum(self.steps.values())) / (fresh / elapsed)

    def event(self, event: dict[str, Any]) -> None:
        run_id, kind = event.get("run", ""), event.get("event")
        if run_id not in self.specs:
            return
        if kind == "start":
            self.line(f"start  {self._tag(run_id)} (attempt {event.get('attempt', 1)})")
        elif kind == "progress":
            t = min(int(event["t"]), self.totals[run_id])
            self.first_steps.setdefault(run_id, t)
            self.steps[run_id] = t
            if event.get("row"):
                total = self.totals[run_id]
                self.line(
                    f"eval   {self._tag(run_id)}: {t}/{total} steps, {_fmt_row(event['row'], self.specs[run_id].family in WON_FAMILIES)}"
                )
        elif kind == "end":
            state = event.get("state")
            if state == "done":
                self.steps[run_id] = self.totals[run_id]
                self.done_runs += 1
            error = f": {event.get('error')}" if event.get("error") else ""
            self.line(f"{state:<6} {self._tag(run_id)}{error}")
        self._refresh()

    def _refresh(self) -> None:
        self.bar.n = sum(self.steps.values())
        eta = self.eta()
        self.bar.set_description(
            self._desc() + (f", ETA {_fmt_duration(eta)}" if eta is not None else ""), refresh=False
        )
        self.bar.refresh()
        if not self.tty and time.monotonic() - self.last_log >= self.log_interval:
            self.last_log = time.monotonic()
            pct = 100.0 * self.bar.n / max(1, self.total_steps)
            eta = self.eta()
            self.line(
                f"overall: {self.what} {self.done_runs}/{self.total_runs}, {pct:.0f}% of {'env steps' if self.unit == 'step' else self.unit + 's'}, "
                f"elapsed {_fmt_duration(time.monotonic() - self.start)}"
                + (f", ETA {_fmt_duration(eta)}" if eta is not None else "")
            )

    def tick(self) -> None:
        self._refresh()

    def close(self) -> None:
        self.bar.close()
