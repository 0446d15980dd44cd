"""The papers' tables as data: which runs fill which cell, and each cell's statistics.

A table is one run *group* (``main``, ``ablation_state``, ``ablation_distill``, ``ablation_idm``,
``mu_sweep``, or any other group a manifest names); rows are (family, scenario), columns are run
labels. Ablation tables compare against the default ``ddn``: when a group has no ``ddn`` runs of its
own on a scenario, the ``ddn`` runs of another group on the same scenario (and budget) fill that
column, and the cell says where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reports.collect import COPLAYER_KINDS, FOCAL_RETURN, SCORE_KIND, SuiteData, metric_for, run_metric
from reports.paper import PaperNumbers
from reports.stats import Aggregate, Improvement, OneSidedTest, aggregate, one_sided_test, probability_of_improvement

REFERENCE = "ddn"
FAMILY_ORDER = ["smac", "smax", "predator_prey", "matrix_game", "meltingpot"]
FAMILY_NAMES = {
    "smac": "SMAC (StarCraft II)",
    "smax": "SMAX stand-in",
    "predator_prey": "Predator-Prey",
    "matrix_game": "matrix game",
    "meltingpot": "Melting Pot",
}


@dataclass(frozen=True)
class Layout:
    group: str
    title: str
    description: str
    columns: tuple[str, ...] = ()  # preferred column order; labels found in the data are appended
    reference: str | None = None  # label borrowed from another group when missing


LAYOUTS: dict[str, Layout] = {
    "main": Layout(
        "main",
        "Main results: final test score per scenario and algorithm",
        "DDN's main comparison (SMAC win rates; Predator-Prey returns) against QMIX, VDN and WQMIX.",
        ("qmix", "vdn", "ow_wqmix", "cw_wqmix", "ddn"),
    ),
    "ablation_state": Layout(
        "ablation_state",
        "Ablation: personalized vs raw global state (paper Table 3)",
        "ddn = Personalization Fusion Block on; ddn_raw_state = the teacher reads the raw state.",
        ("ddn", "ddn_raw_state"),
        REFERENCE,
    ),
    "ablation_distill": Layout(
        "ablation_distill",
        "Ablation: distillation losses (paper Table 4)",
        "ddn = multi-level L_B + L_Q + L_F; ddn_distill_B = single-level L_B only. Read as the seed"
        " defines L_B (the student's first-layer embedding against the teacher's), L_B alone trains"
        " only that layer: the student's GRU and Q head keep their initial weights, so its greedy"
        " policy cannot learn (docs/methods.md, DDN).",
        ("ddn", "ddn_distill_B"),
        REFERENCE,
    ),
    "ablation_idm": Layout(
        "ablation_idm",
        "Ablation: internal distillation module (paper Table 5)",
        "ddn = with the intrinsic reward (IDM); ddn_no_idm = without.",
        ("ddn", "ddn_no_idm"),
        REFERENCE,
    ),
    "mu_sweep": Layout(
        "mu_sweep",
        "IDM mask probability sweep, mu in {0.1, 0.25, 0.5, 0.75, 0.9} (paper Table 5)",
        "The default ddn has mu = 0.75; it fills the 0.75 column when the sweep has no run of its own.",
        ("ddn_mu_0.1", "ddn_mu_0.25", "ddn_mu_0.5", "ddn_mu_0.75", "ddn_mu_0.9"),
    ),
}
# mu_sweep's 0.75 column falls back to the default ddn (same configuration).
ALIASES: dict[tuple[str, str], str] = {("mu_sweep", "ddn_mu_0.75"): REFERENCE}


def layout_for(group: str) -> Layout:
    return LAYOUTS.get(group, Layout(group, f"Group {group}", f"Runs of the manifest's group {group!r}."))


def family_key(family: str) -> tuple[int, str]:
    return (FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER), family)


@dataclass
class Cell:
    label: str
    agg: Aggregate
    values: list[float]
    seeds: list[Any]
    n_runs: int  # runs of this cell in the suite, whatever their state
    n_done: int
    paper: float | None = None
    note: str | None = None  # e.g. where borrowed runs came from
    budget: int | None = None  # env steps of the runs used (the largest, when they differ)
    budgets: list[int] = field(default_factory=list)  # every env-step budget among the runs used


@dataclass
class Row:
    family: str
    scenario: str
    metric: str
    metric_name: str
    is_rate: bool
    cells: dict[str, Cell] = field(default_factory=dict)
    population: str | None = None  # cross-play rows: who the co-players were
    members: list[str] = field(default_factory=list)  # cross-play rows: the held-out runs, "label seed s"
    trained_on: str | None = None  # cross-play rows on a Melting Pot scenario: the substrate trained on


@dataclass
class Comparison:
    family: str
    scenario: str
    x: str
    y: str
    poi: Improvement
    test: OneSidedTest  # one-sided exact permutation test of P(x > y) > 1/2 (no multiplicity correction)


@dataclass
class Table:
    layout: Layout
    columns: list[str]
    rows: list[Row]
    comparisons: list[Comparison]


def cell_runs(
    data: SuiteData, group: str, family: str, scenario: str, label: str
) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """(all runs of the cell in any state, its finished runs, note) with the reference fallback."""
    runs = data.runs
    where = (runs["family"] == family) & (runs["scenario"] == scenario)
    own = runs[where & (runs["group"] == group) & (runs["label"] == label)]
    done = own[(own["state"] == "done") & (own["n_evals"] > 0)]
    if len(done):
        return own, done, None
    layout = layout_for(group)
    borrow = ALIASES.get((group, label)) or (label if label == layout.reference else None)
    if borrow is None:
        return own, done, None
    others = runs[
        where
        & (runs["label"] == borrow)
        & (runs["state"] == "done")
        & (runs["n_evals"] > 0)
        & ~((runs["group"] == group) & (runs["label"] == label))
    ]
    group_budget = runs[where & (runs["group"] == group)]["env_steps_budget"].dropna()
    if len(group_budget):
        others = others[others["env_steps_budget"].isin(set(group_budget))]
    if not len(others):
        return own, done, None
    others = others.sort_values(["group", "seed"]).drop_duplicates("seed")
    note = f"{borrow} runs of group {', '.join(sorted(set(others['group'])))}"
    return own, others, note


def build_table(data: SuiteData, group: str, numbers: PaperNumbers, reps: int) -> Table:
    layout = layout_for(group)
    in_group = data.runs[data.runs["group"] == group]
    found = list(dict.fromkeys(in_group["label"]))
    columns = [c for c in layout.columns if c in found or (layout.reference == c) or ((group, c) in ALIASES)]
    columns += sorted(c for c in found if c not in columns)
    rows: list[Row] = []
    for family, scenario in sorted(
        set(zip(in_group["family"], in_group["scenario"])), key=lambda fs: (family_key(fs[0]), fs[1])
    ):
        metric = metric_for(family)
        row = Row(family, scenario, metric.column, metric.name, metric.is_rate)
        for label in columns:
            own, done, note = cell_runs(data, group, family, scenario, label)
            if not len(own) and note is None:
                continue
            budgets = sorted(set(done["env_steps_budget"].dropna().astype(int)))
            row.cells[label] = Cell(
                label=label,
                agg=aggregate(done["final_score"], reps=reps),
                values=done["final_score"].tolist(),
                seeds=done["seed"].tolist(),
                n_runs=len(own) if len(own) else len(done),
                n_done=len(done),
                paper=numbers.cell(group, family, scenario, label),
                note=note,
                budget=budgets[-1] if budgets else None,
                budgets=budgets,
            )
        rows.append(row)
    columns = [c for c in columns if any(c in r.cells for r in rows)]
    return Table(layout, columns, rows, _comparisons(layout, columns, rows, reps))


def _comparisons(layout: Layout, columns: list[str], rows: list[Row], reps: int) -> list[Comparison]:
    """The reference (ddn) against every other column; a two-column table: first vs second."""
    if REFERENCE in columns:
        pairs = [(REFERENCE, c) for c in columns if c != REFERENCE]
    elif len(columns) == 2:
        pairs = [(columns[0], columns[1])]
    else:
        return []
    out = []
    for row in rows:
        for x, y in pairs:
            cx, cy = row.cells.get(x), row.cells.get(y)
            if cx is None or cy is None or not cx.n_done or not cy.n_done:
                continue
            out.append(
                Comparison(
                    row.family,
                    row.scenario,
                    x,
                    y,
                    probability_of_improvement(cx.values, cy.values, reps=reps),
                    one_sided_test(cx.values, cy.values),
                )
            )
    return out


def groups_in_order(data: SuiteData, paper: str | None = None) -> list[str]:
    runs = data.runs if paper is None else data.runs[data.runs["paper"].fillna("ddn") == paper]
    found = list(dict.fromkeys(runs["group"]))
    return [g for g in LAYOUTS if g in found] + sorted(g for g in found if g not in LAYOUTS)


def learning_curve(data: SuiteData, family: str, scenario: str, label: str, group: str) -> pd.DataFrame:
    """Per-seed curves of one cell on a common grid: an evaluation taken at env step t belongs to the
    nominal point floor(t / eval_interval) * eval_interval (evaluations fire at the first step past
    each multiple of the interval; the final one at the budget). Columns: seeds; index: env steps.
    The curve is of the runs' metrics.csv metric (BiDist runs: the self-play test return)."""
    _, done, _ = cell_runs(data, group, family, scenario, label)
    ev = data.evals[data.evals["run_id"].isin(done["run_id"])]
    if ev.empty:
        return pd.DataFrame()
    interval = done.set_index("run_id")["eval_interval"].reindex(ev["run_id"]).to_numpy(dtype=float)
    interval = np.where(np.isfinite(interval) & (interval > 0), interval, 1.0)
    steps = (np.floor(ev["env_steps"].to_numpy(dtype=float) / interval) * interval).astype(np.int64)
    metric = run_metric(done["paper"].iloc[0], family).curve_column
    frame = pd.DataFrame({"step": steps, "seed": ev["seed"].to_numpy(), "value": ev[metric].to_numpy(dtype=float)})
    return frame.pivot_table(index="step", columns="seed", values="value", aggfunc="last").sort_index()


# BiDist: cross-play ---------------------------------------------------------------------------

HELDOUT_GROUP = "heldout"  # suites/manifest.py: the held-out runs' group, never a focal column
BIDIST_REFERENCE = "bidist"
LEGACY_HELDOUT = "heldout_population"  # crossplay.json format 1: one population drawn per episode
KIND_TITLES = {
    "round_robin": "round robin (other algorithms)",
    "heldout": "held-out checkpoints",
    "random": "uniform random",
    "self_play": "self-play",
    "score": "score",
    "gap": "gap",
}
CROSSPLAY_LAYOUT = Layout(
    "main",
    "Cross-play: focal per-capita return per evaluation and algorithm",
    "Each focal policy (rows: where it was evaluated) plays with co-players it never met in training: the "
    "suite's held-out population (policies trained in separate runs with other seeds) or, on Melting Pot "
    "scenarios, DeepMind's background bots. Cell: median over seeds of the focal per-capita return "
    "[95% bootstrap CI], IQM, n seeds.",
    ("bidist", "mappo", "selfplay", "rpm", "opre", "randnet"),
    BIDIST_REFERENCE,
)


def crossplay_groups(data: SuiteData) -> list[str]:
    """Groups of focal runs scored by cross-play (the held-out group is never one)."""
    runs = data.runs[(data.runs["metric"] == FOCAL_RETURN.column) & (data.runs["group"] != HELDOUT_GROUP)]
    found = list(dict.fromkeys(runs["group"]))
    return (["main"] if "main" in found else []) + sorted(g for g in found if g != "main")


def heldout_members(data: SuiteData, family: str, scenario: str) -> list[str]:
    runs = data.run_dirs
    held = runs[(runs["group"] == HELDOUT_GROUP) & (runs["family"] == family) & (runs["scenario"] == scenario)]
    return [
        f"{r.label} seed {r.seed}" + ("" if r.state == "done" else f" ({r.state})")
        for r in held.sort_values(["label", "seed"]).itertuples()
    ]


def build_crossplay_table(data: SuiteData, group: str, reps: int) -> Table:
    """Rows: (family, where evaluated, population); columns: the group's labels; cells: the focal
    per-capita return of each seed's focal run (its crossplay.json), aggregated over seeds."""
    layout = (
        CROSSPLAY_LAYOUT
        if group == "main"
        else Layout(
            group,
            f"BiDist cross-play, group {group}",
            CROSSPLAY_LAYOUT.description,
            CROSSPLAY_LAYOUT.columns,
            BIDIST_REFERENCE,
        )
    )
    focal = data.runs[(data.runs["group"] == group) & (data.runs["metric"] == FOCAL_RETURN.column)]
    played = data.crossplay[
        (data.crossplay["group"] == group)
        & (data.crossplay["state"] == "done")
        & (data.crossplay["eval_state"] == "done")
        & ~data.crossplay["kind"].isin(COPLAYER_KINDS)
    ]
    found = list(dict.fromkeys(focal["label"]))
    columns = [c for c in layout.columns if c in found] + sorted(c for c in found if c not in layout.columns)
    keys = sorted(
        set(
            zip(
                played["family"],
                played["scenario"],
                played["eval_scenario"],
                played["kind"],
                played["population_kind"].fillna("?"),
            )
        ),
        key=lambda k: (family_key(k[0]), k[1], k[3] not in (SCORE_KIND, LEGACY_HELDOUT), k[2]),
    )
    rows: list[Row] = []
    for family, trained_on, where, kind, population in keys:
        at = played[
            (played["family"] == family)
            & (played["scenario"] == trained_on)
            & (played["eval_scenario"] == where)
            & (played["kind"] == kind)
        ]
        row = Row(
            family,
            where,
            FOCAL_RETURN.column,
            FOCAL_RETURN.name,
            False,
            population=population,
            members=heldout_members(data, family, trained_on) if kind in (SCORE_KIND, LEGACY_HELDOUT) else [],
            trained_on=trained_on if where != trained_on else None,
        )
        for label in columns:
            own = focal[(focal["family"] == family) & (focal["scenario"] == trained_on) & (focal["label"] == label)]
            got = at[at["label"] == label].drop_duplicates("run_id").sort_values("seed")
            if not len(own):
                continue
            budgets = sorted(set(got["env_steps_budget"].dropna().astype(int)))
            row.cells[label] = Cell(
                label=label,
                agg=aggregate(got["value"], reps=reps),
                values=got["value"].tolist(),
                seeds=got["seed"].tolist(),
                n_runs=len(own),
                n_done=len(got),
                budget=budgets[-1] if budgets else None,
                budgets=budgets,
            )
        rows.append(row)
    columns = [c for c in columns if any(c in r.cells for r in rows)]
    comparisons = []
    if BIDIST_REFERENCE in columns:
        for row in rows:
            x = row.cells.get(BIDIST_REFERENCE)
            for label in columns:
                y = row.cells.get(label)
                if label == BIDIST_REFERENCE or x is None or y is None or not x.n_done or not y.n_done:
                    continue
                comparisons.append(
                    Comparison(
                        row.family,
                        row.scenario,
                        BIDIST_REFERENCE,
                        label,
                        probability_of_improvement(x.values, y.values, reps=reps),
                        one_sided_test(x.values, y.values),
                    )
                )
    return Table(layout, columns, rows, comparisons)


@dataclass
class CoplayerRow:
    family: str
    scenario: str
    label: str
    cells: dict[str, Cell]  # by column: a co-player kind, "score" or "gap"
    n_runs: int  # focal runs of the label on the scenario, whatever their state
    # The floor row (a uniform-random focal player, one evaluation): per column, the standard error
    # over its episodes and their number, shown instead of a seed interval.
    floor: bool = False
    sem: dict[str, float] = field(default_factory=dict)
    episodes: dict[str, int] = field(default_factory=dict)


@dataclass
class CoplayerTable:
    group: str
    columns: list[str]  # co-player kinds present (COPLAYER_KINDS order), then "score" and "gap"
    rows: list[CoplayerRow]
    population_kinds: dict[str, str]  # column -> what the co-players were


def _floor_row(
    floor: pd.DataFrame, family: str, scenario: str, kinds: list[str], columns: list[str], reps: int
) -> CoplayerRow:
    """The scenario's floor: a uniform-random focal player on the same partner schedule."""
    by_kind = {str(r["kind"]): r for _, r in floor.iterrows()}
    values = {k: by_kind[k]["value"] for k in kinds if k in by_kind}
    if "score" in columns and SCORE_KIND in by_kind:
        values["score"] = by_kind[SCORE_KIND]["value"]
    if "gap" in columns and "self_play" in values and "score" in values:
        values["gap"] = values["self_play"] - values["score"]
    cells = {
        c: Cell(
            label=c, agg=aggregate(pd.Series([float(v)]), reps=reps), values=[float(v)], seeds=[0], n_runs=1, n_done=1
        )
        for c, v in values.items()
        if pd.notna(v)
    }
    sem = {k: float(by_kind[k]["value_sem"]) for k in kinds if k in by_kind and pd.notna(by_kind[k]["value_sem"])}
    episodes = {k: int(by_kind[k]["episodes"]) for k in kinds if k in by_kind and pd.notna(by_kind[k]["episodes"])}
    label = str(floor["label"].iloc[0])
    return CoplayerRow(family, scenario, label, cells, 1, floor=True, sem=sem, episodes=episodes)


def build_coplayer_table(data: SuiteData, group: str, reps: int) -> CoplayerTable:
    """BiDist's generalisation per co-player kind: rows (scenario, focal label), a column per
    co-player kind (round robin, held-out checkpoints, uniform random, self-play), the score (mean
    over the unseen kinds) and the gap (self-play minus score, per seed); cells aggregate over seeds
    the focal per-capita return of each seed's crossplay.json."""
    cp = data.crossplay[
        (data.crossplay["group"] == group)
        & (data.crossplay["state"] == "done")
        & (data.crossplay["eval_state"] == "done")
    ]
    per_kind = cp[cp["kind"].isin(COPLAYER_KINDS)]
    score = cp[cp["kind"] == SCORE_KIND]
    kinds = [k for k in COPLAYER_KINDS if k in set(per_kind["kind"])]
    columns = kinds + (["score"] if len(score) else []) + (["gap"] if len(score) and "self_play" in kinds else [])
    focal = data.runs[(data.runs["group"] == group) & (data.runs["metric"] == FOCAL_RETURN.column)]
    order = {c: i for i, c in enumerate(CROSSPLAY_LAYOUT.columns)}
    rows: list[CoplayerRow] = []
    keys = sorted(
        set(zip(per_kind["family"], per_kind["scenario"], per_kind["label"])),
        key=lambda k: (family_key(k[0]), k[1], order.get(k[2], len(order)), k[2]),
    )
    for family, scenario, label in keys:
        own = focal[(focal["family"] == family) & (focal["scenario"] == scenario) & (focal["label"] == label)]
        mine = cp[(cp["family"] == family) & (cp["scenario"] == scenario) & (cp["label"] == label)]
        values: dict[str, pd.Series] = {}
        for kind in kinds:
            got = mine[mine["kind"] == kind].drop_duplicates("run_id").set_index("seed")["value"]
            values[kind] = got
        if "score" in columns:
            values["score"] = mine[mine["kind"] == SCORE_KIND].drop_duplicates("run_id").set_index("seed")["value"]
        if "gap" in columns:
            values["gap"] = (values["self_play"] - values["score"]).dropna()
        cells = {}
        for column, series in values.items():
            series = series.dropna().sort_index()
            cells[column] = Cell(
                label=column,
                agg=aggregate(series, reps=reps),
                values=series.tolist(),
                seeds=series.index.tolist(),
                n_runs=len(own.drop_duplicates("run_id")),
                n_done=len(series),
            )
        rows.append(CoplayerRow(family, scenario, label, cells, len(own.drop_duplicates("run_id"))))
    for family, scenario in dict.fromkeys((k[0], k[1]) for k in keys):
        floor = data.floor[
            (data.floor["family"] == family)
            & (data.floor["scenario"] == scenario)
            & (data.floor["eval_state"] == "done")
        ]
        if not floor.empty:
            rows.append(_floor_row(floor, family, scenario, kinds, columns, reps))
    names = {
        k: str(per_kind[per_kind["kind"] == k]["population_kind"].dropna().iloc[0])
        for k in kinds
        if per_kind[per_kind["kind"] == k]["population_kind"].notna().any()
    }
    if "score" in columns:
        names["score"] = "mean of the unseen kinds' returns (round robin, held-out checkpoints, uniform random)"
    if "gap" in columns:
        names["gap"] = "self-play return minus the score, per seed: what the policy loses with partners it never met"
    return CoplayerTable(group, columns, rows, names)
