"""One verdict per claim of the papers, resting on the claim's pre-registered evidence bar.

The rules are data (``paper_numbers.yaml``: per claim its kind, arms, scenarios, tolerance, and a
bar: minimum seeds per arm, minimum budget, test level, the suites that decide it). Four outcomes:

* **reproduced** / **not reproduced**: only when the bar is met: every arm the claim names (its label
  and all its rivals) has at least ``min_seeds`` finished seeds trained for at least ``min_budget``
  env steps, on every scenario the claim names; then the claim's test decides;
* **inconclusive**: runs exist but the bar is not met; the verdict says exactly what is missing
  ("2 of 5 seeds", "budget 80k of 2M env steps", "not run: opre, rpm") and what the runs so far
  show, as a non-verdict;
* **not run**: no finished run of any of the claim's arms.

Each claim goes through four steps, one function each: :func:`gather_evidence` (per scenario, or per
cross-play row: the seeds' final scores of every arm), :func:`check_bar`, :func:`run_test` (see
reports/stats.py: the paper's number against our median's interval for ``value``; one-sided exact
permutation tests, Holm-adjusted across the rivals, with P(X > Y) and the difference of medians for
``better``/``best``/``lags``) and :func:`phrase`. A SMAC claim is judged on SMAC runs when the suite
has them, otherwise on the SMAX stand-in, and then says so; a BiDist claim (``source: crossplay``) on
the cross-play table, saying which co-players each row used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reports.collect import SuiteData, metric_for
from reports.paper import Bar, Claim, Paper, PaperNumbers
from reports.stats import (
    Difference,
    Improvement,
    OneSidedTest,
    aggregate,
    holm,
    median_difference,
    one_sided_test,
    probability_of_improvement,
)
from reports.tables import FAMILY_NAMES, HELDOUT_GROUP, build_crossplay_table, cell_runs, family_key

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = "reproduced", "not reproduced", "inconclusive", "not run"
OUTCOMES = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN)
MEASURED_ON = {  # what a family's numbers are, as the verdict table says it
    "smac": "SMAC (StarCraft II)",
    "smax": "SMAX stand-in for StarCraft II (JAX re-implementation of the maps)",
}


def fmt_score(value: float, is_rate: bool, digits: int = 1) -> str:
    """Rates as percentages (``digits`` decimals; the papers' numbers keep their own two)."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{100 * value:.{digits}f}%" if is_rate else f"{value:.{digits + 1}f}"


def fmt_diff(value: float, is_rate: bool) -> str:
    """A signed difference: percentage points for rates."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{100 * value:+.1f} pts" if is_rate else f"{value:+.2f}"


def _diff_ci(d: Difference, is_rate: bool) -> str:
    """ "+35.0 pts [+20.0, +47.0]": a difference with its bootstrap interval."""

    def bare(v: float) -> str:
        return fmt_diff(v, is_rate).removesuffix(" pts")

    return f"{fmt_diff(d.value, is_rate)} [{bare(d.lo)}, {bare(d.hi)}]"


def fmt_steps(steps: int | None) -> str:
    if steps is None:
        return "n/a"
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if steps >= div:
            return f"{steps / div:g}{unit}"
    return str(steps)


def fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


# Evidence ----------------------------------------------------------------------------------------


@dataclass
class Arm:
    """One label's finished seeds on one scenario (or cross-play row)."""

    label: str
    values: list[float]  # final scores, one per finished seed
    budgets: list[int]  # the env-step budgets of those runs

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def budget(self) -> int | None:
        """The smallest budget among the runs: the weakest run sets what the evidence is worth."""
        return min(self.budgets) if self.budgets else None


@dataclass
class Evidence:
    """What the suite holds for one claim on one scenario (a cross-play claim: one table row)."""

    scenario: str
    family: str
    is_rate: bool
    arms: dict[str, Arm]  # every arm the claim names, in the claim's order (n = 0 when none finished)
    population: str | None = None  # cross-play: who the co-players were
    trained_on: str | None = None  # cross-play on a Melting Pot scenario: the substrate trained on

    @property
    def substrate(self) -> str:
        return self.trained_on or self.scenario

    @property
    def where(self) -> str:
        return f"{self.scenario} ({FAMILY_NAMES.get(self.family, self.family)}" + (
            f"; vs {self.population})" if self.population else ")"
        )

    @property
    def measured_on(self) -> str:
        base = MEASURED_ON.get(self.family, FAMILY_NAMES.get(self.family, self.family))
        return base + (f"; co-players: {self.population}" if self.population else "")

    @property
    def budgets(self) -> list[int]:
        return sorted({b for a in self.arms.values() for b in a.budgets})


def _arm(label: str, frame: pd.DataFrame) -> Arm:
    finite = frame[np.isfinite(frame["final_score"].astype(float))]
    return Arm(
        label, finite["final_score"].astype(float).tolist(), [int(b) for b in finite["env_steps_budget"].dropna()]
    )


def _metric_targets(data: SuiteData, claim: Claim, paper: Paper) -> list[tuple[str, str]]:
    """The (family, scenario) pairs a metrics claim is judged on: each listed scenario where one of
    its arms finished (SMAC preferred to the stand-in), or every scenario of its group with such runs."""

    def finished(family: str, scenario: str, label: str) -> bool:
        """Finished runs of the claim's own group (a reference borrowed from another group, e.g. the
        main table's ddn in an ablation, is no run of the claim on its own)."""
        _, done, borrowed_from = cell_runs(data, claim.group, family, scenario, label)
        return len(done) > 0 and borrowed_from is None

    if claim.scenarios:
        out = []
        for scenario in claim.scenarios:
            family = next(
                (
                    f
                    for f in (paper.family, paper.stand_in)
                    if f and any(finished(f, scenario, lb) for lb in claim.arms)
                ),
                None,
            )
            if family:
                out.append((family, scenario))
        return out
    # Every scenario of the group where one of the claim's arms was run (the reference ddn may come
    # from another group, see tables.cell_runs).
    in_group = data.done[(data.done["group"] == claim.group) & data.done["label"].isin(claim.arms)]
    return sorted(set(zip(in_group["family"], in_group["scenario"])), key=lambda fs: (family_key(fs[0]), fs[1]))


def gather_evidence(data: SuiteData, claim: Claim, paper: Paper, reps: int) -> list[Evidence]:
    """Step 1: the seeds' final scores of every arm, per scenario (per cross-play row)."""
    if claim.source == "crossplay":
        out = []
        for row in build_crossplay_table(data, claim.group, reps).rows:
            ev = Evidence(row.scenario, row.family, False, {}, population=row.population, trained_on=row.trained_on)
            if claim.scenarios and ev.substrate not in claim.scenarios:
                continue
            for label in claim.arms:
                cell = row.cells.get(label)
                ev.arms[label] = Arm(label, list(cell.values), list(cell.budgets)) if cell else Arm(label, [], [])
            if any(a.n for a in ev.arms.values()):
                out.append(ev)
        return out
    out = []
    for family, scenario in _metric_targets(data, claim, paper):
        arms = {lb: _arm(lb, cell_runs(data, claim.group, family, scenario, lb)[1]) for lb in claim.arms}
        out.append(Evidence(scenario, family, metric_for(family).is_rate, arms))
    return out


# The bar -----------------------------------------------------------------------------------------


def check_bar(ev: Evidence, bar: Bar) -> list[str]:
    """Step 2: what this evidence lacks to meet the bar (empty: met)."""
    missing = []
    present = [a for a in ev.arms.values() if a.n]
    budgets = [a.budget for a in present]
    if any(b is None for b in budgets):
        missing.append("budget not recorded")
    elif budgets and min(budgets) < bar.min_budget:
        missing.append(f"budget {fmt_steps(min(budgets))} of {fmt_steps(bar.min_budget)} env steps")
    short = [a for a in present if a.n < bar.min_seeds]
    if short:
        counts = {a.n for a in present}
        text = f"{min(a.n for a in short)} of {bar.min_seeds} seeds"
        if len(counts) > 1:
            text += " (" + ", ".join(f"{a.label} {a.n}" for a in present) + ")"
        missing.append(text)
    absent = [a.label for a in ev.arms.values() if not a.n]
    if absent:
        missing.append(f"not run: {', '.join(absent)}")
    return missing


# Tests -------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """One arm against another: H1 a run of ``x`` scores higher than a run of ``y``."""

    x: str
    y: str
    poi: Improvement
    test: OneSidedTest
    diff: Difference  # median(x) - median(y)
    p_holm: float = float("nan")

    @property
    def direction(self) -> str:
        """Which way the data point: "same" (x above y), "other" or "neither"."""
        return "same" if self.poi.p > 0.5 else "other" if self.poi.p < 0.5 else "neither"


@dataclass
class TestResult:
    """Step 3's output for one piece of evidence (computed whether or not the bar is met)."""

    comparisons: list[Comparison] = field(default_factory=list)  # better / best / lags
    n: int = 0  # value: seeds of the label
    median: float = float("nan")
    lo: float = float("nan")
    hi: float = float("nan")


def run_test(ev: Evidence, claim: Claim, reps: int) -> TestResult:
    """Step 3: the claim's test on the arms that have runs."""
    if claim.kind == "value":
        agg = aggregate(ev.arms[claim.label].values, reps=reps)
        return TestResult(n=agg.n, median=agg.median, lo=agg.median_lo, hi=agg.median_hi)
    pairs = [(r, claim.label) if claim.kind == "lags" else (claim.label, r) for r in claim.rivals]
    out = []
    for x, y in pairs:
        ax, ay = ev.arms[x], ev.arms[y]
        if not ax.n or not ay.n:
            continue
        out.append(
            Comparison(
                x,
                y,
                probability_of_improvement(ax.values, ay.values, reps=reps),
                one_sided_test(ax.values, ay.values),
                median_difference(ax.values, ay.values, reps),
            )
        )
    for c, p in zip(out, holm([c.test.p for c in out])):
        c.p_holm = float(p)
    return TestResult(comparisons=out)


def _value_holds(result: TestResult, claim: Claim) -> bool:
    return result.lo - claim.tolerance <= claim.value <= result.hi + claim.tolerance


# Phrasing ----------------------------------------------------------------------------------------


@dataclass
class Row:
    """The judgement on one piece of evidence, in words."""

    evidence: Evidence
    outcome: str
    missing: list[str]
    qualifier: str  # why this outcome, in a few words
    test: str  # the test and its result; when inconclusive, what the runs so far show (a non-verdict)
    effect: str
    result: TestResult

    @property
    def text(self) -> str:
        return f"{self.evidence.where}: {self.outcome} ({self.qualifier}). {self.test}" + (
            f" Effect: {self.effect}." if self.effect else ""
        )


def _test_name(claim: Claim, n_rivals: int) -> str:
    """The test, e.g. "one-sided exact permutation test of P(ddn > rival) > 1/2 (...), Holm-adjusted over 3 rivals"."""
    x = "rival" if claim.kind == "lags" else claim.label
    y = claim.label if claim.kind == "lags" else "rival"
    holm_part = f", Holm-adjusted over {n_rivals} rivals" if n_rivals > 1 else ""
    return (
        f"one-sided exact permutation test of P({x} > {y}) > 1/2 (Mann-Whitney){holm_part}, alpha {claim.bar.alpha:g}"
    )


def _phrase_row(ev: Evidence, claim: Claim, missing: list[str], result: TestResult) -> Row:
    is_rate = ev.is_rate
    if claim.kind == "value":
        tol = fmt_diff(claim.tolerance, is_rate).lstrip("+")
        ours = (
            f"our median {fmt_score(result.median, is_rate)} [{fmt_score(result.lo, is_rate)}, "
            f"{fmt_score(result.hi, is_rate)}] (n = {result.n})"
        )
        paper = f"paper {fmt_score(claim.value, is_rate, 2)}"
        effect = f"ours minus paper: {fmt_diff(result.median - claim.value, is_rate)}" if result.n else ""
        if missing:
            return Row(
                ev,
                INCONCLUSIVE,
                missing,
                "; ".join(missing),
                f"So far, not a verdict: {ours} vs {paper} (tolerance ± {tol}).",
                effect,
                result,
            )
        widened = (
            f"[{fmt_score(result.lo - claim.tolerance, is_rate)}, {fmt_score(result.hi + claim.tolerance, is_rate)}]"
        )
        holds = _value_holds(result, claim)
        side = "inside" if holds else ("below" if result.hi + claim.tolerance < claim.value else "above")
        qualifier = (
            "the paper's number lies inside our interval widened by the tolerance"
            if holds
            else f"our interval, widened by the tolerance, lies {side} the paper's number"
        )
        return Row(
            ev,
            REPRODUCED if holds else NOT_REPRODUCED,
            [],
            qualifier,
            f"{paper} vs {ours}; 95% bootstrap CI of the median widened by ± {tol}: {widened}, "
            f"{'contains' if holds else 'excludes'} the paper's number.",
            effect,
            result,
        )

    comps = result.comparisons
    tested = [c for c in comps if np.isfinite(c.test.p)]
    untested = [c.y if claim.kind != "lags" else c.x for c in comps if not np.isfinite(c.test.p)]
    tests = "; ".join(
        f"{c.x} > {c.y}: p = {fmt_p(c.test.p)}"
        + (f" (Holm {fmt_p(c.p_holm)})" if len(tested) > 1 else "")
        + ("" if c.test.exact else ", Monte Carlo")
        + f", n = {c.test.n_x} vs {c.test.n_y}"
        for c in tested
    )
    if untested:
        tests += (
            "; " if tests else ""
        ) + f"no test vs {', '.join(untested)} (a side has a single seed; a test needs 2)"
    effect = "; ".join(
        f"P({c.x} > {c.y}) = {c.poi.p:.2f}, median difference "
        + (
            _diff_ci(c.diff, is_rate)
            if max(c.poi.n_x, c.poi.n_y) > 1
            else f"{fmt_diff(c.diff.value, is_rate)} (one seed each: no interval)"
        )
        for c in comps
    )
    if missing:
        shown = (
            f"So far, not a verdict ({_test_name(claim, len(tested))}): {tests}."
            if tested
            else f"So far, not a verdict: {tests}."
            if comps
            else "So far: no pair to compare."
        )
        return Row(ev, INCONCLUSIVE, missing, "; ".join(missing), shown, effect, result)
    failed = [c for c in comps if not c.p_holm <= claim.bar.alpha]
    text = f"{_test_name(claim, len(tested))}: {tests}."
    if not failed:
        worst = max(c.p_holm for c in comps)
        return Row(
            ev,
            REPRODUCED,
            [],
            f"p = {fmt_p(worst)}" + (" after Holm, every rival" if len(comps) > 1 else ""),
            text,
            effect,
            result,
        )
    same = [f"{c.x} vs {c.y}" if claim.kind == "lags" else c.y for c in failed if c.direction == "same"]
    other = [f"{c.x} vs {c.y}" if claim.kind == "lags" else c.y for c in failed if c.direction == "other"]
    neither = [f"{c.x} vs {c.y}" if claim.kind == "lags" else c.y for c in failed if c.direction == "neither"]
    parts = []
    whole = len(failed) == len(comps)  # every comparison failed the same way: no need to name them
    if same:
        parts.append(
            "not significant, data point the same way"
            + ("" if whole and not (other or neither) else f" (vs {', '.join(same)})")
        )
    if other:
        parts.append(
            "data point the other way" + ("" if whole and not (same or neither) else f" (vs {', '.join(other)})")
        )
    if neither:
        parts.append(
            "no difference either way" + ("" if whole and not (same or other) else f" (vs {', '.join(neither)})")
        )
    return Row(ev, NOT_REPRODUCED, [], "; ".join(parts), text, effect, result)


@dataclass
class Verdict:
    claim: Claim
    verdict: str  # one of OUTCOMES
    reason: str  # the verdict in words: the rows' texts, or why nothing could be judged
    rows: list[Row] = field(default_factory=list)  # one per scenario (cross-play row) judged
    missing: list[str] = field(default_factory=list)  # what the bar still lacks (inconclusive)
    qualifier: str = ""
    measured_on: list[str] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)  # env steps of the runs used
    paper_budget: int | None = None

    @property
    def outcome(self) -> str:
        return self.verdict

    @property
    def headline(self) -> str:
        """The outcome with its reason in brackets, e.g. "inconclusive (budget 80k of 2M env steps; ...)"."""
        return f"{self.verdict} ({self.qualifier})" if self.qualifier else self.verdict

    @property
    def details(self) -> list[str]:
        return [r.text for r in self.rows]

    @property
    def on_stand_in(self) -> bool:
        return any("stand-in" in m for m in self.measured_on)

    @property
    def bar_needed(self) -> str:
        bar = self.claim.bar
        if bar is None:
            return ""
        arms = ", ".join(self.claim.arms)
        where = f" on {', '.join(self.claim.scenarios)}" if self.claim.scenarios else ""
        each = " each" if len(self.claim.arms) > 1 else ""
        return f"{arms}: ≥ {bar.min_seeds} seeds{each}, ≥ {fmt_steps(bar.min_budget)} env steps per run{where}"

    @property
    def bar_met(self) -> list[str]:
        """Per row: the seeds per arm and the budget this suite has."""
        out = []
        for row in self.rows:
            ev = row.evidence
            seeds = ", ".join(f"{a.label} {a.n}" for a in ev.arms.values())
            budgets = "/".join(fmt_steps(b) for b in ev.budgets) or "n/a"
            where = ev.scenario + (f" (vs {ev.population})" if ev.population else "")
            out.append(
                f"{where}, {'met' if not row.missing else 'not met'}: seeds {seeds}; runs of {budgets} env steps"
            )
        return out

    def record(self) -> dict:
        """The verdict as JSON data (report/verdicts.json; reproduce.py prints its summary)."""
        return {
            "id": self.claim.id,
            "paper": self.claim.paper,
            "text": self.claim.text,
            "outcome": self.verdict,
            "headline": self.headline,
            "missing": self.missing,
            "decided_by": list(self.claim.decided_by),
            "measured_on": self.measured_on,
            "budgets": self.budgets,
            "paper_budget": self.paper_budget,
            "details": self.details,
        }


def phrase(claim: Claim, paper: Paper, rows: list[Row], unjudged: list[str]) -> Verdict:
    """Step 4: the claim's outcome from its rows: refuted on one row with the bar met is refuted;
    otherwise any row short of the bar, or a listed scenario not run, leaves it inconclusive."""
    many = len(rows) + len(unjudged) > 1

    def tagged(row: Row, text: str) -> str:
        return f"{row.evidence.scenario}: {text}" if many else text

    lacking: dict[str, list[str]] = {}  # what is missing -> the rows that lack it
    for r in rows:
        for m in r.missing:
            lacking.setdefault(m, []).append(r.evidence.scenario)
    missing = [m if len(where) == len(rows) else f"{m} on {', '.join(where)}" for m, where in lacking.items()]
    if unjudged:
        named = len(claim.scenarios)
        missing.append(
            f"not run on {len(unjudged)} of {named} scenarios: {', '.join(unjudged)}"
            if named > 1
            else f"not run on {', '.join(unjudged)}"
        )
    refuted = [r for r in rows if r.outcome == NOT_REPRODUCED]
    if refuted:
        outcome, qualifier = NOT_REPRODUCED, "; ".join(tagged(r, r.qualifier) for r in refuted)
    elif missing:
        outcome, qualifier = INCONCLUSIVE, "; ".join(missing)
    elif not many:
        outcome, qualifier = REPRODUCED, rows[0].qualifier
    else:
        what = "rows of the cross-play table" if claim.source == "crossplay" else "scenarios"
        worst = max((c.p_holm for r in rows for c in r.result.comparisons), default=float("nan"))
        outcome, qualifier = (
            REPRODUCED,
            (
                f"{rows[0].qualifier}, on all {len(rows)} {what}"
                if claim.kind == "value"
                else f"p ≤ {fmt_p(worst)} after Holm, every rival, on all {len(rows)} {what}"
            ),
        )
    reason = " ".join(r.text for r in rows)
    if outcome == INCONCLUSIVE:
        reason += f" To decide it: {claim.how_to_run}"
    measured = list(dict.fromkeys(r.evidence.measured_on for r in rows))
    budgets = sorted({b for r in rows for b in r.evidence.budgets})
    return Verdict(
        claim,
        outcome,
        reason,
        rows,
        missing if outcome == INCONCLUSIVE else [],
        qualifier,
        measured,
        budgets,
        paper.budget_env_steps,
    )


# Claims ------------------------------------------------------------------------------------------


def evaluate_claim(data: SuiteData, claim: Claim, paper: Paper, reps: int) -> Verdict:
    if claim.kind == "summary":
        return Verdict(claim, NOT_RUN, claim.how_to_run, paper_budget=paper.budget_env_steps)
    evidence = gather_evidence(data, claim, paper, reps)
    if not evidence:
        what = _crossplay_status(data, claim) if claim.source == "crossplay" else _not_run_reason(data, claim, paper)
        return Verdict(claim, NOT_RUN, f"{what}. To run it: {claim.how_to_run}", paper_budget=paper.budget_env_steps)
    rows = [_phrase_row(ev, claim, check_bar(ev, claim.bar), run_test(ev, claim, reps)) for ev in evidence]
    judged = {ev.substrate for ev in evidence}
    return phrase(claim, paper, rows, [s for s in claim.scenarios if s not in judged])


def evaluate_claims(data: SuiteData, numbers: PaperNumbers, reps: int) -> list[Verdict]:
    return [evaluate_claim(data, claim, numbers.papers[claim.paper], reps) for claim in numbers.claims]


def summary_lines(records: list[dict]) -> list[str]:
    """The terminal summary of a report's verdicts (reproduce.py), in the report's outcome words."""
    counts = {o: sum(r["outcome"] == o for r in records) for o in OUTCOMES}
    lines = ["claims: " + ", ".join(f"{n} {o}" for o, n in counts.items() if n)]
    for r in records:
        if r["outcome"] == NOT_RUN:
            continue
        line = f"  {r['headline']}: {r['text'][:90]}"
        if r["outcome"] == INCONCLUSIVE and r["decided_by"]:
            line += f" [decided by: {', '.join(r['decided_by'])}]"
        lines.append(line)
    return lines


# Why nothing could be judged -------------------------------------------------------------------


def _not_finished(data: SuiteData, group: str, family: str, scenario: str, label: str) -> str | None:
    own, _, _ = cell_runs(data, group, family, scenario, label)
    if not len(own):
        return None
    states = own["state"].value_counts().to_dict()
    text = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    errors = own["error"].dropna()
    return f"{label} on {scenario}: {text}" + (f" (error: {str(errors.iloc[0])[:120]})" if len(errors) else "")


def _not_run_reason(data: SuiteData, claim: Claim, paper: Paper) -> str:
    unfinished = [
        m
        for s in claim.scenarios
        for fam in (paper.family, paper.stand_in)
        if fam
        for lb in claim.arms
        if (m := _not_finished(data, claim.group, fam, s, lb))
    ]
    if unfinished:
        return "; ".join(unfinished)
    return f"no finished runs of {', '.join(claim.arms)} in group {claim.group}" + (
        f" on {', '.join(claim.scenarios)}" if claim.scenarios else ""
    )


def _crossplay_status(data: SuiteData, claim: Claim) -> str:
    """Why a cross-play claim has nothing to judge: what the suite holds of its runs."""
    labels = list(claim.arms)
    runs = data.run_dirs
    focal = runs[(runs["group"] == claim.group) & runs["label"].isin(labels)]
    if not len(focal):
        return f"no {', '.join(labels)} runs in group {claim.group} of this suite"
    parts = []
    for label in labels:
        mine = focal[focal["label"] == label]
        if not len(mine):
            parts.append(f"{label}: no runs")
            continue
        done = mine[mine["state"] == "done"]
        text = f"{label}: {len(done)} of {len(mine)} runs trained, {int((done['crossplay_state'] == 'done').sum())} evaluated"
        errors = mine["crossplay_error"].dropna()
        parts.append(text + (f" (cross-play error: {str(errors.iloc[0])[:120]})" if len(errors) else ""))
    held = runs[runs["group"] == HELDOUT_GROUP]
    parts.append(
        f"held-out runs: {int((held['state'] == 'done').sum())} of {len(held)} trained"
        if len(held)
        else "the suite has no held-out population (manifest section 'heldout')"
    )
    return "; ".join(parts)
