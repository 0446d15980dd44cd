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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from marl.run_io import atomic_write_bytes, atomic_write_text
from reports import figures
from reports.claims import evaluate_claims, fmt_score, fmt_steps
from reports.collect import FINAL_EVALS, SuiteData, collect
from reports.marl_eval import write_marl_eval
from reports.paper import PaperNumbers, load_paper_numbers
from reports.provenance import method_choices, provenance_table
from reports.stats import REPS
from reports.tables import FAMILY_NAMES, Table, build_table, groups_in_order, learning_curve

TEMPLATES = Path(__file__).with_name("templates")
BIDIST_NOT_RUN = ("the BiDist learners (MAPPO with a distilled co-player policy) and its baselines (self-play, "
                  "RPM, OPRE, RandNet) are not implemented yet, so this suite has no Melting Pot runs; the "
                  "seed document gives no table of numbers to compare with either.")


@dataclass
class Figure:
    caption: str
    b64: str


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "__".join(parts))


def _subset(data: SuiteData, bidist: bool) -> SuiteData:
    is_bidist = data.runs["paper"].fillna("") == "bidist"
    runs = data.runs[is_bidist if bidist else ~is_bidist]
    return dataclasses.replace(data, runs=runs, evals=data.evals[data.evals["run_id"].isin(runs["run_id"])])


def _tables(data: SuiteData, numbers: PaperNumbers, reps: int) -> list[Table]:
    return [build_table(data, group, numbers, reps) for group in groups_in_order(data)]


def _figures(data: SuiteData, tables: list[Table], fig_dir: Path, reps: int) -> dict[str, list[Figure]]:
    out: dict[str, list[Figure]] = {}
    for table in tables:
        group = table.layout.group
        for row in table.rows:
            curves = {label: learning_curve(data, row.family, row.scenario, label, group) for label in table.columns
                      if label in row.cells and row.cells[label].n_done}
            curves = {k: v for k, v in curves.items() if not v.empty}
            if not curves:
                continue
            paper = {label: c.paper for label, c in row.cells.items() if c.paper is not None}
            where = FAMILY_NAMES.get(row.family, row.family)
            png = figures.learning_curves(curves, f"{row.scenario} ({where}): {group}", row.metric_name,
                                          row.is_rate, paper, reps=reps)
            atomic_write_bytes(fig_dir / f"{_slug(group, row.family, row.scenario)}.png", png)
            caption = (f"Learning curves, {row.scenario} ({where}), group {group}: median {row.metric_name} over "
                       f"seeds with a 95% bootstrap CI" + ("; dotted: the paper's final value" if paper else "") + ".")
            out.setdefault(group, []).append(Figure(caption, base64.b64encode(png).decode()))
    return out


def _budget_text(data: SuiteData) -> str:
    budgets = sorted({int(b) for b in data.runs["env_steps_budget"].dropna()})
    return ", ".join(f"{fmt_steps(b)} env steps" for b in budgets) if budgets else "n/a"


def _eval_text(data: SuiteData) -> str:
    pairs = sorted({(int(i), int(e)) for i, e in zip(data.runs["eval_interval"], data.runs["eval_episodes"])
                    if i == i and e == e})
    if not pairs:
        return "evaluated every eval_interval env steps (none recorded yet)"
    return "; ".join(f"{e} greedy episodes every {fmt_steps(i)} env steps (and at the start and end)" for i, e in pairs)


def render_html(data: SuiteData, numbers: PaperNumbers, out_dir: Path, reps: int = REPS,
                marl_eval_name: str = "marl_eval.json") -> str:
    ddn_data, bidist_data = _subset(data, bidist=False), _subset(data, bidist=True)
    ddn_tables = _tables(ddn_data, numbers, reps)
    # BiDist tables only once a BiDist run finished (its suite can list runs that cannot run yet).
    bidist_tables = _tables(bidist_data, numbers, reps) if len(bidist_data.done) else []
    fig_dir = out_dir / "figures"
    runs = data.run_dirs
    states = runs["state"].value_counts()
    missing = runs[(runs["state"] != "done") | (runs["n_evals"] == 0)].sort_values(["group", "scenario", "label", "seed"])
    seeds = sorted({s for s in runs["seed"].dropna()})
    ddn_paper = numbers.papers.get("ddn")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["score"] = lambda v, is_rate, digits=1: fmt_score(v, bool(is_rate), digits)
    env.filters["steps"] = lambda v: fmt_steps(int(v)) if v is not None and v == v else "n/a"
    manifest_path = data.suite_dir / "manifest.yaml"
    context: dict[str, Any] = {
        "title": f"Reproduction report: {data.name}",
        "suite_name": data.name,
        "suite_dir": str(data.suite_dir),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "counts": {"total": len(runs), "done": int(states.get("done", 0)),
                   "by_state": [(s, int(n)) for s, n in states.items()]},
        "empty": runs.empty,
        "partial": not runs.empty and len(missing) > 0,
        "problems": data.problems,
        "budget_text": _budget_text(data),
        "paper_budget_text": f"{fmt_steps(ddn_paper.budget_env_steps)} env steps" if ddn_paper else "n/a",
        "seeds_text": ", ".join(str(s) for s in seeds) if seeds else "none",
        "verdicts": evaluate_claims(data, numbers, reps),
        "ddn_tables": ddn_tables,
        "figures": _figures(ddn_data, ddn_tables, fig_dir, reps),
        "bidist_tables": bidist_tables,
        "bidist_figures": _figures(bidist_data, bidist_tables, fig_dir, reps),
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


def render_report(suite_dir: str | Path, reps: int = REPS) -> dict[str, Path]:
    """Render ``<suite_dir>/report/{report.html, report.pdf, marl_eval.json, figures/*.png}``."""
    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir():
        raise FileNotFoundError(f"suite directory {suite_dir} does not exist")
    out_dir = suite_dir / "report"
    data = collect(suite_dir)
    numbers = load_paper_numbers()
    html = render_html(data, numbers, out_dir, reps)
    html_path, pdf_path = out_dir / "report.html", out_dir / "report.pdf"
    atomic_write_text(html_path, html)
    import weasyprint  # imported late: slow to import, only needed here

    atomic_write_bytes(pdf_path, weasyprint.HTML(string=html, base_url=str(out_dir)).write_pdf())
    marl_eval_path = write_marl_eval(data, out_dir / "marl_eval.json")
    return {"html": html_path, "pdf": pdf_path, "marl_eval": marl_eval_path}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render the HTML/PDF report of a suite directory.")
    parser.add_argument("suite_dir", type=Path, help="a suite directory (results/<suite>)")
    parser.add_argument("--reps", type=int, default=REPS, help="bootstrap resamples (default %(default)s)")
    args = parser.parse_args(argv)
    for kind, path in render_report(args.suite_dir, reps=args.reps).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
