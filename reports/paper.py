"""The papers' reported numbers, loaded from ``paper_numbers.yaml`` (the one place they live)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.yaml")
CLAIM_KINDS = ("value", "better", "best", "lags", "summary")
CLAIM_SOURCES = ("metrics", "crossplay")


@dataclass(frozen=True)
class Paper:
    key: str
    title: str
    arxiv: str
    family: str
    stand_in: str | None
    budget_env_steps: int | None
    metric: str


@dataclass(frozen=True)
class Bar:
    """The evidence a claim's verdict needs, fixed in paper_numbers.yaml before any run is looked at."""

    name: str
    min_seeds: int  # finished seeds in every arm
    seeds_why: str
    min_budget: int  # env steps every run of every arm trained for
    budget_why: str
    alpha: float  # level of the claim's test (Holm-adjusted across its rivals)


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    text: str
    kind: str
    group: str
    label: str | None = None
    than: tuple[str, ...] = ()
    among: tuple[str, ...] = ()
    scenarios: tuple[str, ...] = ()
    value: float | None = None
    tolerance: float = 0.0
    how_to_run: str = ""
    source: str = "metrics"  # "metrics": final scores of the group's tables; "crossplay": the cross-play table
    bar: Bar | None = None  # None only for kind "summary"
    decided_by: tuple[str, ...] = ()  # shipped suites (suites/<name>.yaml) whose runs meet the bar

    @property
    def rivals(self) -> tuple[str, ...]:
        """The arms the claim's label is compared with (every one is needed for a verdict)."""
        if self.kind == "best":
            return tuple(a for a in self.among if a != self.label)
        return self.than if self.kind in ("better", "lags") else ()

    @property
    def arms(self) -> tuple[str, ...]:
        """Every label whose runs the claim needs."""
        return tuple(a for a in (self.label, *self.rivals) if a)


@dataclass
class PaperNumbers:
    papers: dict[str, Paper]
    claims: list[Claim]
    cells: list[dict[str, Any]] = field(default_factory=list)
    bars: dict[str, Bar] = field(default_factory=dict)

    def cell(self, table: str, family: str, scenario: str, label: str) -> float | None:
        """The paper's value for a table cell. A paper's number also stands beside its stand-in's
        row (SMAX for SMAC), where the report marks the row as a stand-in."""
        for c in self.cells:
            paper = self.papers[c["paper"]]
            if (
                c["table"] == table
                and c["scenario"] == scenario
                and c["label"] == label
                and family in (paper.family, paper.stand_in)
            ):
                return float(c["value"])
        return None


def load_paper_numbers(path: str | Path = PAPER_NUMBERS) -> PaperNumbers:
    raw = yaml.safe_load(Path(path).read_text())
    papers = {
        k: Paper(
            key=k,
            title=v["title"],
            arxiv=str(v["arxiv"]),
            family=v["family"],
            stand_in=v.get("stand_in"),
            budget_env_steps=v.get("budget_env_steps"),
            metric=v["metric"],
        )
        for k, v in raw["papers"].items()
    }
    bars = {
        k: Bar(
            name=k,
            min_seeds=int(v["min_seeds"]),
            seeds_why=" ".join(str(v["seeds_why"]).split()),
            min_budget=int(v["min_budget"]),
            budget_why=" ".join(str(v["budget_why"]).split()),
            alpha=float(v["alpha"]),
        )
        for k, v in (raw.get("bars") or {}).items()
    }
    claims = []
    for c in raw["claims"]:
        if c["kind"] != "summary" and c.get("bar") not in bars:
            raise ValueError(
                f"{path}: claim {c['id']!r} needs an evidence bar (bar: one of {', '.join(bars)}), got {c.get('bar')!r}"
            )
        if c["kind"] == "best" and c.get("label") not in (c.get("among") or ()):
            raise ValueError(f"{path}: claim {c['id']!r} of kind best: label {c.get('label')!r} is not in among")
        if c["kind"] not in CLAIM_KINDS:
            raise ValueError(
                f"{path}: claim {c['id']!r} has unknown kind {c['kind']!r}; valid: {', '.join(CLAIM_KINDS)}"
            )
        if c["paper"] not in papers:
            raise ValueError(
                f"{path}: claim {c['id']!r} names unknown paper {c['paper']!r}; valid: {', '.join(papers)}"
            )
        claims.append(
            Claim(
                id=c["id"],
                paper=c["paper"],
                text=" ".join(str(c["text"]).split()),
                kind=c["kind"],
                group=c.get("group", "main"),
                label=c.get("label"),
                than=tuple(c.get("than") or ()),
                among=tuple(c.get("among") or ()),
                scenarios=tuple(c.get("scenarios") or ()),
                value=c.get("value"),
                tolerance=float(c.get("tolerance", 0.0)),
                how_to_run=" ".join(str(c.get("how_to_run", "")).split()),
                source=c.get("source", "metrics"),
                bar=bars.get(c.get("bar")),
                decided_by=tuple(c.get("decided_by") or ()),
            )
        )
        if claims[-1].source not in CLAIM_SOURCES:
            raise ValueError(
                f"{path}: claim {c['id']!r} has unknown source {claims[-1].source!r}; valid: {', '.join(CLAIM_SOURCES)}"
            )
    for c in raw.get("cells") or []:
        if c["paper"] not in papers:
            raise ValueError(f"{path}: cell {c} names unknown paper {c['paper']!r}")
    return PaperNumbers(papers=papers, claims=claims, cells=list(raw.get("cells") or []), bars=bars)
