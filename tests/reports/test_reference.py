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
from reports.reference import reference_results, reproducibility
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
        (d / "provenance.json").write_text(
            json.dumps({**prov, "git": {"commit": "feedc0ffee12", "dirty": False}, "cpu": "Test CPU"})
        )
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
    table = text[text.index("Paper, reference, this suite") : text.index("Verdicts on the papers' claims")]
    row = table[table.index("DDN reaches a 97.01%") :]
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


def test_reproducibility_check_finds_equal_prefixes_and_the_first_divergence(tmp_path, numbers, monkeypatch):
    from tests.reports.synthetic import FakeRun

    ref_runs = [
        FakeRun("smax", "3s_vs_5z", "qmix", s, final=0.2 * (s + 1), n_evals=10, env_steps=2_000_000) for s in range(3)
    ]
    records = _reference_records(tmp_path, "ddn_smax_reference", ref_runs)
    ref_dir = records / "reference" / "ddn_smax_reference" / "runs"
    by_seed = {json.loads((d / "spec.json").read_text())["seed"]: d for d in ref_dir.iterdir()}
    mine = [FakeRun("smax", "3s_vs_5z", "qmix", s, final=0.5, n_evals=4, env_steps=40_000) for s in (0, 1)]
    mine.append(FakeRun("smax", "3m", "qmix", 0, final=0.5))  # no reference has this configuration
    suite = write_suite(tmp_path, "quick", mine)
    for d in (suite / "runs").iterdir():
        spec = json.loads((d / "spec.json").read_text())
        prov = json.loads((d / "provenance.json").read_text())
        (d / "provenance.json").write_text(json.dumps({**prov, "cpu": "Test CPU"}))
        if spec["scenario"] != "3s_vs_5z":
            continue
        lines = (by_seed[spec["seed"]] / "metrics.csv").read_text().splitlines()[:5]  # header + 4 evaluations
        if spec["seed"] == 1:  # diverges at its third evaluation, still inside the seeds' range
            header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
            col = header.index("test_win_rate")
            rows[2][col] = str(float(rows[2][col]) + 0.01)
            lines = [lines[0]] + [",".join(r) for r in rows]
        (d / "metrics.csv").write_text("\n".join(lines) + "\n")
    checks = {(c.scenario, c.seed): c for c in reproducibility(suite, records)}
    same = checks[("3s_vs_5z", 0)]
    assert same.compared == 4 and same.equal == 4 and same.first_divergence is None and same.same_platform
    assert same.text.startswith("identical to reference run") and "at all 4 evaluations" in same.text
    off = checks[("3s_vs_5z", 1)]
    assert off.equal == 3 and off.diverged == 1 and off.first_divergence[0] == 20_037 and off.in_band == 1
    assert "first divergence at 20,037 env steps" in off.text and "a change of code or of a dependency" in off.text
    assert checks[("3m", 0)].text == "no reference run has this configuration"
    # In the report, one row per run.
    monkeypatch.setattr(render, "reproducibility", lambda d: reproducibility(d, records))
    monkeypatch.setattr(render, "reference_results", lambda n, reps: reference_results(n, reps, records))
    html = render.render_html(collect(suite), numbers, suite / "report", REPS)
    assert html.count('data-repro="identical"') == 1 and html.count('data-repro="diverged"') == 1
    assert html.count('data-repro="none"') == 1


def test_a_melting_pot_run_is_compared_on_its_test_returns(tmp_path):
    """A Melting Pot run is scored by cross-play, which metrics.csv does not hold: the check compares
    its evaluations' test returns instead, and says so when one side lacks them."""
    from tests.reports.synthetic import FakeRun

    def policy_run(seed: int) -> FakeRun:
        return FakeRun(
            "meltingpot",
            "stag_hunt_in_the_matrix__repeated",
            "bidist",
            seed,
            final=4.0,
            paper="bidist",
            env_steps=3_000_000,
        )

    records = _reference_records(tmp_path, "bidist_ref", [policy_run(0), policy_run(1)])
    ref_dir = records / "reference" / "bidist_ref" / "runs"
    ref_metrics = {json.loads((d / "spec.json").read_text())["seed"]: d / "metrics.csv" for d in ref_dir.iterdir()}
    suite = write_suite(tmp_path, "rerun", [policy_run(0)])
    run_dir = next((suite / "runs").iterdir())
    prov = json.loads((run_dir / "provenance.json").read_text())
    (run_dir / "provenance.json").write_text(json.dumps({**prov, "cpu": "Test CPU"}))
    lines = ref_metrics[0].read_text().splitlines()[:4]  # header + 3 evaluations of seed 0's reference
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    (check,) = reproducibility(suite, records)
    assert check.compared == 3 and check.equal == 3, check
    assert check.text.startswith("identical to reference run") and "at all 3 evaluations" in check.text
    header = lines[0].split(",")
    col = header.index("test_return_mean")
    without = [",".join(c for i, c in enumerate(line.split(",")) if i != col) for line in lines]
    (run_dir / "metrics.csv").write_text("\n".join(without) + "\n")
    (check,) = reproducibility(suite, records)
    assert check.text.endswith("cannot compare (no test_return_mean column in both metrics.csv)"), check.text


def test_a_suite_without_any_matching_run_says_so_in_one_line(tmp_path, numbers, monkeypatch):
    from tests.reports.synthetic import FakeRun

    records = _reference_records(tmp_path, "ref", [FakeRun("smax", "3m", "qmix", 0, final=0.5, env_steps=2_000_000)])
    monkeypatch.setattr(render, "reproducibility", lambda d: reproducibility(d, records))
    suite = write_suite(tmp_path, "other", [FakeRun("smax", "3s_vs_5z", "ddn", s, final=0.1) for s in (0, 1)])
    html = render.render_html(collect(suite), numbers, suite / "report", REPS)
    assert 'data-repro="none-matched"' in html and "None of this suite's 2 runs" in html
    assert 'data-repro="none"' not in html


def test_a_run_matches_a_reference_run_by_the_config_in_force_and_its_checkpoint_interval(tmp_path):
    from tests.reports.synthetic import FakeRun

    records = _reference_records(
        tmp_path, "ref", [FakeRun("smax", "3s_vs_5z", "qmix", 0, final=0.5, n_evals=6, env_steps=2_000_000)]
    )
    ref_dir = next((records / "reference" / "ref" / "runs").iterdir())
    suite = write_suite(tmp_path, "quick", [FakeRun("smax", "3s_vs_5z", "qmix", 0, final=0.5, n_evals=3)])
    run_dir = next((suite / "runs").iterdir())
    (run_dir / "metrics.csv").write_text("\n".join((ref_dir / "metrics.csv").read_text().splitlines()[:4]) + "\n")

    def check() -> str:
        (result,) = reproducibility(suite, records)
        return result.text

    assert check().startswith("identical to reference run")
    spec_path, prov_path = run_dir / "spec.json", run_dir / "provenance.json"
    spec, prov = json.loads(spec_path.read_text()), json.loads(prov_path.read_text())
    # Overrides spelled otherwise (here: the default written out) with the same config in force: a match.
    spec_path.write_text(json.dumps({**spec, "overrides": {"lr": prov["config"]["lr"]}}))
    assert check().startswith("identical to reference run")
    # The same overrides with another config in force (a default changed between commits): no match.
    prov_path.write_text(json.dumps({**prov, "config": {**prov["config"], "lr": prov["config"]["lr"] * 2}}))
    assert check() == "no reference run has this configuration"
    # A config field added after the reference ran (absent from its provenance) at its default: the
    # same configuration (a new field's default keeps the old behaviour); away from it: another.
    ref_prov_path = ref_dir / "provenance.json"
    ref_prov = json.loads(ref_prov_path.read_text())
    ref_prov_path.write_text(
        json.dumps({**ref_prov, "config": {k: v for k, v in ref_prov["config"].items() if k != "double_q"}})
    )
    assert prov["config"]["double_q"] is True  # QMIX's default (PyMARL)
    prov_path.write_text(json.dumps(prov))
    assert check().startswith("identical to reference run")
    prov_path.write_text(json.dumps({**prov, "config": {**prov["config"], "double_q": False}}))
    assert check() == "no reference run has this configuration"
    ref_prov_path.write_text(json.dumps(ref_prov))
    prov_path.write_text(json.dumps(prov))
    # Another checkpoint interval: checkpoints truncate in-flight episodes and re-seed the envs.
    budget = {**spec["budget"], "checkpoint_interval": spec["budget"]["checkpoint_interval"] + 1}
    spec_path.write_text(json.dumps({**spec, "budget": budget}))
    assert check() == "no reference run has this configuration"


def test_a_field_whose_default_changed_behaviour_reads_as_what_older_runs_ran():
    # MAPPO's network fields came with on-policy's networks as their defaults (commit 1a7a662), so a
    # provenance without them ran the earlier networks (PolicyLearnerConfig.ABSENT_MEANS), not today's.
    from reports.configuration import absent_means
    from reports.reference import _config_in_force

    assert absent_means("mappo") == {"layer_norm": False, "actor_fc_layers": 1} and absent_means("qmix") == {}
    before = {"lr": 5e-4}  # a provenance of commit 9783904 (no such keys)
    today = {"lr": 5e-4, "layer_norm": True, "actor_fc_layers": 2}
    spelled_out = {"lr": 5e-4, "layer_norm": False, "actor_fc_layers": 1}
    assert _config_in_force("mappo", before) != _config_in_force("mappo", today)
    assert _config_in_force("mappo", before) == _config_in_force("mappo", spelled_out)
    assert _config_in_force("mappo", today) == {}  # every field at its default


def _check_reference_set(records, tmp_path, numbers, monkeypatch) -> int:
    """Every reference suite under ``records`` loads without problems and renders as its own
    report, and a user's report shows each claim's reference cell from it (or, while none is
    committed, says so for every claim). Returns the number of reference suites."""
    from reports.reference import reference_suites

    monkeypatch.setattr(render, "reference_results", lambda n, reps: reference_results(n, reps, records))
    entries = reference_suites(records)
    refs = reference_results(numbers, REPS, records)
    quick = write_suite(tmp_path, "quick", manifest_runs("quick", 0.0))
    text = visible(render.render_html(collect(quick), numbers, quick / "report", REPS))
    if not entries:
        assert not refs
        assert text.count("no reference result committed yet for this claim") == len(numbers.claims)
    for entry in entries:
        data = collect(records / entry["path"])
        assert not data.problems, data.problems
        assert len(data.run_dirs) == len(entry["runs"]) > 0
        html = render.render_html(data, numbers, tmp_path / entry["suite"], REPS)
        for commit in entry["commits"]:
            assert commit[:7] in html, (entry["suite"], commit)
    assert refs or not entries
    for ref in refs.values():
        assert f"records/reference/{ref.suite}: commit" in text
    return len(entries)


def test_the_committed_reference_records_load_and_render(tmp_path, numbers, monkeypatch):
    """The shipped reference set, as CI checks it (no training)."""
    from reports.reference import RECORDS

    _check_reference_set(RECORDS, tmp_path, numbers, monkeypatch)


def test_the_reference_set_check_reads_a_committed_suite(tmp_path, numbers, monkeypatch):
    decided = arm("ddn", HIGH) + [r for b in BASELINES for r in arm(b, LOW)]
    records = _reference_records(tmp_path, "ddn_smax_reference", decided)
    assert _check_reference_set(records, tmp_path / "check", numbers, monkeypatch) == 1
