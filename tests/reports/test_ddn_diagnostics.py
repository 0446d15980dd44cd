"""The report's DDN teacher-student section: drawn from the instruments every DDN run logs."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from reports.collect import collect
from reports.ddn_diagnostics import ddn_diagnostics
from reports.paper import load_paper_numbers
from reports.render import render_html
from tests.reports.synthetic import FakeRun, write_suite


def add_instruments(run_dir, teacher_level: float, agreement: float) -> None:
    """Append the DDN instrument columns to a synthetic metrics.csv (teacher flat at ``teacher_level``)."""
    path = run_dir / "metrics.csv"
    rows = list(csv.DictReader(path.open()))
    for row in rows:
        row.update(
            teacher_test_win_rate=teacher_level,
            teacher_test_return_mean=0.0,
            greedy_agreement=agreement,
            realised_return_mean=0.8,
            teacher_overestimation=0.2,
            grad_norm_teacher=1.0,
            grad_norm_mixer=2.0,
            grad_norm_student=0.5,
            grad_norm_idm=0.1,
        )
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def suite(tmp_path):
    runs = [FakeRun("smax", "3s_vs_5z", "ddn", seed, final=0.3 + 0.1 * seed, n_evals=6) for seed in range(3)]
    runs += [FakeRun("smax", "3s_vs_5z", "qmix", 0, final=0.9, n_evals=6)]
    root = write_suite(tmp_path, "pair", runs)
    for i, run in enumerate(runs[:3]):
        add_instruments(root / "runs" / run.spec("pair")["id"], teacher_level=0.9, agreement=0.5 + 0.1 * i)
    return root


def test_one_figure_per_instrumented_ddn_cell_with_its_summary(suite):
    figs = ddn_diagnostics(collect(suite), reps=200, last=3)
    assert [(f.scenario, f.label, f.n_seeds) for f in figs] == [("3s_vs_5z", "ddn", 3)]
    summary = figs[0].summary
    # Students end at 0.3, 0.4, 0.5 (median 0.4); the teacher is flat at 0.9; agreement 0.5/0.6/0.7.
    assert summary["student"] == pytest.approx(0.4) and summary["teacher"] == pytest.approx(0.9)
    assert summary["agreement"] == pytest.approx(0.6) and summary["overestimation"] == pytest.approx(0.2)
    assert figs[0].png.startswith(b"\x89PNG")


def test_report_shows_the_pair_section_and_skips_uninstrumented_runs(suite, tmp_path):
    html = render_html(collect(suite), load_paper_numbers(), tmp_path / "out", reps=200)
    assert "DDN: the teacher and the student" in html and "teacher (on the state)" not in html  # legend is in the PNG
    assert html.count('alt="ddn on 3s_vs_5z') == 1
    plain = write_suite(tmp_path / "plain", "plain", [FakeRun("smax", "3m", "ddn", 0, final=0.5)])
    assert "DDN: the teacher and the student" not in render_html(
        collect(plain), load_paper_numbers(), tmp_path / "out2", reps=200
    )


def test_hold_bar_hand_values():
    from reports.ddn_diagnostics import hold_check

    steps = np.arange(0, 2_000_001, 100_000, dtype=float)  # 21 evaluations, budget 2M
    wins = np.full(steps.shape, 0.95)
    assert hold_check(7, steps, wins, 2e6).holds is True
    # One evaluation after 1.5M below 0.7: fails, however high the mean of the last 10%.
    dip = wins.copy()
    dip[steps == 1_600_000] = 0.5
    check = hold_check(7, steps, dip, 2e6)
    assert (check.holds, check.n_below, check.n_after, check.lowest) == (False, 1, 5, 0.5)
    # At 1.5M exactly it is not "after 1.5M": holds.
    early = wins.copy()
    early[steps == 1_500_000] = 0.0
    assert hold_check(7, steps, early, 2e6).holds is True
    # The mean from 1.8M (1.8M, 1.9M, 2.0M) must reach 0.9: (0.95 + 0.95 + 0.75) / 3 < 0.9.
    low = wins.copy()
    low[-1] = 0.75
    check = hold_check(7, steps, low, 2e6)
    assert check.tail_mean == pytest.approx((0.95 + 0.95 + 0.75) / 3) and check.holds is False
    # A run short of its budget is not judged.
    assert hold_check(7, steps[:15], wins[:15], 2e6).holds is None


def test_pair_section_counts_the_seeds_that_hold(suite):
    figs = ddn_diagnostics(collect(suite), reps=200, last=3)
    # Synthetic students end at 0.3-0.5, below the bar: finished, judged, none holds.
    assert [h.holds for h in figs[0].holds] == [False, False, False]
    assert [h.seed for h in figs[0].holds] == [0, 1, 2]
