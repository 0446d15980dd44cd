"""The CI regression checker: its rule on constructed results, and end to end through the
orchestrator, failing on a deliberately weakened learner (lr 0) and passing on the real one."""

from __future__ import annotations

import pytest
import yaml

from ci import check
from reports.stats import aggregate
from tests.reports.synthetic import FakeRun, write_suite

# OW-QMIX finds the matrix game's optimum (return 8) within a few hundred one-step episodes under
# uniform exploration; with lr 0 its greedy joint action stays whatever the initial weights pick.
TINY_MANIFEST = """
name: ci_tiny
paper: ddn
budget: {env_steps: 800, eval_interval: 200, eval_episodes: 8}
seeds: [0, 1]
overrides: {profile: pymarl2}
scenarios:
  - {family: matrix_game, scenario: wqmix_payoff}
algorithms:
  - {name: ow_wqmix}
"""
TINY_BANDS = {"bands": {"matrix_game/wqmix_payoff/ow_wqmix": {"lower": 6.0, "upper": 8.0}}}


def result(values, band, failed=0):
    agg = aggregate(values, reps=500)
    return check.Result("f/s/l", agg.n, failed, agg.median, agg.median_lo, agg.median_hi, list(values), band)


def test_rule_fails_only_when_the_whole_interval_is_below_the_band():
    band = {"lower": 5.0, "upper": 8.0}
    assert result([7.0, 8.0, 7.5], band).status == "ok"
    assert result([1.0, 2.0, 6.0], band).status == "ok"  # CI of the median reaches the band: not proven worse
    assert result([1.0, 2.0, 3.0], band).status == "REGRESSION"
    assert result([9.0, 9.5, 10.0], band).status == "above band"
    assert result([7.0, 8.0], band, failed=1).status == "REGRESSION (run failed)"
    assert result([], band).status == "REGRESSION (no finished run)"
    assert result([1.0], None).status == "no band (not gated)"


def test_compare_reads_a_suite_and_matches_bands(tmp_path):
    runs = [FakeRun("predator_prey", "stag_hunt_small", "qmix", s, f) for s, f in enumerate([4.0, 6.0, 5.0])]
    runs.append(FakeRun("predator_prey", "stag_hunt_small", "vdn", 0, None, state="failed", error="boom"))
    suite = write_suite(tmp_path, "ci", runs)
    bands = {"predator_prey/stag_hunt_small/qmix": {"lower": 3.0, "upper": 9.0}}
    got = {r.key: r for r in check.compare(suite, bands, reps=500)}
    assert got["predator_prey/stag_hunt_small/qmix"].median == pytest.approx(5.0)
    assert got["predator_prey/stag_hunt_small/qmix"].status == "ok"
    assert got["predator_prey/stag_hunt_small/vdn"].failed


def test_effective_manifest_puts_overrides_on_every_algorithm(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(TINY_MANIFEST)
    out = check.effective_manifest(manifest, {"lr": 0.0}, tmp_path / "out")
    data = yaml.safe_load(out.read_text())
    assert data["algorithms"] == [{"name": "ow_wqmix", "overrides": {"lr": 0.0}}]
    assert check.effective_manifest(manifest, {}, tmp_path / "out") == manifest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ci")
    (root / "m.yaml").write_text(TINY_MANIFEST)
    (root / "bands.yaml").write_text(yaml.safe_dump(TINY_BANDS))
    return root


def test_checker_passes_on_the_real_learner(tiny, capsys):
    code = check.main(
        [
            "--manifest",
            str(tiny / "m.yaml"),
            "--bands",
            str(tiny / "bands.yaml"),
            "--out",
            str(tiny / "real"),
            "--reps",
            "500",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "matrix_game/wqmix_payoff/ow_wqmix" in out and "within their bands" in out


def test_checker_fails_on_a_weakened_learner(tiny, capsys):
    code = check.main(
        [
            "--manifest",
            str(tiny / "m.yaml"),
            "--bands",
            str(tiny / "bands.yaml"),
            "--out",
            str(tiny / "weak"),
            "--override",
            "lr=0",
            "--reps",
            "500",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1, out
    assert "REGRESSION" in out
