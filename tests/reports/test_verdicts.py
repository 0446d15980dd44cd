"""Verdicts against their evidence bars: each outcome for each claim kind on synthetic suites, the
quick suites' reports (inconclusive by design), and the suites named as deciding each claim."""

from __future__ import annotations

import itertools
import re
from html import unescape
from pathlib import Path

import pytest
import yaml

from reports.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, OUTCOMES, REPRODUCED, evaluate_claims, summary_lines
from reports.collect import collect
from reports.paper import load_paper_numbers
from reports.render import render_html
from tests.reports.conftest import REPS
from tests.reports.synthetic import FakeRun, write_suite

REPO = Path(__file__).resolve().parents[2]
DDN_BUDGET, BIDIST_BUDGET = 2_000_000, 10_000_000
HIGH = [0.9, 0.92, 0.95, 0.97, 0.99]
LOW = [0.1, 0.2, 0.3, 0.4, 0.5]
BASELINES = ("qmix", "ow_wqmix", "cw_wqmix")
_names = itertools.count()


@pytest.fixture(scope="module")
def numbers():
    return load_paper_numbers()


def arm(label, finals, scenario="3s_vs_5z", family="smax", group="main", env_steps=DDN_BUDGET, **kw) -> list[FakeRun]:
    return [
        FakeRun(family, scenario, label, seed, f, group=group, env_steps=env_steps, **kw)
        for seed, f in enumerate(finals)
    ]


def judge(tmp_path, numbers, runs, claim_id):
    suite = write_suite(tmp_path, f"suite{next(_names)}", runs)
    return next(v for v in evaluate_claims(collect(suite), numbers, REPS) if v.claim.id == claim_id)


def baselines(finals, **kw) -> list[FakeRun]:
    return [r for label in BASELINES for r in arm(label, finals, **kw)]


# value --------------------------------------------------------------------------------------------


def test_value_claim_reproduced_at_the_bar(tmp_path, numbers):
    v = judge(tmp_path, numbers, arm("ddn", HIGH), "ddn_3s_vs_5z")
    assert v.verdict == REPRODUCED and v.missing == []
    assert v.headline == "reproduced (the paper's number lies inside our interval widened by the tolerance)"
    assert "paper 97.01% vs our median 95.0% [" in v.reason and "(n = 5)" in v.reason and "± 5.0 pts" in v.reason
    assert v.measured_on == ["SMAX stand-in for StarCraft II (JAX re-implementation of the maps)"] and v.on_stand_in


def test_value_claim_not_reproduced_says_on_which_side(tmp_path, numbers):
    v = judge(tmp_path, numbers, arm("ddn", [0.5, 0.55, 0.6, 0.62, 0.7]), "ddn_3s_vs_5z")
    assert v.verdict == NOT_REPRODUCED and "lies below the paper's number" in v.qualifier
    assert "excludes the paper's number" in v.reason and "ours minus paper: -37.0 pts" in v.reason


@pytest.mark.parametrize(
    "finals, env_steps, missing",
    [
        (HIGH[:2], DDN_BUDGET, ["2 of 5 seeds"]),  # a bootstrap interval of a median over 2 seeds says nothing
        (HIGH, 80_000, ["budget 80k of 2M env steps"]),
        ([0.0, 0.0], 80_000, ["budget 80k of 2M env steps", "2 of 5 seeds"]),
    ],
)
def test_value_claim_inconclusive_below_the_bar(tmp_path, numbers, finals, env_steps, missing):
    v = judge(tmp_path, numbers, arm("ddn", finals, env_steps=env_steps), "ddn_3s_vs_5z")
    assert v.verdict == INCONCLUSIVE and v.missing == missing
    assert v.headline == f"inconclusive ({'; '.join(missing)})"
    assert "So far, not a verdict: our median" in v.reason and "To decide it:" in v.reason


def test_value_claim_not_run(tmp_path, numbers):
    v = judge(tmp_path, numbers, arm("qmix", HIGH, scenario="3m"), "ddn_3s_vs_5z")
    assert v.verdict == NOT_RUN and v.rows == [] and "no finished runs of ddn" in v.reason


# better -------------------------------------------------------------------------------------------


def test_better_reproduced_at_5_vs_5_with_its_p_value(tmp_path, numbers):
    v = judge(tmp_path, numbers, arm("ddn", HIGH) + baselines(LOW), "ddn_beats_baselines_3s_vs_5z")
    assert v.verdict == REPRODUCED
    # each rival 1/252 one-sided, 3/252 after Holm over the three
    comps = v.rows[0].result.comparisons
    assert [c.y for c in comps] == list(BASELINES)
    assert all(c.test.p == pytest.approx(1 / 252) and c.p_holm == pytest.approx(3 / 252) for c in comps)
    assert v.headline == "reproduced (p = 0.012 after Holm, every rival)"
    assert "ddn > qmix: p = 0.004 (Holm 0.012), n = 5 vs 5" in v.reason
    assert "P(ddn > qmix) = 1.00, median difference +65.0 pts [" in v.reason
    assert v.bar_met == ["3s_vs_5z, met: seeds ddn 5, qmix 5, ow_wqmix 5, cw_wqmix 5; runs of 2M env steps"]


def test_better_reversed_at_5_vs_5_is_not_reproduced_the_other_way(tmp_path, numbers):
    v = judge(tmp_path, numbers, arm("ddn", LOW) + baselines(HIGH), "ddn_beats_baselines_3s_vs_5z")
    assert v.verdict == NOT_REPRODUCED and v.headline == "not reproduced (data point the other way)"
    assert "P(ddn > qmix) = 0.00" in v.reason


def test_better_not_significant_points_the_same_way(tmp_path, numbers):
    # P(ddn > rival) = 15/25 = 0.6: above one half, far from significant
    v = judge(
        tmp_path,
        numbers,
        arm("ddn", [0.5, 0.6, 0.7, 0.8, 0.9]) + baselines([0.45, 0.55, 0.65, 0.75, 0.85]),
        "ddn_beats_baselines_3s_vs_5z",
    )
    assert v.verdict == NOT_REPRODUCED and v.headline == "not reproduced (not significant, data point the same way)"


def test_better_holm_correction_decides(tmp_path, numbers):
    # each rival alone: p = 5/252 = 0.020 < 0.05; Holm over three: 0.060 for every one
    v = judge(
        tmp_path, numbers, arm("ddn", HIGH) + baselines([0.5, 0.6, 0.62, 0.7, 0.95]), "ddn_beats_baselines_3s_vs_5z"
    )
    comps = v.rows[0].result.comparisons
    assert all(c.test.p == pytest.approx(5 / 252) and c.p_holm == pytest.approx(15 / 252) for c in comps)
    assert v.verdict == NOT_REPRODUCED and v.headline == "not reproduced (not significant, data point the same way)"


def test_better_mixed_rivals_are_named(tmp_path, numbers):
    runs = (
        arm("ddn", HIGH)
        + arm("qmix", LOW)
        + arm("ow_wqmix", [0.85, 0.9, 0.93, 0.96, 0.98])
        + arm("cw_wqmix", [1.0] * 5)
    )
    v = judge(tmp_path, numbers, runs, "ddn_beats_baselines_3s_vs_5z")
    assert v.verdict == NOT_REPRODUCED
    assert (
        v.qualifier == "not significant, data point the same way (vs ow_wqmix); data point the other way (vs cw_wqmix)"
    )


def test_better_with_a_missing_rival_is_inconclusive(tmp_path, numbers):
    v = judge(tmp_path, numbers, arm("ddn", HIGH) + arm("qmix", LOW), "ddn_beats_baselines_3s_vs_5z")
    assert v.verdict == INCONCLUSIVE and v.missing == ["not run: ow_wqmix, cw_wqmix"]
    assert "So far, not a verdict" in v.reason and "ddn > qmix: p = 0.004" in v.reason  # never judged on a subset


def test_better_2_vs_2_complete_separation_is_inconclusive(tmp_path, numbers):
    v = judge(tmp_path, numbers, arm("ddn", HIGH[:2]) + baselines(LOW[:2]), "ddn_beats_baselines_3s_vs_5z")
    assert v.verdict == INCONCLUSIVE and v.missing == ["2 of 5 seeds"]
    assert "ddn > qmix: p = 0.167 (Holm 0.500), n = 2 vs 2" in v.reason  # 1/6: what 2 vs 2 can show at best


def test_better_uneven_seeds_name_each_arm(tmp_path, numbers):
    v = judge(
        tmp_path,
        numbers,
        arm("ddn", HIGH) + arm("qmix", LOW[:3]) + arm("ow_wqmix", LOW) + arm("cw_wqmix", LOW),
        "ddn_beats_baselines_3s_vs_5z",
    )
    assert v.verdict == INCONCLUSIVE and v.missing == ["3 of 5 seeds (ddn 5, qmix 3, ow_wqmix 5, cw_wqmix 5)"]


def test_ablation_better_borrows_the_default_ddn(tmp_path, numbers):
    runs = arm("ddn", HIGH) + arm("ddn_raw_state", LOW, group="ablation_state", algorithm="ddn")
    assert judge(tmp_path, numbers, runs, "personalization_3s_vs_5z").verdict == REPRODUCED
    runs = arm("ddn", HIGH, group="ablation_state", env_steps=1_000_000) + arm(
        "ddn_raw_state", LOW, group="ablation_state", algorithm="ddn"
    )
    v = judge(tmp_path, numbers, runs, "personalization_3s_vs_5z")
    assert v.verdict == INCONCLUSIVE and v.missing == ["budget 1M of 2M env steps"]  # the weakest arm sets it


# best / lags --------------------------------------------------------------------------------------

MU = ("ddn_mu_0.1", "ddn_mu_0.25", "ddn_mu_0.5", "ddn_mu_0.9")


def test_best_is_better_than_every_other_arm(tmp_path, numbers):
    sweep = arm("ddn_mu_0.75", HIGH, group="mu_sweep", algorithm="ddn")
    others = [r for label in MU for r in arm(label, LOW, group="mu_sweep", algorithm="ddn")]
    v = judge(tmp_path, numbers, sweep + others, "mu_075_best")
    assert v.verdict == REPRODUCED and "ddn_mu_0.75 > ddn_mu_0.9: p = 0.004 (Holm 0.016)" in v.reason
    # mu = 0.9 above 0.75: refuted, the other way
    others = [r for label in MU[:3] for r in arm(label, LOW, group="mu_sweep", algorithm="ddn")]
    others += arm("ddn_mu_0.9", [1.0] * 5, group="mu_sweep", algorithm="ddn")
    v = judge(tmp_path, numbers, sweep + others, "mu_075_best")
    assert v.verdict == NOT_REPRODUCED and v.qualifier == "data point the other way (vs ddn_mu_0.9)"
    v = judge(tmp_path, numbers, sweep + others[5:], "mu_075_best")  # no mu = 0.1 run
    assert v.verdict == INCONCLUSIVE and v.missing == ["not run: ddn_mu_0.1"]


def test_lags_needs_every_baseline_above(tmp_path, numbers):
    on = {"scenario": "2s_vs_1sc", "family": "smac"}
    v = judge(tmp_path, numbers, arm("ddn", LOW, **on) + baselines(HIGH, **on), "ddn_lags_2s_vs_1sc")
    assert v.verdict == REPRODUCED and "qmix > ddn: p = 0.004 (Holm 0.012)" in v.reason
    assert v.measured_on == ["SMAC (StarCraft II)"]
    v = judge(tmp_path, numbers, arm("ddn", HIGH, **on) + baselines(LOW, **on), "ddn_lags_2s_vs_1sc")
    assert v.verdict == NOT_REPRODUCED and v.headline == "not reproduced (data point the other way)"
    v = judge(tmp_path, numbers, arm("ddn", LOW, **on) + baselines(HIGH[:3], **on), "ddn_lags_2s_vs_1sc")
    assert v.verdict == INCONCLUSIVE and v.missing == ["3 of 5 seeds (ddn 5, qmix 3, ow_wqmix 3, cw_wqmix 3)"]


# cross-play (BiDist) ------------------------------------------------------------------------------

BIDIST_ARMS = ("bidist", "mappo", "randnet", "opre", "selfplay", "rpm")


def bidist_suite(substrates, labels=BIDIST_ARMS, seeds=5, env_steps=BIDIST_BUDGET, high=HIGH, low=LOW) -> list[FakeRun]:
    runs = []
    for substrate in substrates:
        for label in labels:
            values = high if label == "bidist" else low
            runs += [
                FakeRun(
                    "meltingpot",
                    substrate,
                    label,
                    s,
                    1.0,
                    paper="bidist",
                    algorithm="mappo",
                    crossplay=10 * values[s],
                    env_steps=env_steps,
                )
                for s in range(seeds)
            ]
        runs += [
            FakeRun(
                "meltingpot",
                substrate,
                "mappo",
                s,
                1.0,
                group="heldout",
                paper="bidist",
                algorithm="mappo",
                env_steps=env_steps,
            )
            for s in (100, 101)
        ]
    return runs


def test_crossplay_claim_outcomes(tmp_path, numbers):
    claim = next(c for c in numbers.claims if c.id == "bidist_generalises")
    v = judge(tmp_path, numbers, bidist_suite(claim.scenarios), claim.id)
    assert v.verdict == REPRODUCED and len(v.rows) == 5
    assert "bidist > rpm: p = 0.004 (Holm 0.020)" in v.reason  # 5 rivals: 5/252
    assert v.headline == "reproduced (p ≤ 0.020 after Holm, every rival, on all 5 rows of the cross-play table)"
    v = judge(tmp_path, numbers, bidist_suite(claim.scenarios, high=LOW, low=HIGH), claim.id)
    assert v.verdict == NOT_REPRODUCED and "data point the other way" in v.qualifier
    v = judge(tmp_path, numbers, bidist_suite(claim.scenarios[:2]), claim.id)  # three substrates not run
    assert v.verdict == INCONCLUSIVE
    assert v.missing == [
        "not run on 3 of 5 scenarios: running_with_scissors_in_the_matrix__repeated, "
        "collaborative_cooking__asymmetric, clean_up"
    ]
    v = judge(tmp_path, numbers, bidist_suite(claim.scenarios, labels=BIDIST_ARMS[:4]), claim.id)
    assert v.verdict == INCONCLUSIVE and v.missing == ["not run: selfplay, rpm"]
    # refuted on one substrate with the bar met, short of it on another: refuted
    runs = bidist_suite(claim.scenarios[:4]) + bidist_suite(claim.scenarios[4:], high=LOW, low=HIGH, seeds=5)
    runs = [r for r in runs if not (r.scenario == claim.scenarios[0] and r.seed >= 3)]
    v = judge(tmp_path, numbers, runs, claim.id)
    assert v.verdict == NOT_REPRODUCED and v.qualifier == "clean_up: data point the other way"


# The quick suites: every claim with runs is inconclusive, and says why ------------------------------


def manifest_runs(name: str, final: float) -> list[FakeRun]:
    """Finished runs of a shipped manifest at its own budgets and seeds, every final score ``final``;
    BiDist manifests: focal runs with a cross-play score, and their held-out population."""
    m = yaml.safe_load((REPO / "suites" / f"{name}.yaml").read_text())
    paper, runs = m["paper"], []
    for sc in m["scenarios"]:
        steps = (sc.get("budget") or {}).get("env_steps", m["budget"]["env_steps"])
        for alg in m["algorithms"]:
            label = alg.get("label", alg["name"])
            runs += [
                FakeRun(
                    sc["family"],
                    sc["scenario"],
                    label,
                    seed,
                    final,
                    group=alg.get("group", "main"),
                    algorithm=alg["name"] if paper == "ddn" else "mappo",
                    paper=paper,
                    env_steps=steps,
                    crossplay=final if paper == "bidist" else None,
                )
                for seed in m["seeds"]
            ]
        held = m.get("heldout") or {}
        runs += [
            FakeRun(
                sc["family"],
                sc["scenario"],
                alg,
                seed,
                final,
                group="heldout",
                paper=paper,
                algorithm="mappo",
                env_steps=steps,
            )
            for alg in held.get("algorithms", [])
            for seed in held.get("seeds", [])
        ]
    return runs


def outcome_cells(html: str) -> list[str]:
    return re.findall(r'data-outcome="([^"]+)"', html)


def visible(html: str) -> str:
    """The page's text as a reader sees it (tags dropped, whitespace collapsed)."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html.replace("<wbr>", ""))).split())


def test_quick_report_has_no_verdict(tmp_path, numbers):
    # every learning curve at 0%, 2 seeds, 80k env steps: what a fresh `make reproduce` produces
    suite = write_suite(tmp_path, "quick", manifest_runs("quick", 0.0))
    data = collect(suite)
    verdicts = {v.claim.id: v for v in evaluate_claims(data, numbers, REPS)}
    assert {v.verdict for v in verdicts.values()} == {INCONCLUSIVE, NOT_RUN}
    for claim in ("ddn_3s_vs_5z", "ddn_beats_baselines_3s_vs_5z"):
        v = verdicts[claim]
        assert v.headline == "inconclusive (budget 80k of 2M env steps; 2 of 5 seeds)"
        assert v.budgets == [80_000] and v.paper_budget == 2_000_000 and v.on_stand_in
        assert "ddn_smax" in v.claim.decided_by
    assert "ddn > qmix: p = n/a" not in verdicts["ddn_beats_baselines_3s_vs_5z"].reason
    assert "P(ddn > qmix) = 0.50" in verdicts["ddn_beats_baselines_3s_vs_5z"].reason  # all at 0%: no difference
    html = render_html(data, numbers, suite / "report", REPS)
    cells = outcome_cells(html)
    assert len(cells) == len(numbers.claims) and set(cells) <= {INCONCLUSIVE, NOT_RUN}
    assert "inconclusive (budget 80k of 2M env steps; 2 of 5 seeds) decided by: ddn_smac, ddn_smax" in visible(html)


def test_bidist_quick_report_has_no_verdict(tmp_path, numbers):
    suite = write_suite(tmp_path, "bidist_quick", manifest_runs("bidist_quick", 1.0))
    data = collect(suite)
    v = next(v for v in evaluate_claims(data, numbers, REPS) if v.claim.id == "bidist_generalises")
    assert v.verdict == INCONCLUSIVE
    assert v.missing[:2] == ["budget 8k of 10M env steps", "1 of 5 seeds"]
    assert v.missing[2].startswith("not run on 4 of 5 scenarios: prisoners_dilemma_in_the_matrix__repeated, ")
    # 1 vs 1: nothing to test, and it says so
    assert "no test vs mappo, randnet, opre, selfplay, rpm (a side has a single seed; a test needs 2)" in v.reason
    assert "median difference +0.00 (one seed each: no interval)" in v.reason
    assert any("co-players: suite-trained held-out population" in m for m in v.measured_on)
    html = render_html(data, numbers, suite / "report", REPS)
    assert set(outcome_cells(html)) <= {INCONCLUSIVE, NOT_RUN} and INCONCLUSIVE in outcome_cells(html)
    text = visible(html)
    assert "decided by: bidist_meltingpot" in text and "inconclusive (budget 8k of 10M env steps; 1 of 5 seeds" in text


# The data file's bars and the suites that decide the claims ------------------------------------


def test_every_claim_has_a_bar_and_its_deciding_suites_meet_it(numbers):
    assert numbers.bars["ddn"].min_seeds == 5 and numbers.bars["ddn"].min_budget == 2_000_000
    assert numbers.bars["bidist"].min_seeds == 5 and numbers.bars["bidist"].budget_why
    for claim in numbers.claims:
        paper = numbers.papers[claim.paper]
        assert claim.bar is not None and claim.decided_by, claim.id
        for name in claim.decided_by:
            m = yaml.safe_load((REPO / "suites" / f"{name}.yaml").read_text())
            assert len(m["seeds"]) >= claim.bar.min_seeds, (claim.id, name)
            cells = {(alg.get("group", "main"), alg.get("label", alg["name"])) for alg in m["algorithms"]}
            assert {(claim.group, a) for a in claim.arms} <= cells, (claim.id, name)
            scenarios = {sc["scenario"]: sc for sc in m["scenarios"] if sc["family"] in (paper.family, paper.stand_in)}
            needed = claim.scenarios or tuple(scenarios)
            for scenario in needed:
                assert scenario in scenarios, (claim.id, name, scenario)
                steps = (scenarios[scenario].get("budget") or {}).get("env_steps", m["budget"]["env_steps"])
                assert steps >= claim.bar.min_budget, (claim.id, name, scenario)


def test_quick_suites_cannot_decide_any_claim(numbers):
    for name in ("quick", "bidist_quick"):
        m = yaml.safe_load((REPO / "suites" / f"{name}.yaml").read_text())
        assert all(name not in c.decided_by for c in numbers.claims)
        assert len(m["seeds"]) < min(b.min_seeds for b in numbers.bars.values())


def test_the_data_file_refuses_a_claim_without_a_bar(tmp_path):
    text = (REPO / "reports" / "paper_numbers.yaml").read_text().replace("    bar: ddn\n", "", 1)
    path = tmp_path / "numbers.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="needs an evidence bar"):
        load_paper_numbers(path)


# The terminal summary ---------------------------------------------------------------------------


def test_summary_lines_use_the_report_words(tmp_path, numbers):
    suite = write_suite(tmp_path, "quick", manifest_runs("quick", 0.0))
    records = [v.record() for v in evaluate_claims(collect(suite), numbers, REPS)]
    lines = summary_lines(records)
    assert lines[0] == "claims: 2 inconclusive, 10 not run"
    assert lines[1].startswith("  inconclusive (budget 80k of 2M env steps; 2 of 5 seeds): DDN reaches a 97.01%")
    assert lines[1].endswith("[decided by: ddn_smac, ddn_smax]") and len(lines) == 3
    assert all(o in OUTCOMES for o in (r["outcome"] for r in records))
