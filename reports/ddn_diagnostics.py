"""DDN's teacher-student instruments: the report's view of why a student holds or loses its win rate.

Every DDN run logs, beside the student's greedy test (the evaluated, deployed policy), the teacher's
own greedy test on the same episodes (``teacher_test_*``) and per-update statistics of the pair
(algorithms/ddn.py, ``Learner.instruments`` and ``clip_gradients``). For each DDN cell (scenario x
label) with those columns this module draws one figure of four panels, median over seeds with a 95%
bootstrap band:

1. student vs teacher greedy test score (win rate on SMAC-like maps, return elsewhere);
2. greedy agreement of student and teacher on live agents' available actions (replay batches);
3. the teacher's Q_tot of the taken actions against the realised discounted return (its
   overestimation is the gap);
4. gradient norms per network group (teacher, mixer, student, IDM), before clipping, log scale.

Runs from before the instruments existed have none of these columns and are skipped.

Beside the figure, on win-rate tasks, each finished seed is checked against the bar a student must
meet to *hold* its win rate (the DDN issue's, scaled to the budget): the mean greedy test win rate
of the evaluations in the last 10% of the budget is at least 0.9, and no evaluation in the last
25% is below 0.7 (at 2M steps: the evaluations from 1.8M, and those after 1.5M).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.collect import SuiteData, metric_for  # noqa: E402
from reports.stats import curve_band  # noqa: E402

DPI = 110
HOLD_MEAN, HOLD_MEAN_FROM = 0.9, 0.9  # mean of the evaluations from 90% of the budget >= 0.9
HOLD_FLOOR, HOLD_FLOOR_AFTER = 0.7, 0.75  # and none after 75% of the budget below 0.7
TEACHER_COLUMNS = {"test_win_rate": "teacher_test_win_rate", "test_return_mean": "teacher_test_return_mean"}
GRAD_GROUPS = ("teacher", "mixer", "student", "idm")


@dataclass
class HoldCheck:
    """One seed's student against the hold bar; ``holds`` is None for a run short of its budget."""

    seed: int
    tail_mean: float  # mean test win rate of the evaluations from HOLD_MEAN_FROM of the budget
    n_below: int  # evaluations after HOLD_FLOOR_AFTER of the budget below HOLD_FLOOR
    n_after: int  # evaluations after HOLD_FLOOR_AFTER of the budget
    lowest: float  # the lowest of those
    holds: bool | None


def hold_check(seed: int, env_steps: np.ndarray, win_rate: np.ndarray, budget: float) -> HoldCheck:
    """The hold bar on one run's evaluations (raw env steps, win rates in [0, 1])."""
    ok = np.isfinite(win_rate)
    env_steps, win_rate = env_steps[ok], win_rate[ok]
    tail = win_rate[env_steps >= HOLD_MEAN_FROM * budget]
    after = win_rate[env_steps > HOLD_FLOOR_AFTER * budget]
    finished = len(env_steps) > 0 and env_steps.max() >= budget and len(tail) > 0
    tail_mean = float(tail.mean()) if len(tail) else float("nan")
    n_below = int((after < HOLD_FLOOR).sum())
    holds = bool(tail_mean >= HOLD_MEAN and n_below == 0) if finished else None
    lowest = float(after.min()) if len(after) else float("nan")
    return HoldCheck(int(seed), tail_mean, n_below, int(len(after)), lowest, holds)


def hold_checks(data: SuiteData, run_ids: list[str], column: str) -> list[HoldCheck]:
    """The hold bar per seed of these runs, judged on the budget in each run's spec."""
    budgets = data.run_dirs.set_index("run_id")["env_steps_budget"]
    out = []
    for run_id, ev in data.evals[data.evals["run_id"].isin(run_ids)].groupby("run_id", sort=False):
        budget = budgets.get(run_id)
        if column not in ev or budget is None or not np.isfinite(float(budget)):
            continue
        steps, values = ev["env_steps"].to_numpy(dtype=float), ev[column].to_numpy(dtype=float)
        out.append(hold_check(ev["seed"].iloc[0], steps, values, float(budget)))
    return sorted(out, key=lambda h: h.seed)


@dataclass
class DiagnosticFigure:
    family: str
    scenario: str
    label: str
    n_seeds: int
    caption: str
    png: bytes
    summary: dict[str, float]  # medians over seeds of the last evaluations (for the table beside it)
    holds: list[HoldCheck]  # per seed, on win-rate tasks (empty elsewhere)


def seed_curves(data: SuiteData, run_ids: list[str], column: str) -> pd.DataFrame:
    """Per-seed values of ``column`` on the evaluation grid of these runs (index env steps rounded
    down to the run's eval interval; columns seeds). Empty when no run has the column."""
    ev = data.evals[data.evals["run_id"].isin(run_ids)]
    if ev.empty or column not in ev or ev[column].isna().all():
        return pd.DataFrame()
    interval = data.run_dirs.set_index("run_id")["eval_interval"].reindex(ev["run_id"]).to_numpy(dtype=float)
    interval = np.where(np.isfinite(interval) & (interval > 0), interval, 1.0)
    steps = (np.floor(ev["env_steps"].to_numpy(dtype=float) / interval) * interval).astype(np.int64)
    frame = pd.DataFrame({"step": steps, "seed": ev["seed"].to_numpy(), "value": ev[column].to_numpy(dtype=float)})
    return frame.pivot_table(index="step", columns="seed", values="value", aggfunc="last").sort_index()


def _band(ax, frame: pd.DataFrame, label: str, color: str, scale: float = 1.0, reps: int = 2000, ls: str = "-") -> None:
    frame = frame.dropna(how="all")
    if frame.empty:
        return
    values = frame.to_numpy().T
    med, lo, hi = curve_band(values, reps=reps)
    x = frame.index.to_numpy()
    ax.plot(x, med * scale, color=color, lw=1.5, ls=ls, label=label)
    if values.shape[0] > 1:
        ax.fill_between(x, lo * scale, hi * scale, color=color, alpha=0.18, lw=0)


def _figure(panels: dict[str, dict[str, pd.DataFrame]], title: str, is_rate: bool, reps: int) -> bytes:
    fig, axes = plt.subplots(2, 2, figsize=(10.0, 6.4), dpi=DPI)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    specs = [
        ("test", f"greedy test {'win rate (%)' if is_rate else 'return'}", 100.0 if is_rate else 1.0, False),
        ("agreement", "greedy agreement (live agents)", 1.0, False),
        ("values", "Q_tot (taken) vs realised return", 1.0, False),
        ("grads", "gradient norm before clip", 1.0, True),
    ]
    for ax, (key, ylabel, scale, log) in zip(axes.flat, specs):
        for i, (label, frame) in enumerate(panels.get(key, {}).items()):
            dashed = key == "test" and label.startswith("teacher")
            _band(ax, frame, label, colors[i % len(colors)], scale, reps, ls="--" if dashed else "-")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel("env steps", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 4))
        ax.grid(alpha=0.3)
        if log and ax.lines:
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def ddn_diagnostics(data: SuiteData, reps: int = 2000, last: int = 20) -> list[DiagnosticFigure]:
    """One figure per DDN cell whose runs carry the instruments; ``summary`` holds medians over
    seeds of each run's mean over its last ``last`` evaluations (student and teacher test score,
    agreement, overestimation)."""
    out: list[DiagnosticFigure] = []
    runs = data.run_dirs
    runs = runs[(runs["algorithm"] == "ddn") & (runs["n_evals"] > 0)]
    for (family, scenario, label), cell in runs.groupby(["family", "scenario", "label"], sort=True):
        ids = cell["run_id"].tolist()
        metric = metric_for(family)
        score, teacher_col = metric.column, TEACHER_COLUMNS.get(metric.column)
        student = seed_curves(data, ids, score)
        teacher = seed_curves(data, ids, teacher_col) if teacher_col else pd.DataFrame()
        if teacher.empty:
            continue
        panels = {
            "test": {"student (evaluated)": student, "teacher (on the state)": teacher},
            "agreement": {"argmax student = argmax teacher": seed_curves(data, ids, "greedy_agreement")},
            "values": {
                "teacher Q_tot (taken actions)": seed_curves(data, ids, "q_taken_mean"),
                "realised return (r + r_I)": seed_curves(data, ids, "realised_return_mean"),
            },
            "grads": {g: seed_curves(data, ids, f"grad_norm_{g}") for g in GRAD_GROUPS},
        }
        title = f"DDN teacher and student, {scenario} ({family}), {label}"
        png = _figure(panels, title, metric.is_rate, reps)

        def tail(frame: pd.DataFrame) -> float:
            return float(np.nanmedian(frame.tail(last).mean(axis=0))) if not frame.empty else float("nan")

        summary = {
            "student": tail(student),
            "teacher": tail(teacher),
            "agreement": tail(panels["agreement"]["argmax student = argmax teacher"]),
            "overestimation": tail(seed_curves(data, ids, "teacher_overestimation")),
        }
        caption = (
            f"{label} on {scenario}: median over {student.shape[1]} seed(s) with a 95% bootstrap band. "
            "Top left: the student's greedy test (the policy DDN deploys) and the teacher's own greedy "
            "test on the same episodes, acting on the personalized global state. Top right: how often "
            "their greedy actions agree on the replay batches. Bottom left: the teacher's mixed value "
            "of the taken actions against the realised discounted return of r + r_I (episodes cut by "
            "the time limit closed by the target value); the gap is its overestimation. Bottom right: "
            "gradient norm per network group before clipping."
        )
        holds = hold_checks(data, ids, score) if metric.is_rate else []
        out.append(DiagnosticFigure(family, scenario, label, int(student.shape[1]), caption, png, summary, holds))
    return out
