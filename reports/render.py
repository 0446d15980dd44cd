"""Render a suite's report: one self-contained HTML file (figures embedded as base64 PNG), a PDF
with the same content (WeasyPrint renders the same HTML), and the results in marl-eval's format.

    python -m reports.render results/<suite>       # or reproduce.py --report-only

A partial suite (runs failed, running or not yet run) still renders: scores use finished runs and
the report lists what is missing; an empty suite renders with every claim "not run".
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from marl.run_io import atomic_write_bytes, atomic_write_text
from reports import figures
from reports.claims import OUTCOMES, Verdict, evaluate_claims, fmt_p, fmt_score, fmt_steps
from reports.collect import FINAL_EVALS, SuiteData, collect
from reports.marl_eval import write_marl_eval
from reports.paper import PaperNumbers, load_paper_numbers
from reports.ddn_diagnostics import ddn_diagnostics
from reports.configuration import method_choices, provenance_table
from reports.reference import reference_results, reproducibility
from reports.stats import REPS
from reports.tables import (
    FAMILY_NAMES,
    HELDOUT_GROUP,
    KIND_TITLES,
    Table,
    build_coplayer_table,
    build_crossplay_table,
    build_table,
    crossplay_groups,
    groups_in_order,
    learning_curve,
)

TEMPLATES = Path(__file__).with_name("templates")
PROJECT = Path(__file__).resolve().parents[1]
BIDIST_NOT_RUN = (
    "this suite has no BiDist runs. Run python reproduce.py --suite bidist_quick (a few minutes: "
    "the whole pipeline at a tiny budget) or --suite bidist_meltingpot (paper scale); the seed "
    "document gives no table of numbers to compare with."
)


@dataclass
class Figure:
    caption: str
    b64: str


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "__".join(parts))


def _subset(data: SuiteData, bidist: bool) -> SuiteData:
    is_bidist = data.runs["paper"].fillna("") == "bidist"
    runs = data.runs[is_bidist if bidist else ~is_bidist]
    return dataclasses.replace(
        data,
        runs=runs,
        evals=data.evals[data.evals["run_id"].isin(runs["run_id"])],
        crossplay=data.crossplay[data.crossplay["run_id"].isin(runs["run_id"])],
    )


@dataclass
class Pending:
    run_id: str
    family: str
    scenario: str
    label: str
    seed: Any
    reason: str


def _bidist(data: SuiteData, fig_dir: Path, reps: int) -> dict[str, Any]:
    """The BiDist section: cross-play tables, self-play learning curves, the held-out members and
    the focal runs still without a cross-play result."""
    tables = [build_crossplay_table(data, group, reps) for group in crossplay_groups(data)]
    tables = [t for t in tables if t.rows]
    coplayer_tables = [
        t for t in (build_coplayer_table(data, group, reps) for group in crossplay_groups(data)) if t.rows
    ]
    focal = data.runs[(data.runs["group"] != HELDOUT_GROUP)]
    figures_out: list[Figure] = []
    for family, scenario in sorted(set(zip(focal["family"], focal["scenario"]))):
        for group in dict.fromkeys(focal["group"]):
            labels = list(
                dict.fromkeys(
                    focal[(focal["group"] == group) & (focal["family"] == family) & (focal["scenario"] == scenario)][
                        "label"
                    ]
                )
            )
            curves = {lb: learning_curve(data, family, scenario, lb, group) for lb in labels}
            curves = {k: v for k, v in curves.items() if not v.empty}
            if not curves:
                continue
            where = FAMILY_NAMES.get(family, family)
            png = figures.learning_curves(
                curves, f"{scenario} ({where}): self-play, group {group}", "self-play test return", False, reps=reps
            )
            atomic_write_bytes(fig_dir / f"{_slug('bidist', group, family, scenario)}.png", png)
            figures_out.append(
                Figure(
                    f"Learning curves, {scenario} ({where}), group {group}: per-capita test return with every slot "
                    f"played by the learner itself (self-play, as evaluated during training; not the generalisation "
                    f"metric), median over seeds with a 95% bootstrap CI.",
                    base64.b64encode(png).decode(),
                )
            )
    held = data.run_dirs[data.run_dirs["group"] == HELDOUT_GROUP].sort_values(["scenario", "label", "seed"])
    done = data.crossplay[data.crossplay["eval_state"] == "done"]
    evaluated = set(done["run_id"])
    unavailable = data.crossplay[data.crossplay["eval_state"] == "unavailable"].drop_duplicates("eval_scenario")
    not_here = [(r.eval_scenario, r.reason) for r in unavailable.sort_values("eval_scenario").itertuples()]
    pending = []
    for r in focal.drop_duplicates("run_id").sort_values(["scenario", "label", "seed"]).itertuples():
        if r.run_id in evaluated:
            continue
        if r.state != "done":
            reason = f"training {r.state}"
        elif r.crossplay_state == "failed":
            reason = f"cross-play failed: {r.crossplay_error}"
        elif r.crossplay_state == "incomplete":
            reason = (
                f"evaluated against an incomplete population ({int(r.crossplay_unplayed)} scheduled episodes skipped: "
                "their co-players had not finished), so not on the schedule every focal run meets; rerun "
                "reproduce.py once they have (only the missing batches are played)"
            )
        else:
            reason = (
                "trained, not evaluated in cross-play yet (it runs after training, once held-out runs of "
                "its scenario finished: rerun reproduce.py)"
            )
        pending.append(Pending(r.run_id, r.family, r.scenario, r.label, r.seed, reason))
    kinds = list(dict.fromkeys(done["population_kind"].dropna()))
    return {
        "tables": tables,
        "coplayer_tables": coplayer_tables,
        "kind_titles": KIND_TITLES,
        "figures": figures_out,
        "heldout": list(held.itertuples()),
        "pending": pending,
        "kinds": kinds,
        "has_runs": not focal.empty,
        "not_here": not_here,
    }


def _tables(data: SuiteData, numbers: PaperNumbers, reps: int) -> list[Table]:
    return [build_table(data, group, numbers, reps) for group in groups_in_order(data)]


def _figures(data: SuiteData, tables: list[Table], fig_dir: Path, reps: int) -> dict[str, list[Figure]]:
    out: dict[str, list[Figure]] = {}
    for table in tables:
        group = table.layout.group
        for row in table.rows:
            curves = {
                label: learning_curve(data, row.family, row.scenario, label, group)
                for label in table.columns
                if label in row.cells and row.cells[label].n_done
            }
            curves = {k: v for k, v in curves.items() if not v.empty}
            if not curves:
                continue
            paper = {label: c.paper for label, c in row.cells.items() if c.paper is not None}
            where = FAMILY_NAMES.get(row.family, row.family)
            png = figures.learning_curves(
                curves, f"{row.scenario} ({where}): {group}", row.metric_name, row.is_rate, paper, reps=reps
            )
            atomic_write_bytes(fig_dir / f"{_slug(group, row.family, row.scenario)}.png", png)
            caption = (
                f"Learning curves, {row.scenario} ({where}), group {group}: median {row.metric_name} over "
                f"seeds with a 95% bootstrap CI" + ("; dotted: the paper's final value" if paper else "") + "."
            )
            out.setdefault(group, []).append(Figure(caption, base64.b64encode(png).decode()))
    return out


def _ddn_diagnostics(data: SuiteData, fig_dir: Path, reps: int) -> list[dict[str, Any]]:
    out = []
    for d in ddn_diagnostics(data, reps=reps):
        atomic_write_bytes(fig_dir / f"{_slug('ddn-pair', d.family, d.scenario, d.label)}.png", d.png)
        out.append(
            {
                "figure": Figure(d.caption, base64.b64encode(d.png).decode()),
                "label": d.label,
                "scenario": d.scenario,
                "family": d.family,
                "n": d.n_seeds,
                "summary": d.summary,
                "holds": d.holds,
            }
        )
    return out


def _budget_text(data: SuiteData) -> str:
    budgets = sorted({int(b) for b in data.runs["env_steps_budget"].dropna()})
    return ", ".join(f"{fmt_steps(b)} env steps" for b in budgets) if budgets else "n/a"


def _paper_budget_text(data: SuiteData, numbers: PaperNumbers) -> str:
    """The papers' own budgets, for the papers this suite's runs reproduce (DDN when it has none)."""
    found = [p for p in dict.fromkeys(data.runs["paper"].dropna()) if p in numbers.papers] or ["ddn"]
    parts = []
    for key in found:
        paper = numbers.papers.get(key)
        if paper is None:
            continue
        steps = paper.budget_env_steps
        parts.append(
            f"the {key.upper() if key == 'ddn' else 'BiDist'} paper: "
            + (f"{fmt_steps(steps)} env steps" if steps else "budget not given")
        )
    return "; ".join(parts) or "n/a"


def _eval_text(data: SuiteData) -> str:
    pairs = sorted(
        {(int(i), int(e)) for i, e in zip(data.runs["eval_interval"], data.runs["eval_episodes"]) if i == i and e == e}
    )
    if not pairs:
        return "evaluated every eval_interval env steps (none recorded yet)"
    return "; ".join(f"{e} greedy episodes every {fmt_steps(i)} env steps (and at the start and end)" for i, e in pairs)


def _breakable(text: Any) -> markupsafe.Markup:
    """Escaped text that may wrap after underscores (scenario names are long single words)."""
    return markupsafe.Markup(str(markupsafe.escape(text)).replace("_", "_<wbr>"))


def render_html(
    data: SuiteData,
    numbers: PaperNumbers,
    out_dir: Path,
    reps: int = REPS,
    marl_eval_name: str = "marl_eval.json",
    verdicts: list[Verdict] | None = None,
) -> str:
    if verdicts is None:
        verdicts = evaluate_claims(data, numbers, reps)
    ddn_data, bidist_data = _subset(data, bidist=False), _subset(data, bidist=True)
    ddn_tables = _tables(ddn_data, numbers, reps)
    fig_dir = out_dir / "figures"
    runs = data.run_dirs
    states = runs["state"].value_counts()
    missing = runs[(runs["state"] != "done") | (runs["n_evals"] == 0)].sort_values(
        ["group", "scenario", "label", "seed"]
    )
    seeds = sorted({s for s in runs["seed"].dropna()})
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["score"] = lambda v, is_rate, digits=1: fmt_score(v, bool(is_rate), digits)
    env.filters["steps"] = lambda v: fmt_steps(int(v)) if v is not None and v == v else "n/a"
    env.filters["pvalue"] = fmt_p
    env.filters["breakable"] = _breakable
    manifest_path = data.suite_dir / "manifest.yaml"
    context: dict[str, Any] = {
        "title": f"Reproduction report: {data.name}",
        "suite_name": data.name,
        "suite_dir": shown_path(data.suite_dir),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "counts": {
            "total": len(runs),
            "done": int(states.get("done", 0)),
            "by_state": [(s, int(n)) for s, n in states.items()],
        },
        "empty": runs.empty,
        "partial": not runs.empty and len(missing) > 0,
        "problems": data.problems,
        "budget_text": _budget_text(data),
        "paper_budget_text": _paper_budget_text(data, numbers),
        "seeds_text": ", ".join(str(s) for s in seeds) if seeds else "none",
        "verdicts": verdicts,
        "reference": reference_results(numbers, reps),
        "reproducibility": reproducibility(data.suite_dir),
        "outcome_counts": [(o, sum(v.verdict == o for v in verdicts)) for o in OUTCOMES],
        "bars": [
            (numbers.papers[k].key.upper() if k == "ddn" else "BiDist" if k == "bidist" else k, b)
            for k, b in numbers.bars.items()
        ],
        "ddn_tables": ddn_tables,
        "figures": _figures(ddn_data, ddn_tables, fig_dir, reps),
        "ddn_diagnostics": _ddn_diagnostics(ddn_data, fig_dir, reps),
        "bidist": _bidist(bidist_data, fig_dir, reps),
        "bidist_reason": BIDIST_NOT_RUN,
        "missing": list(missing.itertuples()),
        "family_names": FAMILY_NAMES,
        "final_evals": FINAL_EVALS,
        "reps": reps,
        "eval_text": _eval_text(data),
        "marl_eval_name": marl_eval_name,
        "choices": method_choices(data),
        "provenance": provenance_table(data),
        "n_prov": sum(1 for p in data.provenance.values() if p),
        "manifest_text": manifest_path.read_text() if manifest_path.exists() else "",
        "papers": list(numbers.papers.values()),
    }
    return env.get_template("report.html.j2").render(**context)


def shown_path(path: Path) -> str:
    """A suite's folder as its report names it: relative to the project when inside it (a committed
    record's report is read on other machines, where this one's absolute path means nothing)."""
    path = path.resolve()
    return str(path.relative_to(PROJECT)) if path.is_relative_to(PROJECT) else str(path)


def render_report(suite_dir: str | Path, reps: int = REPS) -> dict[str, Path]:
    """Render ``<suite_dir>/report/{report.html, report.pdf, marl_eval.json, verdicts.json, figures/*.png}``."""
    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir():
        raise FileNotFoundError(f"suite directory {suite_dir} does not exist")
    out_dir = suite_dir / "report"
    data = collect(suite_dir)
    numbers = load_paper_numbers()
    verdicts = evaluate_claims(data, numbers, reps)
    html = render_html(data, numbers, out_dir, reps, verdicts=verdicts)
    html_path, pdf_path = out_dir / "report.html", out_dir / "report.pdf"
    atomic_write_text(html_path, html)
    verdicts_path = out_dir / "verdicts.json"
    atomic_write_text(verdicts_path, json.dumps([v.record() for v in verdicts], indent=1) + "\n")
    import weasyprint  # imported late: slow to import, only needed here

    atomic_write_bytes(pdf_path, weasyprint.HTML(string=html, base_url=str(out_dir)).write_pdf())
    marl_eval_path = write_marl_eval(data, out_dir / "marl_eval.json")
    return {"html": html_path, "pdf": pdf_path, "marl_eval": marl_eval_path, "verdicts": verdicts_path}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render the HTML/PDF report of a suite directory.")
    parser.add_argument("suite_dir", type=Path, help="a suite directory (results/<suite>)")
    parser.add_argument("--reps", type=int, default=REPS, help="bootstrap resamples (default %(default)s)")
    args = parser.parse_args(argv)
    for kind, path in render_report(args.suite_dir, reps=args.reps).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
