"""One verdict per claim of the papers: reproduced / not reproduced / not run (with the reason).

The rules per claim kind are documented in ``paper_numbers.yaml``. A SMAC claim is judged on SMAC
runs when the suite has them, otherwise on the SMAX stand-in, and then says so. A BiDist claim
(``source: crossplay``) is judged on the cross-play table: every row (held-out population, Melting
Pot scenario) where it and its rivals were evaluated, and it says which population each row used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reports.collect import SuiteData, metric_for
from reports.paper import Claim, Paper, PaperNumbers
from reports.stats import aggregate, probability_of_improvement
from reports.tables import FAMILY_NAMES, HELDOUT_GROUP, build_crossplay_table, cell_runs, family_key

REPRODUCED, NOT_REPRODUCED, NOT_RUN = "reproduced", "not reproduced", "not run"


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    reason: str
    details: list[str] = field(default_factory=list)  # one line per scenario judged
    measured_on: list[str] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)  # env steps of the runs used
    paper_budget: int | None = None

    @property
    def on_stand_in(self) -> bool:
        return any("stand-in" in m for m in self.measured_on)


def fmt_score(value: float, is_rate: bool, digits: int = 1) -> str:
    """Rates as percentages (``digits`` decimals; the papers' numbers keep their own two)."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{100 * value:.{digits}f}%" if is_rate else f"{value:.{digits + 1}f}"


def fmt_steps(steps: int | None) -> str:
    if steps is None:
        return "n/a"
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if steps >= div:
            return f"{steps / div:g}{unit}"
    return str(steps)


def _not_finished(data: SuiteData, group: str, family: str, scenario: str, label: str) -> str | None:
    own, _, _ = cell_runs(data, group, family, scenario, label)
    if not len(own):
        return None
    states = own["state"].value_counts().to_dict()
    text = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    errors = own["error"].dropna()
    return f"{label} on {scenario}: {text}" + (f" (error: {str(errors.iloc[0])[:120]})" if len(errors) else "")


def _scores(data: SuiteData, group: str, family: str, scenario: str, label: str) -> pd.DataFrame:
    return cell_runs(data, group, family, scenario, label)[1]


def _targets(data: SuiteData, claim: Claim, paper: Paper) -> list[tuple[str, str]]:
    """The (family, scenario) pairs the claim is judged on."""
    labels = [claim.label] if claim.label else list(claim.among)
    if claim.scenarios:
        out = []
        for scenario in claim.scenarios:
            for family in (paper.family, paper.stand_in):
                if family and any(len(_scores(data, claim.group, family, scenario, lb)) for lb in labels):
                    out.append((family, scenario))
                    break
        return out
    # Every scenario of the group where one of the claim's labels was run (the reference ddn may
    # come from another group, see tables.cell_runs).
    everyone = {lb for lb in (claim.label, *claim.than, *claim.among) if lb}
    in_group = data.done[(data.done["group"] == claim.group) & data.done["label"].isin(everyone)]
    return sorted(set(zip(in_group["family"], in_group["scenario"])), key=lambda fs: (family_key(fs[0]), fs[1]))


def _judge(data: SuiteData, claim: Claim, family: str, scenario: str, reps: int) -> tuple[bool | None, str, list[int]]:
    is_rate = metric_for(family).is_rate
    where = f"{scenario} ({FAMILY_NAMES.get(family, family)})"

    def runs(label: str) -> pd.DataFrame:
        return _scores(data, claim.group, family, scenario, label)

    def budgets(*frames: pd.DataFrame) -> list[int]:
        return sorted({int(b) for f in frames for b in f["env_steps_budget"].dropna()})

    if claim.kind == "value":
        mine = runs(claim.label)
        if not len(mine):
            return None, f"{where}: no finished {claim.label} runs", []
        agg = aggregate(mine["final_score"], reps=reps)
        ok = agg.median_lo - claim.tolerance <= claim.value <= agg.median_hi + claim.tolerance
        return ok, (f"{where}: median {fmt_score(agg.median, is_rate)} [{fmt_score(agg.median_lo, is_rate)}, "
                    f"{fmt_score(agg.median_hi, is_rate)}] (n={agg.n}) vs paper {fmt_score(claim.value, is_rate, 2)} "
                    f"(tolerance {fmt_score(claim.tolerance, is_rate)})"), budgets(mine)

    if claim.kind == "better":
        mine = runs(claim.label)
        others = {o: runs(o) for o in claim.than}
        present = {o: f for o, f in others.items() if len(f)}
        if not len(mine) or not present:
            missing = [claim.label] if not len(mine) else list(claim.than)
            return None, f"{where}: no finished runs of {', '.join(missing)}", []
        parts, ok = [], True
        for other, frame in present.items():
            poi = probability_of_improvement(mine["final_score"], frame["final_score"], reps=reps)
            ok &= poi.lo > 0.5
            parts.append(f"P({claim.label} > {other}) = {poi.p:.2f} [{poi.lo:.2f}, {poi.hi:.2f}] "
                         f"(n={poi.n_x} vs {poi.n_y})")
        absent = [o for o in claim.than if o not in present]
        tail = f"; not run: {', '.join(absent)}" if absent else ""
        return ok, f"{where}: " + "; ".join(parts) + tail, budgets(mine, *present.values())

    if claim.kind in ("best", "lags"):
        pool = (claim.among if claim.kind == "best" else (claim.label, *claim.than))
        frames = {lb: runs(lb) for lb in pool}
        medians = {lb: float(np.median(f["final_score"])) for lb, f in frames.items() if len(f)}
        if claim.label not in medians or len(medians) < 2:
            return None, f"{where}: needs finished runs of {claim.label} and at least one other of {', '.join(pool)}", []
        rivals = {lb: m for lb, m in medians.items() if lb != claim.label}
        ok = medians[claim.label] >= max(rivals.values()) if claim.kind == "best" else (
            medians[claim.label] < max(rivals.values()))
        listing = ", ".join(f"{lb} {fmt_score(m, is_rate)}" for lb, m in medians.items())
        absent = [lb for lb in pool if lb not in medians]
        tail = f"; not run: {', '.join(absent)}" if absent else ""
        return ok, f"{where}: medians {listing}{tail}", budgets(*(f for f in frames.values() if len(f)))

    return None, "", []


def evaluate_claims(data: SuiteData, numbers: PaperNumbers, reps: int) -> list[Verdict]:
    out = []
    for claim in numbers.claims:
        paper = numbers.papers[claim.paper]
        if claim.kind == "summary":
            out.append(Verdict(claim, NOT_RUN, claim.how_to_run, paper_budget=paper.budget_env_steps))
            continue
        if claim.source == "crossplay":
            out.append(_crossplay_verdict(data, claim, paper, reps))
            continue
        details, results, families, budgets, judged = [], [], set(), set(), set()
        for family, scenario in _targets(data, claim, paper):
            ok, detail, used = _judge(data, claim, family, scenario, reps)
            details.append(detail)
            if ok is not None:
                results.append(ok)
                families.add(family)
                budgets.update(used)
                judged.add(scenario)
        unjudged = [s for s in claim.scenarios if s not in judged]
        measured_on = [FAMILY_NAMES.get(f, f) + (" (JAX re-implementation, not StarCraft II)" if f == paper.stand_in
                                                   else "") for f in sorted(families, key=family_key)]
        if not results:
            unfinished = [m for s in (claim.scenarios or []) for fam in (paper.family, paper.stand_in) if fam
                          for lb in ([claim.label] if claim.label else list(claim.among))
                          if (m := _not_finished(data, claim.group, fam, s, lb))]
            what = "; ".join(unfinished) if unfinished else (
                f"no finished runs of {claim.label or ', '.join(claim.among)} in group {claim.group}"
                + (f" on {', '.join(claim.scenarios)}" if claim.scenarios else ""))
            out.append(Verdict(claim, NOT_RUN, f"{what}. To run it: {claim.how_to_run}", details,
                               paper_budget=paper.budget_env_steps))
            continue
        verdict = REPRODUCED if all(results) else NOT_REPRODUCED
        reason = "; ".join(d for d in details if d)
        if unjudged:
            reason += f". Not run on {', '.join(unjudged)}: {claim.how_to_run}"
        out.append(Verdict(claim, verdict, reason, details, measured_on, sorted(budgets), paper.budget_env_steps))
    return out


def _crossplay_status(data: SuiteData, claim: Claim) -> str:
    """Why a cross-play claim has nothing to judge: what the suite holds of its runs."""
    labels = [lb for lb in (claim.label, *claim.than) if lb]
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
    parts.append(f"held-out runs: {int((held['state'] == 'done').sum())} of {len(held)} trained" if len(held)
                 else "the suite has no held-out population (manifest section 'heldout')")
    return "; ".join(parts)


def _crossplay_verdict(data: SuiteData, claim: Claim, paper: Paper, reps: int) -> Verdict:
    """``better`` on the cross-play table: P(label > other) with its CI above 0.5 on every row where
    both were evaluated, for every rival that was."""
    table = build_crossplay_table(data, claim.group, reps)
    details, results, kinds, families, budgets = [], [], [], set(), set()
    for row in table.rows:
        where = f"{row.scenario} ({FAMILY_NAMES.get(row.family, row.family)}; vs {row.population})"
        mine = row.cells.get(claim.label) if claim.label else None
        present = {o: row.cells[o] for o in claim.than if o in row.cells and row.cells[o].n_done}
        if mine is None or not mine.n_done or not present:
            details.append(f"{where}: needs cross-play results of {claim.label} and of one of {', '.join(claim.than)}")
            continue
        parts, ok = [f"median {claim.label} {fmt_score(mine.agg.median, False)}"], True
        for other, cell in present.items():
            poi = probability_of_improvement(mine.values, cell.values, reps=reps)
            ok &= poi.lo > 0.5
            parts.append(f"P({claim.label} > {other}) = {poi.p:.2f} [{poi.lo:.2f}, {poi.hi:.2f}] "
                         f"(median {fmt_score(cell.agg.median, False)}, n={poi.n_x} vs {poi.n_y})")
        absent = [o for o in claim.than if o not in present]
        single = mine.n_done < 2 or any(c.n_done < 2 for c in present.values())
        details.append(f"{where}: " + "; ".join(parts) + (f"; not run: {', '.join(absent)}" if absent else "")
                       + (" (single seeds: no interval, so this row's outcome is indicative only)" if single else ""))
        results.append(ok)
        families.add(row.family)
        if row.population and row.population not in kinds:
            kinds.append(row.population)
        budgets.update(c.budget for c in (mine, *present.values()) if c.budget)
    if not results:
        return Verdict(claim, NOT_RUN, f"{_crossplay_status(data, claim)}. To run it: {claim.how_to_run}", details,
                       paper_budget=paper.budget_env_steps)
    measured_on = [FAMILY_NAMES.get(f, f) for f in sorted(families, key=family_key)] + \
        [f"co-players: {k}" for k in kinds]
    return Verdict(claim, REPRODUCED if all(results) else NOT_REPRODUCED, "; ".join(details), details, measured_on,
                   sorted(budgets), paper.budget_env_steps)
