"""scripts/selfplay_budget_pilot.py: the pre-registered rule that chooses bidist_stag_hunt's budget
(records/tuning/selfplay_budget_pilot.md), on hand-made metrics with hand-computed numbers."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "selfplay_budget_pilot.py"


def _module():
    spec = importlib.util.spec_from_file_location("selfplay_budget_pilot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path, name: str, means: list[float], std: float = 2.0) -> Path:
    run = tmp_path / name
    run.mkdir()
    lines = ["env_steps,test_return_mean,test_return_std,test_episodes,entropy"]
    lines += [f"{i * 100_000 + (800 if i % 2 else 0)},{m},{std},16," for i, m in enumerate(means)]
    lines.insert(2, "50000,,,,1.9")  # a training-only row: no test, ignored
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


def test_the_window_pools_the_episodes_of_three_evaluations():
    window = _module().window
    # three evaluations of 16 episodes: means 2, 4, 6, sd 2 each; pooled mean 4, total variance
    # 4 (within) + 8/3 (between) = 20/3, s.e. sqrt(20/3 / 48)
    mean, se = window([(0, 2.0, 2.0, 16), (1, 4.0, 2.0, 16), (2, 6.0, 2.0, 16)])
    assert mean == pytest.approx(4.0) and se == pytest.approx(math.sqrt(20 / 3 / 48))


def test_the_budget_is_the_first_window_end_from_which_every_seed_stays_above(tmp_path):
    # s.e. of a window of constant means 5.0 (sd 2): 2/sqrt(48) = 0.289; with random play's 0.23 the
    # difference's s.e. is 0.369, so 2 s.e. above 3.35 is 4.09: three 5.0s are above, and a window
    # holding a 1.0 is not (5, 5, 1: mean 3.67).
    high, low = 5.0, 1.0
    a = _run(tmp_path, "a", [3.0, 3.0, high, high, high, low, high, high, high, high])  # a lucky early window
    b = _run(tmp_path, "b", [3.0, 3.0, 3.0, 3.0, high, high, high, high, high, high])
    out = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True, check=True)
    rows = {line.split(" | ")[0]: line for line in out.stdout.splitlines()[1:] if " | " in line}
    assert "no" in rows["0.6M"].split(" | ")[1]  # a: the windows holding its 1.0
    assert out.stdout.strip().splitlines()[-1] == "budget: 0.8M env steps"
    # a window end that is above for every seed but followed by one that is not never chooses
    c = _run(tmp_path, "c", [high] * 6 + [low, low, low, high])
    out = subprocess.run([sys.executable, str(SCRIPT), str(c)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "no window end up to 0.9M qualifies"
