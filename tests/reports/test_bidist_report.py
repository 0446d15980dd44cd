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
    runs = [
        FakeRun(
            "meltingpot",
            SUBSTRATE,
            label,
            seed,
            2.0 + seed,
            paper="bidist",
            algorithm="mappo",
            crossplay=value,
            bots={BOT_SCENARIO: BOTS[label][seed]} if label in BOTS else {},
            bots_unavailable=[MISSING_BOTS],
        )
        for label, values in crossplay.items()
        for seed, value in enumerate(values)
    ]
    runs += [
        FakeRun("meltingpot", SUBSTRATE, "mappo", seed, 1.0, group="heldout", paper="bidist", algorithm="mappo")
        for seed in (100, 101)
    ]
    runs += [  # trained, not evaluated yet; and a failed evaluation: counted, never scored
        FakeRun("meltingpot", SUBSTRATE, "bidist", 3, 2.0, paper="bidist", algorithm="mappo"),
        FakeRun(
            "meltingpot",
            SUBSTRATE,
            "randnet",
            3,
            2.0,
            paper="bidist",
            algorithm="mappo",
            crossplay_error="PolicyLoadError: simulated unreadable member",
        ),
    ]
    return runs


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("bidist")
    # A value-learner run in the same store: its win-rate columns and the policy runs' PPO columns mix.
    value_run = FakeRun("smax", "3m", "qmix", 0, 0.75)
    return write_suite(
        root, "bidist_synth", bidist_runs() + [value_run], manifest="name: bidist_synth\npaper: bidist\n"
    )


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
    assert [(r.scenario, r.population) for r in table.rows] == [
        (SUBSTRATE, SUITE_POPULATION),
        (BOT_SCENARIO, BOT_POPULATION),
    ]
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
    assert bots.cells["bidist"].agg.median == pytest.approx(2.2) and bots.cells["mappo"].agg.median == pytest.approx(
        1.1
    )
    assert bots.cells["selfplay"].n_done == 0
    pairs = {(c.scenario, c.y): c.poi.p for c in table.comparisons}
    assert pairs[(SUBSTRATE, "rpm")] == 1.0 and pairs[(BOT_SCENARIO, "mappo")] == 1.0
    assert (BOT_SCENARIO, "rpm") not in pairs


def test_bidist_verdict_is_inconclusive_while_rivals_are_not_run(suite, numbers):
    # bidist beats every baseline on the held-out row, but on the bot scenario only mappo was evaluated,
    # with 3 seeds at 40k env steps, on one of the claim's five substrates: the bar is not met
    verdict = next(v for v in evaluate_claims(collect(suite), numbers, REPS) if v.claim.id == "bidist_generalises")
    assert verdict.verdict == INCONCLUSIVE
    assert verdict.missing == [
        "budget 40k of 10M env steps",
        "3 of 5 seeds",
        f"not run: randnet, opre, selfplay, rpm on {BOT_SCENARIO}",
        "not run on 4 of 5 scenarios: prisoners_dilemma_in_the_matrix__repeated, "
        "running_with_scissors_in_the_matrix__repeated, collaborative_cooking__asymmetric, clean_up",
    ]
    assert any(f"co-players: {SUITE_POPULATION}" in m for m in verdict.measured_on)
    assert any(f"co-players: {BOT_POPULATION}" in m for m in verdict.measured_on)
    # what the runs show so far, not a verdict: a 3 vs 3 complete separation is p = 1/20 before Holm
    assert "So far, not a verdict" in verdict.reason and "bidist > opre: p = 0.050 (Holm" in verdict.reason
    assert "P(bidist > opre) = 1.00" in verdict.reason and "bidist_meltingpot" in verdict.claim.decided_by


def test_bidist_verdict_not_run_when_nothing_was_evaluated(tmp_path, numbers):
    # trained but never evaluated in cross-play: not run, and the reason says what is missing
    pending = [
        FakeRun("meltingpot", SUBSTRATE, lb, 0, 1.0, paper="bidist", algorithm="mappo") for lb in ("bidist", "mappo")
    ]
    data = collect(write_suite(tmp_path, "pending", pending))
    verdict = next(v for v in evaluate_claims(data, numbers, REPS) if v.claim.id == "bidist_generalises")
    assert verdict.verdict == NOT_RUN
    assert "bidist: 1 of 1 runs trained, 0 evaluated" in verdict.reason and "no held-out population" in verdict.reason


def test_bidist_section_of_the_html(suite):
    html = render_html(collect(suite), load_paper_numbers(), suite / "report", REPS)
    section = html[html.index('id="bidist"') : html.index('id="missing"')]
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
    assert "3m" in html[: html.index('id="bidist"')]


# Co-player kinds (format 2 crossplay.json): a column per kind, the score and the gap ------------------

# Per label, per seed 0, 1, 2: (round robin, held-out checkpoints, uniform random, self-play).
KINDS = {
    "bidist": [(3.0, 4.0, 2.0, 5.0), (3.5, 4.5, 2.5, 6.0), (2.5, 3.5, 1.5, 4.0)],
    "mappo": [(1.0, 2.0, 1.5, 6.0), (2.0, 3.0, 2.5, 7.0), (1.5, 2.5, 2.0, 8.0)],
}
KIND_COLUMNS = ["round_robin", "heldout", "random", "self_play"]


@pytest.fixture(scope="module")
def coplayer_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("coplayers")
    runs = [
        FakeRun(
            "meltingpot",
            SUBSTRATE,
            label,
            seed,
            2.0,
            paper="bidist",
            algorithm="mappo",
            kinds=dict(zip(KIND_COLUMNS, values)),
        )
        for label, per_seed in KINDS.items()
        for seed, values in enumerate(per_seed)
    ]
    runs += [FakeRun("meltingpot", SUBSTRATE, "mappo", 100, 1.0, group="heldout", paper="bidist", algorithm="mappo")]
    runs += [FakeRun("meltingpot", SUBSTRATE, "mappo", 3, 2.0, paper="bidist", algorithm="mappo")]  # not evaluated
    return write_suite(root, "coplay_synth", runs, manifest="name: coplay_synth\npaper: bidist\n")


def test_crossplay_json_per_kind_breakdown_is_collected(coplayer_suite):
    data = collect(coplayer_suite)
    cp = data.crossplay
    assert sorted(set(cp["kind"])) == sorted(KIND_COLUMNS + ["coplayer_score"])
    bidist0 = cp[(cp["label"] == "bidist") & (cp["seed"] == 0)].set_index("kind")["value"]
    assert bidist0.to_dict() == {
        "round_robin": 3.0,
        "heldout": 4.0,
        "random": 2.0,
        "self_play": 5.0,
        "coplayer_score": pytest.approx(3.0),
    }
    runs = data.runs.set_index(["label", "seed"])
    assert runs.loc[("bidist", 0), "final_score"] == pytest.approx(3.0)  # the score: mean of the unseen kinds


def test_coplayer_table_has_a_column_per_kind_the_score_and_the_gap(coplayer_suite):
    from reports.tables import build_coplayer_table

    table = build_coplayer_table(collect(coplayer_suite), "main", REPS)
    assert table.columns == KIND_COLUMNS + ["score", "gap"]
    assert [(r.scenario, r.label) for r in table.rows] == [(SUBSTRATE, "bidist"), (SUBSTRATE, "mappo")]
    bidist, mappo = table.rows
    for row, per_seed in ((bidist, KINDS["bidist"]), (mappo, KINDS["mappo"])):
        for i, kind in enumerate(KIND_COLUMNS):
            assert row.cells[kind].values == [v[i] for v in per_seed]
        scores = [sum(v[:3]) / 3 for v in per_seed]
        assert row.cells["score"].values == pytest.approx(scores)
        assert row.cells["gap"].values == pytest.approx([v[3] - s for v, s in zip(per_seed, scores)])
    # hand-computed medians: bidist score per seed 3.0, 3.5, 2.5 -> 3.0; gap 2.0, 2.5, 1.5 -> 2.0
    assert bidist.cells["score"].agg.median == pytest.approx(3.0) and bidist.cells["gap"].agg.median == pytest.approx(
        2.0
    )
    # mappo: scores 1.5, 2.5, 2.0 -> 2.0; gaps 4.5, 4.5, 6.0 -> 4.5 (in distribution with itself, not with others)
    assert mappo.cells["score"].agg.median == pytest.approx(2.0) and mappo.cells["gap"].agg.median == pytest.approx(4.5)
    assert (mappo.cells["heldout"].n_done, mappo.n_runs) == (3, 4)  # seed 3: not evaluated yet
    assert set(table.population_kinds) == set(KIND_COLUMNS + ["score", "gap"])
    # the verdict's cross-play table keeps one row: the score (the per-kind rows are this table's)
    rows = build_crossplay_table(collect(coplayer_suite), "main", REPS).rows
    assert len(rows) == 1 and rows[0].cells["bidist"].agg.median == pytest.approx(3.0)


def test_crossplay_against_an_incomplete_population_is_not_a_result(tmp_path):
    """A focal run evaluated while some co-players had not finished did not meet the schedule every
    focal run meets: no score, no table value, and the report says why and what to do."""
    runs = [
        FakeRun("meltingpot", SUBSTRATE, "bidist", 0, 2.0, paper="bidist", kinds=dict(zip(KIND_COLUMNS, KINDS["bidist"][0]))),
        FakeRun(
            "meltingpot", SUBSTRATE, "bidist", 1, 2.0, paper="bidist",
            kinds=dict(zip(KIND_COLUMNS, KINDS["bidist"][1])), unplayed=6,
        ),
        FakeRun("meltingpot", SUBSTRATE, "mappo", 100, 1.0, group="heldout", paper="bidist", algorithm="mappo"),
    ]  # fmt: skip
    root = write_suite(tmp_path, "partial", runs, manifest="name: partial\npaper: bidist\n")
    data = collect(root)
    by_seed = data.runs.set_index("seed")
    assert by_seed.loc[0, "final_score"] == pytest.approx(3.0) and by_seed.loc[0, "crossplay_state"] == "done"
    assert math.isnan(by_seed.loc[1, "final_score"]) and by_seed.loc[1, "crossplay_state"] == "incomplete"
    seed1 = data.crossplay[data.crossplay["seed"] == 1]
    assert set(seed1["eval_state"]) == {"incomplete"}
    from reports.tables import build_coplayer_table

    (row,) = build_coplayer_table(data, "main", REPS).rows
    assert row.cells["score"].values == [pytest.approx(3.0)] and (row.cells["score"].n_done, row.n_runs) == (1, 2)
    html = render_html(data, load_paper_numbers(), root / "report", REPS)
    assert "evaluated against an incomplete population (6 scheduled episodes skipped" in html


def test_coplayer_table_in_the_html(coplayer_suite):
    html = render_html(collect(coplayer_suite), load_paper_numbers(), coplayer_suite / "report", REPS)
    section = html[html.index('id="coplayers-main"') : html.index('id="missing"')]
    table = section[section.index("<table") : section.index("</table>")]
    header = table[: table.index("</tr>")]
    for title in (
        "round robin (other algorithms)",
        "held-out checkpoints",
        "uniform random",
        "self-play",
        "score",
        "gap",
    ):
        assert f"<th>{title}</th>" in header
    bidist_row = table[table.index("<td>bidist</td>") : table.index("<td>mappo</td>")]
    # medians per column: 3.00, 4.00, 2.00, 5.00, score 3.00, gap 2.00
    assert [c.split("</b>")[0] for c in bidist_row.split("<b>")[1:]] == ["3.00", "4.00", "2.00", "5.00", "3.00", "2.00"]
    mappo_row = table[table.index("<td>mappo</td>") :]
    assert "n=3 of 4" in mappo_row and "<b>4.50</b>" in mappo_row
    assert "same partner schedule" in section


def test_the_floor_row_closes_the_coplayer_table(coplayer_suite):
    """A uniform-random focal player's evaluation (<suite>/floor/<id>/crossplay.json, written by the
    cross-play phase) is the table's last row: its mean +- standard error over its episodes."""
    import json

    from reports.collect import FLOOR_DIR
    from reports.tables import build_coplayer_table
    from suites.crossplay_worker import FLOOR_DIR as WRITTEN_TO

    assert FLOOR_DIR == WRITTEN_TO
    floor = coplayer_suite / FLOOR_DIR / "f00"
    floor.mkdir(parents=True)
    spec = {"id": "f00", "paper": "bidist", "family": "meltingpot", "scenario": SUBSTRATE}
    (floor / "spec.json").write_text(json.dumps({**spec, "algorithm": "uniform_random", "group": "floor", "seed": 0}))
    values = {"round_robin": 1.0, "heldout": 1.5, "random": 0.5, "self_play": 0.75}
    evaluations = [
        {"kind": k, "state": "done", "focal_per_capita_return": v, "focal_per_capita_return_sem": 0.25, "episodes": 16}
        for k, v in values.items()
    ] + [{"kind": "coplayer_score", "state": "done", "focal_per_capita_return": 1.0, "episodes": 48}]
    (floor / "crossplay.json").write_text(json.dumps({"format": 2, "state": "done", "evaluations": evaluations}))
    data = collect(coplayer_suite)
    rows = build_coplayer_table(data, "main", REPS).rows
    assert [(r.label, r.floor) for r in rows] == [
        ("bidist", False),
        ("mappo", False),
        ("uniform random (floor)", True),
    ]
    floor_row = rows[-1]
    assert {c: cell.values for c, cell in floor_row.cells.items()} == {
        **{k: [v] for k, v in values.items()},
        "score": [1.0],
        "gap": [pytest.approx(-0.25)],
    }
    html = render_html(data, load_paper_numbers(), coplayer_suite / "report", REPS)
    table = html[html.index('id="coplayers-main"') : html.index('id="missing"')]
    last = table[table.index("<td>uniform random (floor)</td>") : table.index("</table>")]
    assert [c.split("</b>")[0] for c in last.split("<b>")[1:]] == ["1.00", "1.50", "0.50", "0.75", "1.00", "-0.25"]
    assert "&plusmn; 0.25 s.e." in last and "16 episodes" in last
    assert "a player that learned nothing" in table
