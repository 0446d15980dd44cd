"""The reference results: this project's own runs of the papers' comparisons at the papers' budgets,
committed as compact records under ``records/reference/<suite>/`` (suites/records.py), judged by
the same evidence rules as any suite (reports/claims.py). Every report shows, per claim, the
paper's number, the reference result and the suite's own verdict side by side.

Which reference suite speaks for a claim: the one whose verdict is most decided (reproduced / not
reproduced before inconclusive), then the one with the most finished seeds. Until the reference
campaign has committed a suite that touches a claim, its reference cell says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from reports.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, REPRODUCED, Verdict, evaluate_claims
from reports.collect import collect, index_entries, metric_for
from reports.configuration import absent_means, class_defaults
from reports.paper import PaperNumbers

RECORDS = Path(__file__).resolve().parents[1] / "records"
_RANK = {REPRODUCED: 0, NOT_REPRODUCED: 0, INCONCLUSIVE: 1, NOT_RUN: 2}


@dataclass
class ReferenceResult:
    suite: str  # the reference suite (records/reference/<suite>)
    verdict: Verdict
    commits: list[str] = field(default_factory=list)
    cpus: list[str] = field(default_factory=list)
    finished: str = ""  # date of its last finished run

    @property
    def seeds(self) -> int:
        """The fewest finished seeds over the claim's arms, over the rows judged."""
        counts = [a.n for row in self.verdict.rows for a in row.evidence.arms.values()]
        return min(counts) if counts else 0

    @property
    def provenance(self) -> str:
        commit = ", ".join(c[:7] for c in self.commits) or "unknown commit"
        cpu = "; ".join(self.cpus) or "unknown CPU"
        return f"records/reference/{self.suite}: commit {commit}, {cpu}" + (
            f", {self.finished[:10]}" if self.finished else ""
        )


def reference_suites(records: Path = RECORDS) -> list[dict]:
    """The index entries of the committed reference suites."""
    return [e for e in index_entries(records) if e.get("kind") == "reference"]


def reference_results(numbers: PaperNumbers, reps: int, records: Path = RECORDS) -> dict[str, ReferenceResult]:
    """Claim id -> the reference result that speaks for it (claims no reference suite touches are absent)."""
    best: dict[str, ReferenceResult] = {}
    for entry in reference_suites(records):
        data = collect(records / entry["path"])
        for verdict in evaluate_claims(data, numbers, reps):
            if verdict.verdict == NOT_RUN:
                continue
            candidate = ReferenceResult(
                entry["suite"],
                verdict,
                list(entry.get("commits") or []),
                list(entry.get("cpus") or []),
                str(entry.get("last_finished") or ""),
            )
            current = best.get(verdict.claim.id)
            if current is None or (
                (_RANK[verdict.verdict], -candidate.seeds) < (_RANK[current.verdict.verdict], -current.seeds)
            ):
                best[verdict.claim.id] = candidate
    return best


# The reproducibility check: a suite's runs that are the first steps of reference runs ----------


def _config_in_force(algorithm: str, config: dict) -> dict:
    """``config`` without the fields at their class default. A field added to a config keeps the
    old behaviour at its default (the project's rule for new choices), so a run from before the
    field existed (no such key in its provenance) and a run with the field at its default ran
    the same configuration; the exceptions (the class's ``ABSENT_MEANS``) are filled in with what
    such a run ran. A field away from today's default (a default that changed, or an override)
    stays and must match."""
    defaults = class_defaults(algorithm)
    return {
        k: v
        for k, v in {**absent_means(algorithm), **config}.items()
        if not (k in defaults and json.dumps(v, default=str) == json.dumps(defaults[k], default=str))
    }


def _same_configuration(spec: dict, provenance: dict | None = None) -> str:
    """What must match for a run to be the first steps of a reference run: everything that shapes
    its training but not the suite it belongs to or how long it trains. The learner's config is the
    resolved one in force (provenance.json: a default changed between two commits is a different
    configuration, however the overrides were spelled), else the spec's overrides. The evaluation
    schedule must match, or no two evaluations line up, and so must the checkpoint interval: a
    checkpoint stores the in-flight episodes truncated and re-seeds the training environments
    (marl/value/trainer.py), so runs that checkpoint at other steps part there."""
    budget = spec.get("budget") or {}
    key = {k: v for k, v in spec.items() if k in ("paper", "family", "scenario", "env_options", "algorithm", "seed")}
    config = (provenance or {}).get("config")
    key["config"] = (
        _config_in_force(str(spec.get("algorithm")), config)
        if isinstance(config, dict)
        else {"overrides": spec.get("overrides")}
    )
    key["schedule"] = {k: budget.get(k) for k in ("eval_interval", "eval_episodes", "checkpoint_interval")}
    return json.dumps(key, sort_keys=True, default=str)


def _platform(provenance: dict) -> tuple[str, str]:
    packages = provenance.get("packages") or {}
    return str(provenance.get("cpu") or ""), str(packages.get("torch") or provenance.get("torch") or "")


@dataclass
class ReproCheck:
    run_id: str
    label: str
    scenario: str
    seed: int
    reference_id: str | None = None
    reference_suite: str = ""
    compared: int = 0  # evaluations at the same env step in both
    equal: int = 0  # of those, equal to the printed precision (metrics.csv's text)
    first_divergence: tuple[int, str, str] | None = None  # (env steps, yours, reference)
    in_band: int = 0  # diverged evaluations inside the reference seeds' [min, max] at that step
    diverged: int = 0
    same_platform: bool = False  # same CPU model and torch version as the reference run
    missing_column: str | None = None  # the compared column is absent from one of the two metrics.csv

    @property
    def text(self) -> str:
        if self.reference_id is None:
            return "no reference run has this configuration"
        where = f"reference run {self.reference_id} ({self.reference_suite})"
        if self.missing_column:
            return f"{where}: cannot compare (no {self.missing_column} column in both metrics.csv)"
        if not self.compared:
            return f"{where}: no evaluation at a common env step yet"
        if self.first_divergence is None:
            same = "" if self.same_platform else " (on another CPU or torch version: equality was not expected)"
            return f"identical to {where} at all {self.compared} evaluations to the printed precision{same}"
        step, yours, ref = self.first_divergence
        expected = (
            "a divergence on the same CPU and torch version: a change of code or of a dependency"
            if self.same_platform
            else "another CPU or torch version, so bitwise equality is not expected"
        )
        return (
            f"equal to {where} at {self.equal} of {self.compared} evaluations; first divergence at "
            f"{step:,} env steps (yours {yours}, reference {ref}; {expected}); {self.in_band} of "
            f"{self.diverged} diverging evaluations lie within the reference seeds' range"
        )


def _read_run(run_dir: Path) -> tuple[dict, dict, pd.DataFrame] | None:
    """(spec, provenance, metrics as text) of a run dir, or None when one of them is unreadable;
    metrics stay text so values compare at the printed precision."""
    try:
        spec = json.loads((run_dir / "spec.json").read_text())
        prov_path = run_dir / "provenance.json"
        prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
        metrics = pd.read_csv(run_dir / "metrics.csv", dtype=str)
    except (OSError, ValueError):
        return None
    return spec, prov, metrics


def _reference_runs(records: Path) -> list[tuple[str, dict, dict, pd.DataFrame]]:
    """(suite, spec, provenance, metrics frame) of every committed reference run."""
    out = []
    for entry in reference_suites(records):
        runs = records / entry["path"] / "runs"
        for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
            if (run := _read_run(run_dir)) is not None:
                spec, prov, metrics = run
                out.append((entry["suite"], {**spec, "id": run_dir.name}, prov, metrics))
    return out


def reproducibility(suite_dir: Path, records: Path = RECORDS) -> list[ReproCheck]:
    """Each run of the suite against the reference run with its configuration (seed included), on
    the score column of its family: equal to the printed precision, or where it first differs and
    whether it stays within the reference seeds' range."""
    if Path(suite_dir).resolve().is_relative_to((records / "reference").resolve()):
        return []  # the reference itself
    refs = _reference_runs(records)
    if not refs:
        return []  # nothing to compare with
    by_config = {_same_configuration(spec, prov): (suite, spec, prov, m) for suite, spec, prov, m in refs}
    # The seed band: reference runs that differ only by seed.
    bands: dict[str, list] = {}
    for _, spec, prov, m in refs:
        bands.setdefault(_same_configuration({**spec, "seed": None}, prov), []).append(m)
    checks = []
    runs = Path(suite_dir) / "runs"
    for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
        if (run := _read_run(run_dir)) is None:
            continue
        spec, prov, mine = run
        check = ReproCheck(run_dir.name, spec.get("label", ""), spec.get("scenario", ""), int(spec.get("seed", -1)))
        checks.append(check)
        match = by_config.get(_same_configuration(spec, prov))
        if match is None:
            continue
        suite, ref_spec, ref_prov, ref = match
        check.reference_id, check.reference_suite = ref_spec["id"], suite
        check.same_platform = _platform(prov) == _platform(ref_prov) and all(_platform(prov))
        # The evaluations metrics.csv holds (a Melting Pot run's score comes from cross-play, but its
        # test returns are compared step by step all the same).
        column = metric_for(spec["family"]).curve_column
        if column not in mine or column not in ref:
            check.missing_column = column
            continue
        ref_at = dict(zip(ref["env_steps"], ref[column]))
        band_frames = bands.get(_same_configuration({**spec, "seed": None}, prov), [])
        for step, value in zip(mine["env_steps"], mine[column]):
            if step not in ref_at:
                continue
            check.compared += 1
            if value == ref_at[step]:
                check.equal += 1
                continue
            check.diverged += 1
            if check.first_divergence is None:
                check.first_divergence = (int(float(step)), value, ref_at[step])
            others = [float(v) for f in band_frames for s, v in zip(f["env_steps"], f[column]) if s == step]
            if others and min(others) <= float(value) <= max(others):
                check.in_band += 1
    return checks
