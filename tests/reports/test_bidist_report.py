"""BiDist's part of the report: cross-play results (crossplay.json) -> table, verdict, HTML section,
checked against hand-computed medians on synthetic run dirs."""

from __future__ import annotations

import math

import pytest
from markupsafe import escape

from reports.claims import INCONCLUSIVE, NOT_RUN, evaluate_claims
from reports.collect import collect
from reports.paper import load_paper_numbers
from reports.render import render_html
from reports.tables import build_crossplay_table
from tests.reports.conftest import REPS
from tests.reports.synthetic import BOT_POPULATION, SUITE_POPULATION, FakeRun, write_suite

SUBSTRATE = "stag_hunt_in_the_matrix__repeated"
BOT_SCENARIO = SUBSTRATE + "_0"
MISSING_BOTS = SUBSTRATE + "_1"  # recorded as unavailable here: never a row, named in the section
# Focal per-capita return against the held-out population, per label over seeds 0, 1, 2.
CROSSPLAY = {
    "bidist": [3.0, 3.5, 4.0],  # median 3.5: above every seed of every baseline
    "mappo": [1.0, 2.0, 1.5],  # 1.5
    "selfplay": [2.0, 2.5, 1.0],  # 2.0
    "rpm": [2.5, 2.0, 2.8],  # 2.5
    "opre": [0.5, 1.0, 0.8],  # 0.8
    "randnet": [1.2, 1.1, 1.3],  # 1.2
}
BOTS = {"bidist": [2.0, 2.2, 2.4], "mappo": [1.0, 1.1, 1.2]}  # on the Melting Pot scenario


def bidist_runs(crossplay: dict[str, list[float]] = CROSSPLAY) -> list[FakeRun]:
    # Every policy run uses mappo's config for its provenance: the report needs no learner module.
    runs = [FakeRun("meltingpot", SUBSTRATE, label, seed, 2.0 + seed, paper="bidist", algorithm="mappo",
                    crossplay=value, bots={BOT_SCENARIO: BOTS[label][seed]} if label in BOTS else {},
                    bots_unavailable=[MISSING_BOTS])
            for label, values in crossplay.items() for seed, value in enumerate(values)]
    runs += [FakeRun("meltingpot", SUBSTRATE, "mappo", seed, 1.0, group="heldout", paper="bidist", algorithm="mappo")
             for seed in (100, 101)]
    runs += [  # trained, not evaluated yet; and a failed evaluation: counted, never scored
        FakeRun("meltingpot", SUBSTRATE, "bidist", 3, 2.0, paper="bidist", algorithm="mappo"),
        FakeRun("meltingpot", SUBSTRATE, "randnet", 3, 2.0, paper="bidist", algorithm="mappo",
                crossplay_error="PolicyLoadError: simulated unreadable member"),
    ]
    return runs


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("bidist")
    # A value-learner run in the same store: its win-rate columns and the policy runs' PPO columns mix.
    value_run = FakeRun("smax", "3m", "qmix", 0, 0.75)
    return write_suite(root, "bidist_synth", bidist_runs() + [value_run], manifest="name: bidist_synth\npaper: bidist\n")


@pytest.fixture(scope="module")
def numbers():
    return load_paper_numbers()


def test_collect_scores_policy_runs_by_crossplay_and_value_runs_by_metrics(suite):
    data = collect(suite)
    assert data.problems == []
    runs = data.runs.set_index("run_id")
    focal = runs[(runs["label"] == "bidist") & (runs["group"] == "main")].sort_values("seed")
    assert focal["final_score"].iloc[:3].tolist() == CROSSPLAY["bidist"]
    assert math.isnan(focal["final_score"].iloc[3])  # no crossplay.json yet
    assert (focal["n_evals"] == 5).all() and (focal["metric"] == "focal_per_capita_return").all()
    held = runs[runs["group"] == "heldout"]
    assert len(held) == 2 and held["final_score"].isna().all()
    qmix = runs[runs["label"] == "qmix"].iloc[0]
    assert qmix["final_score"] == pytest.approx(0.75) and qmix["metric"] == "test_win_rate"
    # evaluations: policy rows have no win rate, value rows no PPO losses; both are kept
    assert {"test_win_rate", "policy_loss", "entropy"} <= set(data.evals.columns)
    assert data.evals[data.evals["family"] == "meltingpot"]["test_win_rate"].isna().all()
    cp = data.crossplay[data.crossplay["eval_state"] == "done"]
    assert len(cp) == 18 + 6  # 18 held-out evaluations + 6 on the bot scenario; the failed one has none
    assert set(data.crossplay[data.crossplay["eval_state"] == "unavailable"]["eval_scenario"]) == {MISSING_BOTS}
    assert set(cp["population_kind"]) == {SUITE_POPULATION, BOT_POPULATION}
    assert set(cp[cp["kind"] == "heldout_population"]["n_members"]) == {2}


def test_crossplay_table_has_the_hand_computed_medians(suite):
    table = build_crossplay_table(collect(suite), "main", REPS)
    assert table.columns == ["bidist", "mappo", "selfplay", "rpm", "opre", "randnet"]  # never the held-out runs
    assert [(r.scenario, r.population) for r in table.rows] == [(SUBSTRATE, SUITE_POPULATION),
                                                                (BOT_SCENARIO, BOT_POPULATION)]
    held, bots = table.rows
    assert held.members == ["mappo seed 100", "mappo seed 101"] and held.trained_on is None
    expected = {"bidist": 3.5, "mappo": 1.5, "selfplay": 2.0, "rpm": 2.5, "opre": 0.8, "randnet": 1.2}
    for label, median in expected.items():
        cell = held.cells[label]
        assert cell.agg.median == pytest.approx(median) and cell.agg.median_lo <= median <= cell.agg.median_hi
        assert sorted(cell.values) == sorted(CROSSPLAY[label])
    assert held.cells["bidist"].agg.iqm == pytest.approx(3.5)
    assert (held.cells["bidist"].n_done, held.cells["bidist"].n_runs) == (3, 4)  # seed 3: not evaluated
    assert (held.cells["randnet"].n_done, held.cells["randnet"].n_runs) == (3, 4)  # seed 3: evaluation failed
    assert bots.trained_on == SUBSTRATE and bots.members == []
    assert bots.cells["bidist"].agg.median == pytest.approx(2.2) and bots.cells["mappo"].agg.median == pytest.approx(1.1)
    assert bots.cells["selfplay"].n_done == 0
    pairs = {(c.scenario, c.y): c.poi.p for c in table.comparisons}
    assert pairs[(SUBSTRATE, "rpm")] == 1.0 and pairs[(BOT_SCENARIO, "mappo")] == 1.0
    assert (BOT_SCENARIO, "rpm") not in pairs


def test_bidist_verdict_is_inconclusive_while_rivals_are_not_run(suite, numbers):
    # bidist beats every baseline on the held-out row, but on the bot scenario only mappo was evaluated,
    # with 3 seeds at 40k env steps, on one of the claim's five substrates: the bar is not met
    verdict = next(v for v in evaluate_claims(collect(suite), numbers, REPS) if v.claim.id == "bidist_generalises")
    assert verdict.verdict == INCONCLUSIVE
    assert verdict.missing == ["budget 40k of 10M env steps", "3 of 5 seeds",
                               f"not run: randnet, opre, selfplay, rpm on {BOT_SCENARIO}",
                               "not run on 4 of 5 scenarios: prisoners_dilemma_in_the_matrix__repeated, "
                               "running_with_scissors_in_the_matrix__repeated, collaborative_cooking__asymmetric, clean_up"]
    assert any(f"co-players: {SUITE_POPULATION}" in m for m in verdict.measured_on)
    assert any(f"co-players: {BOT_POPULATION}" in m for m in verdict.measured_on)
    # what the runs show so far, not a verdict: a 3 vs 3 complete separation is p = 1/20 before Holm
    assert "So far, not a verdict" in verdict.reason and "bidist > opre: p = 0.050 (Holm" in verdict.reason
    assert "P(bidist > opre) = 1.00" in verdict.reason and "bidist_meltingpot" in verdict.claim.decided_by


def test_bidist_verdict_not_run_when_nothing_was_evaluated(tmp_path, numbers):
    # trained but never evaluated in cross-play: not run, and the reason says what is missing
    pending = [FakeRun("meltingpot", SUBSTRATE, lb, 0, 1.0, paper="bidist", algorithm="mappo") for lb in ("bidist", "mappo")]
    data = collect(write_suite(tmp_path, "pending", pending))
    verdict = next(v for v in evaluate_claims(data, numbers, REPS) if v.claim.id == "bidist_generalises")
    assert verdict.verdict == NOT_RUN
    assert "bidist: 1 of 1 runs trained, 0 evaluated" in verdict.reason and "no held-out population" in verdict.reason


def test_bidist_section_of_the_html(suite):
    html = render_html(collect(suite), load_paper_numbers(), suite / "report", REPS)
    section = html[html.index('id="bidist"'):html.index('id="missing"')]
    assert "Not run." not in section
    assert escape(SUITE_POPULATION) in section and escape(BOT_POPULATION) in section
    assert "members: mappo seed 100, mappo seed 101" in section and "Held-out population" in section
    assert "<b>3.50</b>" in section and "<b>0.80</b>" in section and "n=3 of 4" in section
    assert "cross-play failed: PolicyLoadError: simulated unreadable member" in section
    assert "not evaluated in cross-play yet" in section
    assert "Melting Pot scenarios not evaluated" in section and MISSING_BOTS in section
    assert section.count("data:image/png;base64,") == 1  # the self-play learning curves of the substrate
    assert "self-play" in section
    # the value run's DDN table still renders beside it
    assert "3m" in html[:html.index('id="bidist"')]
