"""The reference results: this project's own runs of the papers' comparisons at the papers' budgets,
committed as compact records under ``records/reference/<suite>/`` (suites/records.py), judged by
the same evidence rules as any suite (reports/claims.py). Every report shows, per claim, the
paper's number, the reference result and the suite's own verdict side by side.

Which reference suite speaks for a claim: the one whose verdict is most decided (reproduced / not
reproduced before inconclusive), then the one with the most finished seeds. Until the reference
campaign has committed a suite that touches a claim, its reference cell says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reports.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, REPRODUCED, Verdict, evaluate_claims
from reports.collect import collect
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
        return f"records/reference/{self.suite}: commit {commit}, {cpu}" + (f", {self.finished[:10]}"
                                                                           if self.finished else "")


def reference_suites(records: Path = RECORDS) -> list[dict]:
    """The index entries of the committed reference suites."""
    index = records / "index.yaml"
    if not index.is_file():
        return []
    entries = (yaml.safe_load(index.read_text()) or {}).get("suites") or []
    return [e for e in entries if e.get("kind") == "reference"]


def reference_results(numbers: PaperNumbers, reps: int, records: Path = RECORDS) -> dict[str, ReferenceResult]:
    """Claim id -> the reference result that speaks for it (claims no reference suite touches are absent)."""
    best: dict[str, ReferenceResult] = {}
    for entry in reference_suites(records):
        data = collect(records / entry["path"])
        for verdict in evaluate_claims(data, numbers, reps):
            if verdict.verdict == NOT_RUN:
                continue
            candidate = ReferenceResult(entry["suite"], verdict, list(entry.get("commits") or []),
                                        list(entry.get("cpus") or []), str(entry.get("last_finished") or ""))
            current = best.get(verdict.claim.id)
            if current is None or ((_RANK[verdict.verdict], -candidate.seeds)
                                   < (_RANK[current.verdict.verdict], -current.seeds)):
                best[verdict.claim.id] = candidate
    return best
