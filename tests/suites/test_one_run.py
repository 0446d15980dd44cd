"""The one-run command: one algorithm on one scenario from flags, through the same validation, run
store and report as a suite."""

from __future__ import annotations

import json

import pytest
import yaml

from suites.one_run import OneRunError, one_run, parse_sets
from tests.suites.conftest import read_metrics, run_reproduce

TINY_FLAGS = [
    "--algorithm",
    "qmix",
    "--scenario",
    "predator_prey/stag_hunt_small",
    "--set",
    "batch_size=8",
    "--set",
    "env.episode_limit=20",
    "--env-steps",
    "600",
    "--eval-interval",
    "300",
    "--eval-episodes",
    "2",
]


def test_sets_split_into_learner_overrides_and_env_options_read_as_yaml():
    overrides, options = parse_sets(["lr=0.001", "distill_losses=[B, Q]", "double_q=false", "env.n_agents=3"])
    assert overrides == {"lr": 0.001, "distill_losses": ["B", "Q"], "double_q": False}
    assert options == {"n_agents": 3}


@pytest.mark.parametrize(
    "sets,message",
    [
        (["lr"], "expected KEY=VALUE"),
        (["=1"], "expected KEY=VALUE"),
        (["env.=1"], "no option name"),
        (["lr=1", "lr=2"], "given twice"),
        (["lr=[1"], "not valid YAML"),
    ],
)
def test_bad_sets_are_refused(sets, message):
    with pytest.raises(OneRunError, match=message):
        parse_sets(sets)


def test_the_manifest_inherits_the_paper_suites_budget_and_labels_each_override_set():
    plain = yaml.safe_load(one_run("qmix", "smax/3m", [], None, {}).text)
    assert plain["paper"] == "ddn" and plain["seeds"] == [0]
    assert plain["budget"] == yaml.safe_load(open("suites/ddn_smax.yaml"))["budget"]
    assert plain["algorithms"] == [{"name": "qmix", "label": "qmix"}]
    tuned = one_run("qmix", "smax/3m", ["lr=0.001", "env.max_steps=60"], [3, 4], {"env_steps": 1000})
    data = yaml.safe_load(tuned.text)
    assert tuned.name == "run_qmix_smax_3m" == one_run("qmix", "smax/3m", [], None, {}).name  # one folder
    assert tuned.label == "qmix+env.max_steps=60+lr=0.001"  # never pooled with the plain runs
    assert data["budget"]["env_steps"] == 1000 and data["seeds"] == [3, 4]
    assert data["scenarios"] == [{"family": "smax", "scenario": "3m", "options": {"max_steps": 60}}]
    policy = yaml.safe_load(one_run("mappo", "meltingpot/stag_hunt_in_the_matrix__repeated", [], None, {}).text)
    assert policy["paper"] == "bidist"
    assert policy["budget"] == yaml.safe_load(open("suites/bidist_meltingpot.yaml"))["budget"]
    with pytest.raises(OneRunError, match="expected FAMILY/SCENARIO"):
        one_run("qmix", "3m", [], None, {})


def test_one_run_trains_writes_a_run_dir_and_report_only_reads_it(tmp_path):
    out = tmp_path / "out"
    result = run_reproduce(*TINY_FLAGS, "--out", str(out), "--no-report")
    assert result.returncode == 0, result.stderr[-3000:]
    suite_dir = out / "run_qmix_predator_prey_stag_hunt_small"
    (run_dir,) = (suite_dir / "runs").iterdir()
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["overrides"]["batch_size"] == 8 and spec["env_options"]["episode_limit"] == 20
    assert spec["label"] == "qmix+batch_size=8+env.episode_limit=20"
    assert [int(r["env_steps"]) for r in read_metrics(run_dir)][-1] >= 600
    rerun = run_reproduce(*TINY_FLAGS, "--out", str(out), "--no-report")  # the same command: nothing to do
    assert rerun.returncode == 0 and "already done: skipped" in rerun.stderr
    report = run_reproduce(*TINY_FLAGS, "--out", str(out), "--report-only")
    assert report.returncode == 0, report.stderr[-3000:]
    assert (suite_dir / "report" / "report.html").is_file()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--algorithm", "qmix"], "needs both --algorithm and --scenario"),
        (["--env-steps", "10"], "--env-steps only apply to a one-run command"),
        (["--suite", "smoke", "--algorithm", "qmix", "--scenario", "smax/3m"], "exclude each other"),
        (["--algorithm", "qmx", "--scenario", "smax/3m"], "unknown algorithm 'qmx'; valid choices: qmix"),
        (["--algorithm", "qmix", "--scenario", "smax/3m", "--set", "lr_rate=1"], "unknown key(s) ['lr_rate']"),
    ],
)
def test_bad_one_run_flags_are_refused_and_nothing_written(tmp_path, capsys, flags, message):
    import reproduce

    out = tmp_path / "out"
    assert reproduce.main([*flags, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
