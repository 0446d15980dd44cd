"""Export finished runs in marl-eval's raw-data JSON format (instadeepai/marl-eval, README "Data
Structure for Raw Experiment data"), so users can feed the results to marl-eval or rliable:

    {env: {task: {algorithm: {run: {"step_<i>": {"step_count": int, metric: [float], ...},
                                    ..., "absolute_metrics": {metric: [float], ...}}}}}}

* env = the environment family (smac, smax, predator_prey, ...), task = the scenario, algorithm =
  the run label (a column of our tables, e.g. ddn_raw_state); all lower-cased, because marl-eval
  lower-cases the names it is asked for before looking them up;
* run = "seed_<seed>"; step_<i> = the i-th greedy evaluation, step_count = its env steps;
* metrics: "win_rate" (SMAC-like families) and "return" (every family), each a one-element list
  (we store per-evaluation means, which marl-eval accepts for rate-like metrics);
* absolute_metrics holds our final score (mean of the last 3 evaluations), not marl-eval's
  re-evaluation of the best policy with 10x the episodes, which our trainers do not run.

marl-eval needs equal numbers of runs and evaluations across algorithms of one environment; a
partial suite exports what finished and the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from marl.run_io import atomic_write_text
from reports.collect import FINAL_EVALS, SuiteData, final_score, metric_for

METRIC_COLUMNS = {"win_rate": "test_win_rate", "return": "test_return_mean"}


def to_marl_eval(data: SuiteData) -> dict[str, Any]:
    out: dict[str, Any] = {}
    evals = data.done_evals()
    for run in data.done.itertuples():
        if run.group == "heldout":  # co-players of the cross-play evaluation, not an algorithm's results
            continue
        rows = evals[evals["run_id"] == run.run_id].sort_values("eval_index")
        metrics = {
            name: col
            for name, col in METRIC_COLUMNS.items()
            if col in rows and (name != "win_rate" or metric_for(run.family).is_rate)
        }
        record: dict[str, Any] = {}
        for i, row in enumerate(rows.itertuples()):
            record[f"step_{i}"] = {
                "step_count": int(row.env_steps),
                **{name: [float(getattr(row, col))] for name, col in metrics.items()},
            }
        record["absolute_metrics"] = {name: [final_score(rows[col], FINAL_EVALS)] for name, col in metrics.items()}
        task = out.setdefault(str(run.family).lower(), {}).setdefault(str(run.scenario).lower(), {})
        task.setdefault(str(run.label).lower(), {})[f"seed_{run.seed}"] = record
    return out


def write_marl_eval(data: SuiteData, path: str | Path) -> Path:
    path = Path(path)
    # Key order matters to marl-eval (evaluation steps in order, absolute_metrics last): no sort_keys.
    atomic_write_text(path, json.dumps(to_marl_eval(data), indent=1) + "\n")
    return path
