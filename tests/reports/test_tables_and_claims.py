"""The report's numbers: collection, statistics, tables and verdicts against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rliable import metrics as rly_metrics

from reports import stats
from reports.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, REPRODUCED, evaluate_claims
from reports.collect import collect, final_score
from reports.marl_eval import to_marl_eval
from reports.paper import load_paper_numbers
from reports.tables import build_table, groups_in_order, learning_curve
from tests.reports.conftest import REPS
from tests.reports.synthetic import FakeRun, metric_rows, write_suite


@pytest.fixture(scope="module")
def numbers():
    return load_paper_numbers()


def cell(table, family, scenario, label):
    row = next(r for r in table.rows if (r.family, r.scenario) == (family, scenario))
    return row.cells[label]


# Statistics ------------------------------------------------------------------------------------


def test_final_score_is_the_mean_of_the_last_three_evaluations():
    assert final_score([0.0, 0.1, 0.2, 0.5, 0.6, 0.7]) == pytest.approx(0.6)
    assert final_score([0.4, 0.8]) == pytest.approx(0.6)  # fewer evaluations: all of them
    assert np.isnan(final_score([]))


def test_median_and_iqm_with_bootstrap_intervals():
    agg = stats.aggregate([1, 2, 3, 4, 5, 6, 7, 8], reps=REPS)
    assert agg.n == 8 and agg.median == 4.5
    assert agg.iqm == pytest.approx(np.mean([3, 4, 5, 6]))  # middle half
    assert 1 <= agg.median_lo <= agg.median <= agg.median_hi <= 8
    assert agg.iqm_lo <= agg.iqm <= agg.iqm_hi
    one = stats.aggregate([0.3])
    assert (one.n, one.median, one.median_lo, one.median_hi) == (1, 0.3, 0.3, 0.3)  # no interval from one seed
    assert stats.aggregate([np.nan]).n == 0


def test_probability_of_improvement_matches_rliable_and_hand_count():
    x, y = [3.0, 4.0], [1.0, 4.0]
    # pairs: 3>1, 3<4, 4>1, 4=4 (half) -> 2.5 / 4
    poi = stats.probability_of_improvement(x, y, reps=REPS)
    assert poi.p == pytest.approx(0.625)
    assert poi.p == pytest.approx(rly_metrics.probability_of_improvement(np.array([x]).T, np.array([y]).T))
    assert 0 <= poi.lo <= poi.p <= poi.hi <= 1
    separated = stats.probability_of_improvement([5, 6, 7], [1, 2, 3], reps=REPS)
    assert (separated.p, separated.lo, separated.hi) == (1.0, 1.0, 1.0)
    lone = stats.probability_of_improvement([5.0], [1, 6, 3], reps=REPS)  # one side with a single seed
    assert lone.p == pytest.approx(2 / 3) and lone.lo <= lone.p <= lone.hi


def test_one_sided_exact_test_matches_the_counts_of_splits():
    # a complete separation: 1 split in C(n + m, n) is as extreme
    for n, p in ((2, 1 / 6), (3, 1 / 20), (5, 1 / 252)):
        test = stats.one_sided_test(np.arange(n) + 10.0, np.arange(n) + 0.0)
        assert test.p == pytest.approx(p) and test.exact and (test.n_x, test.n_y) == (n, n)
    reversed_ = stats.one_sided_test([0.0, 1.0, 2.0, 3.0, 4.0], [10.0, 11.0, 12.0, 13.0, 14.0])
    assert reversed_.p == pytest.approx(1.0)
    assert stats.one_sided_test([0.0] * 5, [0.0] * 5).p == pytest.approx(1.0)  # all tied: no evidence
    # a tie across the samples counts half, as in P(X > Y): 5 of 252 splits reach P >= 24.5 / 25
    tied = stats.one_sided_test([0.9, 0.92, 0.95, 0.97, 0.99], [0.5, 0.6, 0.62, 0.7, 0.95])
    assert tied.p == pytest.approx(5 / 252)
    assert np.isnan(stats.one_sided_test([1.0], [0.0, 0.5]).p)  # one seed: no test
    big = stats.one_sided_test(np.arange(10) + 20.0, np.arange(10) + 0.0)  # C(20, 10) splits: Monte Carlo
    assert not big.exact and big.p < 1e-3


def test_holm_step_down_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert stats.holm([0.04, 0.01, 0.03]).tolist() == pytest.approx([0.06, 0.03, 0.06])
    assert stats.holm([0.5, 0.9]).tolist() == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([1 / 252] * 3).tolist() == pytest.approx([3 / 252] * 3)
    out = stats.holm([0.02, np.nan])
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1])  # a missing test does not count


def test_median_difference_with_its_interval():
    d = stats.median_difference([0.9, 0.95, 0.97, 0.92, 0.99], [0.5, 0.6, 0.55, 0.7, 0.65], reps=REPS)
    assert d.value == pytest.approx(0.95 - 0.6) and d.lo <= d.value <= d.hi
    assert 0.2 < d.lo and d.hi < 0.5  # every resample keeps the separation
    same = stats.median_difference([0.0, 0.0], [0.0, 0.0], reps=REPS)
    assert (same.value, same.lo, same.hi) == (0.0, 0.0, 0.0)


# Collection and tables ------------------------------------------------------------------------


def test_collect_reads_every_run_and_its_evaluations(suites):
    data = collect(suites["partial"])
    assert len(data.runs) == 7 * 3 + 6 * 3 + 3
    assert set(data.runs["state"]) == {"done", "pending", "failed", "running"}
    assert len(data.done) == 39
    ddn = data.runs[(data.runs["label"] == "ddn") & (data.runs["family"] == "smax") & (data.runs["state"] == "done")]
    assert sorted(ddn["final_score"]) == pytest.approx([0.9, 0.95, 0.97])
    assert len(data.evals) == 39 * 5 + 2 + 3  # the unfinished runs' evaluations are collected, not scored
    assert data.problems == []


def test_main_table_cells_are_the_hand_computed_medians(suites, numbers):
    table = build_table(collect(suites["full"]), "main", numbers, REPS)
    assert table.columns == ["qmix", "vdn", "ow_wqmix", "cw_wqmix", "ddn"]
    assert [(r.family, r.scenario, r.metric) for r in table.rows] == [
        ("smax", "3s_vs_5z", "test_win_rate"),
        ("predator_prey", "stag_hunt", "test_return_mean"),
    ]
    expected = {"qmix": 0.6, "vdn": 0.45, "ow_wqmix": 0.6, "cw_wqmix": 0.58, "ddn": 0.95}
    for label, median in expected.items():
        c = cell(table, "smax", "3s_vs_5z", label)
        assert c.agg.median == pytest.approx(median) and c.n_done == 3
        assert c.agg.median_lo <= median <= c.agg.median_hi
    assert cell(table, "predator_prey", "stag_hunt", "qmix").agg.median == pytest.approx(25.0)
    assert cell(table, "predator_prey", "stag_hunt", "ddn").agg.median == pytest.approx(38.0)
    # the paper's SMAC number stands beside the SMAX stand-in's cell, only where the paper has one
    assert cell(table, "smax", "3s_vs_5z", "ddn").paper == pytest.approx(0.9701)
    assert cell(table, "smax", "3s_vs_5z", "qmix").paper is None
    assert cell(table, "predator_prey", "stag_hunt", "ddn").paper is None
    pairs = {(c.scenario, c.x, c.y): c.poi.p for c in table.comparisons}
    assert pairs[("3s_vs_5z", "ddn", "qmix")] == 1.0 and pairs[("stag_hunt", "ddn", "qmix")] == 1.0


def test_ablation_tables_borrow_the_default_ddn_and_show_paper_values(suites, numbers):
    data = collect(suites["full"])
    assert groups_in_order(data) == ["main", "ablation_state", "ablation_distill", "ablation_idm", "mu_sweep"]
    state = build_table(data, "ablation_state", numbers, REPS)
    assert state.columns == ["ddn", "ddn_raw_state"]
    ddn = cell(state, "smax", "3s_vs_5z", "ddn")
    assert ddn.agg.median == pytest.approx(0.95) and "group main" in ddn.note
    raw = cell(state, "smax", "3s_vs_5z", "ddn_raw_state")
    assert raw.agg.median == pytest.approx(0.82) and raw.paper == pytest.approx(0.8216) and raw.note is None
    idm = build_table(data, "ablation_idm", numbers, REPS)
    assert cell(idm, "smax", "3s_vs_5z", "ddn_no_idm").paper == pytest.approx(0.9518)
    mu = build_table(data, "mu_sweep", numbers, REPS)
    assert mu.columns == ["ddn_mu_0.1", "ddn_mu_0.5", "ddn_mu_0.75", "ddn_mu_0.9"]
    assert [cell(mu, "smax", "3s_vs_5z", c).agg.median for c in mu.columns] == pytest.approx([0.7, 0.85, 0.95, 0.9])


def test_partial_suite_scores_finished_runs_and_counts_the_rest(suites, numbers):
    table = build_table(collect(suites["partial"]), "main", numbers, REPS)
    qmix = cell(table, "smax", "3s_vs_5z", "qmix")
    assert (qmix.n_done, qmix.n_runs) == (3, 4) and qmix.agg.median == pytest.approx(0.6)
    ddn = cell(table, "smax", "3s_vs_5z", "ddn")  # the failed seed's 0.2 must not drag the median
    assert (ddn.n_done, ddn.n_runs) == (3, 4) and ddn.agg.median == pytest.approx(0.95)


def test_memberships_put_one_run_in_several_cells(tmp_path, numbers):
    suite = write_suite(
        tmp_path, "shared", [FakeRun("smax", "3s_vs_5z", "ddn", s, f) for s, f in enumerate([0.8, 0.9])]
    )
    for spec_path in (suite / "runs").glob("*/spec.json"):  # as the orchestrator stores a shared training
        spec = json.loads(spec_path.read_text())
        spec["memberships"] = [{"group": "main", "label": "ddn"}, {"group": "mu_sweep", "label": "ddn_mu_0.75"}]
        spec_path.write_text(json.dumps(spec))
    data = collect(suite)
    assert len(data.run_dirs) == 2 and len(data.runs) == 4
    mu = build_table(data, "mu_sweep", numbers, REPS)
    c = cell(mu, "smax", "3s_vs_5z", "ddn_mu_0.75")
    assert c.note is None and c.agg.median == pytest.approx(0.85)


def test_learning_curves_align_evaluations_on_the_interval_grid(suites):
    data = collect(suites["full"])
    curve = learning_curve(data, "smax", "3s_vs_5z", "qmix", "main")
    assert list(curve.index) == [0, 10_000, 20_000, 30_000, 40_000]  # evaluations at 10037 etc. snap down
    assert sorted(curve.columns) == [0, 1, 2]
    assert curve.loc[40_000].tolist() == pytest.approx([0.5, 0.7, 0.6])
    assert curve.loc[0].tolist() == [0.0, 0.0, 0.0]


# Verdicts ---------------------------------------------------------------------------------------


def test_verdicts_on_the_full_suite_are_inconclusive_below_the_bar(suites, numbers):
    # 3 seeds per arm at 40k env steps: short of DDN's bar (5 seeds, 2M) on every claim with runs
    verdicts = {v.claim.id: v for v in evaluate_claims(collect(suites["full"]), numbers, REPS)}
    assert set(verdicts) == {c.id for c in numbers.claims}
    for claim in (
        "ddn_3s_vs_5z",
        "ddn_beats_baselines_3s_vs_5z",
        "personalization_3s_vs_5z",
        "multilevel_distillation",
        "idm_3s_vs_5z",
    ):
        v = verdicts[claim]
        assert v.verdict == INCONCLUSIVE and v.missing == ["budget 40k of 2M env steps", "3 of 5 seeds"], claim
        assert v.headline == "inconclusive (budget 40k of 2M env steps; 3 of 5 seeds)"
    value = verdicts["ddn_3s_vs_5z"]
    assert value.on_stand_in and value.budgets == [40_000] and value.paper_budget == 2_000_000
    # what the runs show so far, as a non-verdict, and where the claim would be decided
    assert "So far, not a verdict: our median 95.0% [" in value.reason and "vs paper 97.01%" in value.reason
    assert set(value.claim.decided_by) == {"ddn_smac", "ddn_smax"} and "ddn_smax suite" in value.reason
    assert value.bar_met == ["3s_vs_5z, not met: seeds ddn 3; runs of 40k env steps"]
    # 3 vs 3 with a complete separation: p = 1/20 per rival, 3/20 after Holm over the three rivals
    assert "ddn > qmix: p = 0.050 (Holm 0.150), n = 3 vs 3" in verdicts["ddn_beats_baselines_3s_vs_5z"].reason
    # ddn [0.9, 0.95, 0.97] vs no-IDM [0.93, 0.95, 0.99]: P = 3.5 / 9
    assert "P(ddn > ddn_no_idm) = 0.39" in verdicts["idm_3s_vs_5z"].reason
    mu = verdicts["mu_075_best"]  # the sweep has no mu = 0.25 run: one arm missing
    assert mu.verdict == INCONCLUSIVE and "not run: ddn_mu_0.25" in mu.missing
    for claim in ("ddn_mmm2", "baselines_fail_mmm2", "personalization_mmm2", "idm_mmm2", "ddn_lags_2s_vs_1sc"):
        assert verdicts[claim].verdict == NOT_RUN
        assert "needs StarCraft II" in verdicts[claim].reason and "Docker image" in verdicts[claim].reason
    bidist = verdicts["bidist_generalises"]
    assert bidist.verdict == NOT_RUN and "no bidist" in bidist.reason and "bidist_meltingpot" in bidist.reason
    assert not {REPRODUCED, NOT_REPRODUCED} & {v.verdict for v in verdicts.values()}


def test_value_claim_fails_outside_the_tolerance(tmp_path, numbers):
    runs = [
        FakeRun("smax", "3s_vs_5z", "ddn", s, f, env_steps=2_000_000) for s, f in enumerate([0.5, 0.55, 0.6, 0.65, 0.7])
    ]
    verdicts = {v.claim.id: v for v in evaluate_claims(collect(write_suite(tmp_path, "weak", runs)), numbers, REPS)}
    value = verdicts["ddn_3s_vs_5z"]
    assert value.verdict == NOT_REPRODUCED
    assert value.headline == "not reproduced (our interval, widened by the tolerance, lies below the paper's number)"
    # only ddn was run: the comparison with the baselines has runs but not its rivals
    better = verdicts["ddn_beats_baselines_3s_vs_5z"]
    assert better.verdict == INCONCLUSIVE and better.missing == ["not run: qmix, ow_wqmix, cw_wqmix"]


def test_smac_runs_take_precedence_over_the_stand_in(tmp_path, numbers):
    runs = [
        FakeRun("smac", "3s_vs_5z", "ddn", s, f, env_steps=2_000_000)
        for s, f in enumerate([0.95, 0.96, 0.97, 0.98, 0.99])
    ]
    runs += [
        FakeRun("smax", "3s_vs_5z", "ddn", s, f, env_steps=2_000_000) for s, f in enumerate([0.1, 0.2, 0.3, 0.4, 0.5])
    ]
    verdict = next(
        v
        for v in evaluate_claims(collect(write_suite(tmp_path, "both", runs)), numbers, REPS)
        if v.claim.id == "ddn_3s_vs_5z"
    )
    assert verdict.verdict == REPRODUCED and not verdict.on_stand_in and verdict.measured_on == ["SMAC (StarCraft II)"]


def test_unfinished_runs_are_named_in_a_not_run_reason(suites, numbers, tmp_path):
    suite = write_suite(
        tmp_path,
        "crashed",
        [FakeRun("smax", "3s_vs_5z", "ddn", 0, 0.2, state="failed", error="ValueError: boom", n_evals=1)],
    )
    verdict = next(v for v in evaluate_claims(collect(suite), numbers, REPS) if v.claim.id == "ddn_3s_vs_5z")
    assert verdict.verdict == NOT_RUN and "1 failed" in verdict.reason and "ValueError: boom" in verdict.reason


def test_empty_suite_has_every_claim_not_run(suites, numbers):
    data = collect(suites["empty"])
    assert data.runs.empty and data.evals.empty
    assert {v.verdict for v in evaluate_claims(data, numbers, REPS)} == {NOT_RUN}


def test_paper_numbers_file_is_complete(numbers):
    assert numbers.papers["ddn"].budget_env_steps == 2_000_000
    assert numbers.cell("main", "smac", "3s_vs_5z", "ddn") == pytest.approx(0.9701)
    assert numbers.cell("main", "smac", "MMM2", "ddn") == pytest.approx(0.8789)
    assert numbers.cell("ablation_state", "smac", "MMM2", "ddn_raw_state") == pytest.approx(0.1237)
    assert numbers.cell("ablation_idm", "smac", "MMM2", "ddn_no_idm") == pytest.approx(0.7839)
    assert numbers.cell("main", "predator_prey", "3s_vs_5z", "ddn") is None
    assert all(c.how_to_run for c in numbers.claims)


# marl-eval export --------------------------------------------------------------------------------


def test_marl_eval_export_follows_its_raw_data_schema(suites, rendered):
    raw = json.loads(rendered["partial"]["marl_eval"].read_text())
    assert set(raw) == {"smax", "predator_prey"}
    qmix = raw["smax"]["3s_vs_5z"]["qmix"]
    assert set(qmix) == {"seed_0", "seed_1", "seed_2"}  # the pending seed 3 is not exported
    run = qmix["seed_1"]
    assert list(run) == [f"step_{i}" for i in range(5)] + ["absolute_metrics"]  # order matters to marl-eval
    assert [run[f"step_{i}"]["step_count"] for i in range(5)] == [0, 10_037, 20_037, 30_037, 40_037]
    assert run["step_4"]["win_rate"] == [pytest.approx(0.7)] and "return" in run["step_4"]
    assert run["absolute_metrics"]["win_rate"] == [pytest.approx(0.7)]
    assert "win_rate" not in raw["predator_prey"]["stag_hunt"]["ddn"]["seed_0"]["step_0"]
    expected = [r["test_return_mean"] for r in metric_rows("predator_prey", 38.0, 5)]
    got = [raw["predator_prey"]["stag_hunt"]["ddn"]["seed_1"][f"step_{i}"]["return"][0] for i in range(5)]
    assert got == pytest.approx(expected)
    assert to_marl_eval(collect(rendered["empty"]["html"].parent.parent)) == {}


def test_reports_and_the_run_store_agree_on_the_main_group():
    """reports/ reads stores without importing suites/: the default group is written in both."""
    from reports import collect
    from suites import manifest

    assert collect.MAIN_GROUP == manifest.MAIN_GROUP
