"""The reference results beside every report's verdicts: committed reference records are judged by
the same rules, the most decided suite speaks for a claim, and the report shows paper | reference |
this suite per claim (or says no reference result is committed yet)."""

from __future__ import annotations

import json

import pytest

import reports.render as render
from reports.claims import INCONCLUSIVE, REPRODUCED
from reports.collect import collect
from reports.paper import load_paper_numbers
from reports.reference import reference_results
from suites.records import export
from tests.reports.conftest import REPS
from tests.reports.synthetic import write_suite
from tests.reports.test_verdicts import BASELINES, HIGH, LOW, arm, manifest_runs, visible


@pytest.fixture(scope="module")
def numbers():
    return load_paper_numbers()


def _reference_records(tmp_path, name, runs):
    root = write_suite(tmp_path / "store", name, runs, manifest=f"name: {name}\n")
    for d in (root / "runs").iterdir():
        prov = json.loads((d / "provenance.json").read_text())
        (d / "provenance.json").write_text(json.dumps({**prov, "git": {"commit": "feedc0ffee12", "dirty": False},
                                                       "cpu": "Test CPU"}))
    records = tmp_path / "records"
    export(root, "reference", records)
    return records


def test_the_most_decided_reference_suite_speaks_for_a_claim(tmp_path, numbers):
    decided = arm("ddn", HIGH) + [r for b in BASELINES for r in arm(b, LOW)]
    records = _reference_records(tmp_path, "ddn_smax_reference", decided)
    _reference_records(tmp_path, "ddn_smax_partial", arm("ddn", HIGH[:2]))  # 2 seeds: inconclusive
    refs = reference_results(numbers, REPS, records)
    value = refs["ddn_3s_vs_5z"]
    assert value.suite == "ddn_smax_reference" and value.verdict.verdict == REPRODUCED and value.seeds == 5
    assert value.provenance.startswith("records/reference/ddn_smax_reference: commit feedc0f, Test CPU")
    assert refs["ddn_beats_baselines_3s_vs_5z"].verdict.verdict == REPRODUCED
    assert "ddn_mmm2" not in refs  # no reference suite touches it


def test_the_report_shows_paper_reference_and_this_suite_side_by_side(tmp_path, numbers, monkeypatch):
    decided = arm("ddn", HIGH) + [r for b in BASELINES for r in arm(b, LOW)]
    records = _reference_records(tmp_path, "ddn_smax_reference", decided)
    monkeypatch.setattr(render, "reference_results", lambda n, reps: reference_results(n, reps, records))
    quick = write_suite(tmp_path, "quick", manifest_runs("quick", 0.0))
    html = render.render_html(collect(quick), numbers, quick / "report", REPS)
    text = visible(html)
    assert "Paper, reference, this suite" in text
    table = text[text.index("Paper, reference, this suite"):text.index("Verdicts on the papers' claims")]
    row = table[table.index("DDN reaches a 97.01%"):]
    row = row[: row.index("DDN :", 5)]
    assert "97.01%" in row and "at 2M env steps" in row  # the paper
    assert "reproduced (the paper's number lies inside our interval" in row and "5 seeds per arm, 2M env steps" in row
    assert "commit feedc0f, Test CPU" in row  # the reference, with its provenance
    assert f"{INCONCLUSIVE} (budget 80k of 2M env steps; 2 of 5 seeds)" in row  # this suite


def test_without_reference_records_each_claim_says_so(tmp_path, numbers, monkeypatch):
    monkeypatch.setattr(render, "reference_results", lambda n, reps: reference_results(n, reps, tmp_path / "none"))
    quick = write_suite(tmp_path, "quick", manifest_runs("quick", 0.0))
    text = visible(render.render_html(collect(quick), numbers, quick / "report", REPS))
    assert text.count("no reference result committed yet for this claim") == len(numbers.claims)
