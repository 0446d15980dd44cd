"""The self-play budget pilot's rule (records/tuning/selfplay_budget_pilot.md), applied to its runs.

    .venv/bin/python scripts/selfplay_budget_pilot.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR holds a ``metrics.csv`` of a self-play run on stag_hunt_in_the_matrix__repeated with
tests every 100k steps (sampled actions, the Melting Pot default). At each window end B (the env steps of an evaluation, from the third
on) a seed is *clearly above random play* when the mean of its evaluations at B-200k, B-100k and B
exceeds random play's return by at least ``--z`` (2) standard errors of the difference: its own
standard error from the three evaluations' episodes (their means and population standard
deviations, pooled) and random play's (``--random-se``). The budget is the smallest B at which
every run is clearly above random play at B and at every later window end they all reached.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

RANDOM_MEAN = 3.35  # three runs of scripts/random_play_return.py, 32 episodes each: 3.05, 3.71, 3.28
RANDOM_SE = 0.23  # of the 96-episode mean (per-episode sd about 2.3)
WINDOW = 3


def evaluations(run_dir: Path) -> list[tuple[int, float, float, int]]:
    """(env steps, mean, population std, episodes) of every evaluation, in order."""
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("test_return_mean")]
    return [
        (int(r["env_steps"]), float(r["test_return_mean"]), float(r["test_return_std"]), int(r["test_episodes"]))
        for r in rows
    ]


def window(evals: list[tuple[int, float, float, int]]) -> tuple[float, float]:
    """(mean, standard error) of the episodes of ``evals`` pooled (equal episode counts)."""
    n = sum(e[3] for e in evals)
    mean = sum(e[1] * e[3] for e in evals) / n
    # total variance = mean within-evaluation variance + variance of the evaluation means
    var = sum(e[3] * (e[2] ** 2 + (e[1] - mean) ** 2) for e in evals) / n
    return mean, math.sqrt(var / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--random-mean", type=float, default=RANDOM_MEAN)
    parser.add_argument("--random-se", type=float, default=RANDOM_SE)
    parser.add_argument("--z", type=float, default=2.0)
    args = parser.parse_args()
    per_run: dict[str, dict[int, tuple[float, float, bool]]] = {}
    for run in args.runs:
        evals = evaluations(run)
        table = {}
        for i in range(WINDOW - 1, len(evals)):
            mean, se = window(evals[i - WINDOW + 1 : i + 1])
            z = (mean - args.random_mean) / math.hypot(se, args.random_se)
            table[evals[i][0] // 100_000 * 100_000] = (mean, se, z >= args.z)
        per_run[run.name] = table
    ends = sorted(set.intersection(*(set(t) for t in per_run.values())))
    print("window end | " + " | ".join(f"{name}: mean (s.e.) above?" for name in per_run))
    for b in ends:
        cells = [f"{t[b][0]:.2f} ({t[b][1]:.2f}) {'yes' if t[b][2] else 'no'}" for t in per_run.values()]
        print(f"{b / 1e6:.1f}M | " + " | ".join(cells))
    budget = next(
        (b for i, b in enumerate(ends) if all(t[e][2] for t in per_run.values() for e in ends[i:])),
        None,
    )
    print(
        f"budget: {budget / 1e6:.1f}M env steps"
        if budget is not None
        else f"no window end up to {ends[-1] / 1e6 if ends else 0:.1f}M qualifies"
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
