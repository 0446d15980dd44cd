"""Read a suite directory (layout: the run-store contract, see suites/) into tidy pandas tables.

``collect(suite_dir)`` returns a :class:`SuiteData` with

* ``runs``: one row per table cell a run fills (spec fields, status, budget, final score): a run
  directory normally fills one (group, label) cell, but the orchestrator stores a training shared by
  several cells once, listing them in spec.json's ``memberships`` (e.g. the default ddn in the main
  table and as the reference column of the ablations);
* ``evals``: one row per evaluation of every run directory (identifying columns + metrics.csv),
* ``crossplay``: one row per cross-play evaluation of a focal policy run (its ``crossplay.json``,
  written by suites/crossplay_phase.py): the focal per-capita return per co-player kind (``kind``: round
  robin, held-out checkpoints, uniform random, self-play; ``coplayer_score``: the mean over the
  unseen kinds), or on a Melting Pot scenario with DeepMind's bots, and which population that was,

plus each run's provenance and the problems met on the way (a corrupt run directory is reported,
never fatal: a partial or damaged suite still renders).

A run's score: the mean of its last evaluations of the family's metric in metrics.csv (win rate,
test return), except for BiDist's metric, the focal per-capita return against held-out co-players,
which only cross-play measures: such a run is scored by its crossplay.json (NaN until evaluated) and
its metrics.csv gives the self-play learning curve (``test_return_mean``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

# The table group of a run whose spec names none: the methods' main comparison. The run-store
# contract's value (suites.manifest.MAIN_GROUP; reports read stores without importing suites, and
# tests/reports/test_tables_and_claims.py checks that the two agree).
MAIN_GROUP = "main"
# Where the cross-play phase writes the floor rows' evaluations: <suite>/floor/<id>/ with spec.json and
# crossplay.json (suites.crossplay_worker.FLOOR_DIR; the same test checks it).
FLOOR_DIR = "floor"

# A run's final score is the mean of its last FINAL_EVALS greedy evaluations (docs/evaluation.md, "Scores").
FINAL_EVALS = 3


@dataclass(frozen=True)
class Metric:
    column: str  # column of metrics.csv (or field of crossplay.json)
    name: str  # how tables call it
    is_rate: bool  # a fraction in [0, 1] (printed as a percentage)
    source: str = "metrics"  # "metrics": metrics.csv; "crossplay": crossplay.json
    curve: str | None = None  # the metrics.csv column of the learning curve, when not ``column``

    @property
    def curve_column(self) -> str:
        return self.curve or self.column


WIN_RATE = Metric("test_win_rate", "test win rate", True)
TEST_RETURN = Metric("test_return_mean", "mean test return", False)
FOCAL_RETURN = Metric(
    "focal_per_capita_return", "focal per-capita return", False, source="crossplay", curve="test_return_mean"
)
CROSSPLAY = "crossplay.json"

# What a family is scored by (docs/evaluation.md).
FAMILY_METRIC: dict[str, Metric] = {
    "smac": WIN_RATE,
    "smax": WIN_RATE,
    "predator_prey": TEST_RETURN,
    "matrix_game": TEST_RETURN,
    "meltingpot": FOCAL_RETURN,
}

RUN_COLUMNS = [
    "run_id",
    "suite",
    "paper",
    "family",
    "scenario",
    "algorithm",
    "label",
    "group",
    "seed",
    "state",
    "attempts",
    "error",
    "env_steps_budget",
    "eval_interval",
    "eval_episodes",
    "overrides",
    "env_options",
    "n_evals",
    "last_env_steps",
    "metric",
    "final_score",
    "crossplay_state",
    "crossplay_error",
    "crossplay_unplayed",
]
# crossplay.json evaluation kinds (suites/crossplay_phase.py, marl/policy/crossplay.py): one per
# co-player kind (the co-player table's columns) and the score over the unseen kinds.
COPLAYER_KINDS = ("round_robin", "heldout", "random", "self_play")
SCORE_KIND = "coplayer_score"
# The focal run's own columns, which every one of its cross-play rows repeats.
CROSSPLAY_RUN_COLUMNS = (
    "run_id",
    "paper",
    "family",
    "scenario",
    "algorithm",
    "label",
    "group",
    "seed",
    "state",
    "env_steps_budget",
)
CROSSPLAY_COLUMNS = [
    *CROSSPLAY_RUN_COLUMNS,
    "kind",
    "eval_scenario",
    "eval_state",
    "reason",
    "population_kind",
    "value",
    "value_sem",  # standard error of the value over its episodes
    "episodes",
    "n_focal",
    "members",
    "n_members",
    "n_members_expected",
]


def metric_for(family: str) -> Metric:
    return FAMILY_METRIC.get(family, TEST_RETURN)


def run_metric(paper: str | None, family: str) -> Metric:
    """What a run is scored by: BiDist's runs by the focal per-capita return in cross-play, whatever
    the family (its suites may use SMAX or matrix games for quick checks); others by their family's."""
    return FOCAL_RETURN if paper == "bidist" else metric_for(family)


@dataclass
class SuiteData:
    suite_dir: Path
    name: str
    runs: pd.DataFrame
    evals: pd.DataFrame
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    crossplay: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CROSSPLAY_COLUMNS))
    # The floor rows: a uniform-random focal player on each scenario's partner schedule (FLOOR_DIR).
    floor: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CROSSPLAY_COLUMNS))
    manifest: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def run_dirs(self) -> pd.DataFrame:
        """One row per run directory (runs filling several cells appear once)."""
        return self.runs.drop_duplicates("run_id")

    @property
    def done(self) -> pd.DataFrame:
        """Finished runs with at least one evaluation: the only ones that enter scores."""
        return self.runs[(self.runs["state"] == "done") & (self.runs["n_evals"] > 0)]

    def done_evals(self) -> pd.DataFrame:
        return self.evals[self.evals["run_id"].isin(self.done["run_id"])]


def _read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def final_score(values: pd.Series | np.ndarray, last: int = FINAL_EVALS) -> float:
    """Mean of the last ``last`` evaluations (fewer if the run has fewer)."""
    values = np.asarray(values, dtype=float)
    return float(np.mean(values[-last:])) if len(values) else float("nan")


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def unplayed_entries(record: dict[str, Any] | None) -> int:
    """Scheduled co-player episodes a crossplay.json skipped because their member had not finished
    (``skipped_unavailable``; own-algorithm skips are by design). Nonzero: the evaluation was against
    an incomplete population, so it is not the common schedule every focal run must meet."""
    if not isinstance(record, dict):
        return 0
    return sum(
        int(ev.get("skipped_unavailable") or 0)
        for ev in record.get("evaluations") or []
        if isinstance(ev, dict) and ev.get("kind") in COPLAYER_KINDS
    )


def _crossplay_rows(record: dict[str, Any], row: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluation of a crossplay.json (held-out population or bot scenario): done, failed
    or unavailable here (``eval_state``; only done ones have a value). Against an incomplete
    population (:func:`unplayed_entries`), the co-player kinds and the score are ``incomplete``."""
    out = []
    expected = record.get("population_expected")
    incomplete = unplayed_entries(record) > 0
    for ev in record.get("evaluations") or []:
        if not isinstance(ev, dict):
            continue
        members = ev.get("population") or []
        state = ev.get("state")
        if incomplete and state == "done" and ev.get("kind") in (*COPLAYER_KINDS, SCORE_KIND):
            state = "incomplete"
        out.append(
            {
                **{k: row[k] for k in CROSSPLAY_RUN_COLUMNS},
                "kind": ev.get("kind"),
                "eval_scenario": ev.get("scenario", row["scenario"]),
                "eval_state": state,
                "reason": ev.get("reason") or ev.get("error"),
                "population_kind": ev.get("population_kind"),
                "value": _number(ev.get("focal_per_capita_return")),
                "value_sem": _number(ev.get("focal_per_capita_return_sem")),
                "episodes": ev.get("episodes"),
                "n_focal": ev.get("n_focal"),
                "members": json.dumps(
                    [{k: m.get(k) for k in ("algorithm", "label", "seed", "run_id") if k in m} for m in members]
                ),
                "n_members": len(members),
                "n_members_expected": expected if members else None,
            }
        )
    return out


def _load_run(
    run_dir: Path, problems: list[str]
) -> tuple[list[dict[str, Any]], pd.DataFrame, dict[str, Any], list[dict[str, Any]]] | None:
    """(one row per table cell the run fills, its metrics, its provenance, its cross-play rows);
    None if unreadable."""
    try:
        spec = _read_json(run_dir / "spec.json")
    except (OSError, ValueError) as exc:
        problems.append(f"{run_dir.name}: unreadable spec.json ({exc.__class__.__name__}: {exc}); run skipped")
        return None
    try:
        status = _read_json(run_dir / "status.json")
    except FileNotFoundError:
        status = {"state": "pending", "attempts": 0, "error": None}
    except (OSError, ValueError) as exc:
        problems.append(f"{run_dir.name}: unreadable status.json ({exc}); treated as failed")
        status = {"state": "failed", "attempts": 0, "error": f"unreadable status.json: {exc}"}
    metrics = pd.DataFrame()
    if (run_dir / "metrics.csv").exists():
        try:
            metrics = pd.read_csv(run_dir / "metrics.csv")
        except (OSError, ValueError, pd.errors.EmptyDataError) as exc:
            problems.append(f"{run_dir.name}: unreadable metrics.csv ({exc}); no evaluations used")
    provenance: dict[str, Any] = {}
    if (run_dir / "provenance.json").exists():
        try:
            provenance = _read_json(run_dir / "provenance.json")
        except (OSError, ValueError) as exc:
            problems.append(f"{run_dir.name}: unreadable provenance.json ({exc})")
    crossplay: dict[str, Any] | None = None
    if (run_dir / CROSSPLAY).exists():
        try:
            crossplay = _read_json(run_dir / CROSSPLAY)
        except (OSError, ValueError) as exc:
            problems.append(f"{run_dir.name}: unreadable {CROSSPLAY} ({exc}); its cross-play is not used")

    budget = spec.get("budget") or {}
    family = spec.get("family", "?")
    metric = run_metric(spec.get("paper"), family)
    curve = metric.curve_column
    has_metric = not metrics.empty and curve in metrics
    if not metrics.empty and not has_metric:
        problems.append(f"{run_dir.name}: metrics.csv has no column {curve!r}")
    unplayed = unplayed_entries(crossplay)
    crossplay_state = (crossplay or {}).get("state")
    if metric.source == "crossplay":
        value = (crossplay or {}).get(metric.column)
        score = float(value) if isinstance(value, (int, float)) and not unplayed else float("nan")
    else:
        score = final_score(metrics[metric.column]) if has_metric else float("nan")
    row = {
        "run_id": spec.get("id", run_dir.name),
        "suite": spec.get("suite"),
        "paper": spec.get("paper"),
        "family": family,
        "scenario": spec.get("scenario", "?"),
        "algorithm": spec.get("algorithm", "?"),
        "label": spec.get("label") or spec.get("algorithm", "?"),
        "group": spec.get("group") or MAIN_GROUP,
        "seed": spec.get("seed"),
        "state": status.get("state", "pending"),
        "attempts": status.get("attempts", 0),
        "error": status.get("error"),
        "env_steps_budget": budget.get("env_steps"),
        "eval_interval": budget.get("eval_interval"),
        "eval_episodes": budget.get("eval_episodes"),
        "overrides": json.dumps(spec.get("overrides") or {}, sort_keys=True),
        "env_options": json.dumps(spec.get("env_options") or {}, sort_keys=True),
        "n_evals": len(metrics) if has_metric else 0,
        "last_env_steps": int(metrics["env_steps"].iloc[-1]) if has_metric and "env_steps" in metrics else 0,
        "metric": metric.column,
        "final_score": score,
        "crossplay_state": "incomplete" if unplayed and crossplay_state == "done" else crossplay_state,
        "crossplay_error": (crossplay or {}).get("error"),
        "crossplay_unplayed": unplayed,
    }
    # The orchestrator stores one run for every (group, label) cell with the same training.
    cells = [(m.get("group"), m.get("label")) for m in spec.get("memberships") or [] if isinstance(m, dict)]
    cells = list(dict.fromkeys(cells)) or [(row["group"], row["label"])]
    rows = [{**row, "group": g or MAIN_GROUP, "label": lb or row["algorithm"]} for g, lb in cells]
    played = [x for r in rows for x in _crossplay_rows(crossplay, r)] if isinstance(crossplay, dict) else []
    return rows, metrics, provenance, played


def _load_floor(floor_dir: Path, problems: list[str]) -> list[dict[str, Any]]:
    """The cross-play rows of every floor evaluation (one per scenario) that has finished."""
    out: list[dict[str, Any]] = []
    for d in sorted(p for p in floor_dir.glob("*") if p.is_dir()) if floor_dir.is_dir() else []:
        try:
            spec, record = _read_json(d / "spec.json"), _read_json(d / CROSSPLAY)
        except FileNotFoundError:
            continue  # not evaluated yet
        except (OSError, ValueError) as exc:
            problems.append(f"floor {d.name}: unreadable ({exc.__class__.__name__}: {exc}); its row is not shown")
            continue
        if not isinstance(record, dict) or record.get("state") != "done":
            continue
        row = {
            "run_id": spec.get("id", d.name),
            "paper": spec.get("paper"),
            "family": spec.get("family", "?"),
            "scenario": spec.get("scenario", "?"),
            "algorithm": spec.get("algorithm"),
            "label": spec.get("label") or "uniform random (floor)",
            "group": spec.get("group"),
            "seed": spec.get("seed"),
            "state": "done",
            "env_steps_budget": None,
        }
        out.extend(_crossplay_rows(record, row))
    return out


def index_entries(records: Path) -> list[dict[str, Any]]:
    """Every suite entry of ``<records>/index.yaml`` (suites.records writes it); none without one."""
    index = records / "index.yaml"
    if not index.is_file():
        return []
    return (yaml.safe_load(index.read_text()) or {}).get("suites") or []


def collect(suite_dir: str | Path) -> SuiteData:
    suite_dir = Path(suite_dir)
    problems: list[str] = []
    manifest = None
    if (suite_dir / "manifest.yaml").exists():
        try:
            manifest = yaml.safe_load((suite_dir / "manifest.yaml").read_text())
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"manifest.yaml unreadable ({exc})")
    rows, frames, provenance, played = [], [], {}, []
    runs_dir = suite_dir / "runs"
    for run_dir in sorted(p for p in runs_dir.glob("*") if p.is_dir()) if runs_dir.is_dir() else []:
        loaded = _load_run(run_dir, problems)
        if loaded is None:
            continue
        cells, metrics, prov, cross = loaded
        rows.extend(cells)
        played.extend(cross)
        run = cells[0]
        provenance[run["run_id"]] = prov
        if run["n_evals"]:
            ident = {k: run[k] for k in ("run_id", "family", "scenario", "algorithm", "seed")}
            frames.append(metrics.assign(eval_index=np.arange(len(metrics)), **ident))
    floor = _load_floor(suite_dir / FLOOR_DIR, problems)
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    evals = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["run_id", "family", "scenario", "algorithm", "seed", "eval_index", "env_steps"])
    )
    name = (manifest or {}).get("name") if isinstance(manifest, dict) else None
    if not name and not runs.empty and runs["suite"].notna().any():
        name = str(runs["suite"].dropna().iloc[0])
    return SuiteData(
        suite_dir=suite_dir,
        name=name or suite_dir.name,
        runs=runs,
        evals=evals,
        provenance=provenance,
        manifest=manifest,
        problems=problems,
        crossplay=pd.DataFrame(played, columns=CROSSPLAY_COLUMNS),
        floor=pd.DataFrame(floor, columns=CROSSPLAY_COLUMNS),
    )
