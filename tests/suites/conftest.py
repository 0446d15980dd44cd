"""Helpers for the suite/orchestrator tests: tiny manifests and reproduce.py as a subprocess."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# Three deterministic Predator-Prey runs of a few seconds each, checkpointed often.
TINY = {
    "name": "tiny",
    "paper": "ddn",
    "budget": {"env_steps": 2000, "eval_interval": 500, "eval_episodes": 4, "checkpoint_interval": 400},
    "seeds": [0, 1, 2],
    "overrides": {"batch_size": 8},
    "scenarios": [{"family": "predator_prey", "scenario": "stag_hunt_small"}],
    "algorithms": [{"name": "qmix"}],
}


def write_manifest(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def reproduce_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "reproduce.py"), *args]


def run_reproduce(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        reproduce_cmd(*args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# Columns that depend on the clock, not on the computation.
TIMING_COLUMNS = ("wall_time", "env_steps_per_s")


def deterministic(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


@pytest.fixture
def tiny_manifest(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "tiny.yaml", TINY)
