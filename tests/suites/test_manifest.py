"""Manifests: validation (a table of bad inputs, each with its message and nothing written),
expansion into content-hashed RunSpecs, filters, and the shipped suites."""

from __future__ import annotations

import copy

import pytest

import reproduce
from suites.manifest import ManifestError, RunSpec, content_id, list_suites, load_suite
from suites.orchestrator import UsageError, filter_runs
from tests.suites.conftest import TINY, write_manifest

SHIPPED = (
    "smoke",
    "quick",
    "ddn_smac",
    "ddn_smax",
    "ddn_smax_curves",
    "ddn_stability",
    "ddn_tuning",
    "ddn_ablations",
    "ddn_predator_prey",
    "bidist_meltingpot",
    "bidist_quick",
    "bidist_stag_hunt",
    "reference_ddn",
)


def _with(path: tuple, value) -> dict:
    data = copy.deepcopy(TINY)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()

BAD_MANIFESTS = [
    (
        ("algorithms", 0, "name"),
        "qmixx",
        ["algorithms[0].name", "unknown algorithm 'qmixx'", "valid choices: qmix, vdn"],
    ),
    (
        ("scenarios", 0, "scenario"),
        "stag_hunt_huge",
        ["scenarios[0].scenario", "unknown predator_prey scenario", "valid choices: stag_hunt, stag_hunt_small"],
    ),
    (
        ("scenarios", 0, "family"),
        "starcraft",
        ["scenarios[0].family", "unknown environment family 'starcraft'", "predator_prey, smax, smac"],
    ),
    (
        ("scenarios", 0, "options"),
        {"grid_size": 5},
        ["scenarios[0].options", "unknown option(s) ['grid_size']", "grid_height (int)"],
    ),
    (("scenarios", 0, "options"), {"n_agents": "two"}, ["scenarios[0].options", "'n_agents'", "must be int"]),
    (
        ("algorithms", 0, "overrides"),
        {"learning_rate": 0.1},
        ["algorithms[0].overrides", "unknown key(s) ['learning_rate']", "valid keys: profile"],
    ),
    (("algorithms", 0, "overrides"), {"batch_size": "big"}, ["algorithms[0].overrides", "'batch_size' must be int"]),
    (("overrides",), {"profile": "pymarl3"}, ["unknown profile 'pymarl3'", "valid profiles: pymarl, pymarl2"]),
    (("seeds",), [], ["seeds: must be a non-empty list"]),
    (("seeds",), [0, 0], ["seeds must be distinct"]),
    (("seeds",), [0, -1], ["seeds[1]: must be a non-negative integer"]),
    (("budget", "env_steps"), 0, ["budget.env_steps: must be a positive integer, got 0"]),
    (("budget", "env_steps"), 1.5, ["budget.env_steps: must be a positive integer, got 1.5"]),
    (("budget", "eval_interval"), _DELETE, ["budget.eval_interval: missing (required)"]),
    (("budget", "evaluation"), 3, ["budget.evaluation: unknown key; valid keys: env_steps, eval_interval"]),
    (("paper",), "dqn", ["paper: unknown paper 'dqn'; valid choices: ddn, bidist"]),
    (("algorithms",), [], ["algorithms: must be a non-empty list"]),
    (("colour",), "blue", ["colour: unknown key; valid keys: name, paper"]),
    (
        ("algorithms",),
        [{"name": "qmix"}, {"name": "qmix"}],
        ["algorithms[1].label", "label 'qmix' appears twice in group 'main'"],
    ),
    (
        ("algorithms", 0, "scenarios"),
        ["3m"],
        ["algorithms[0].scenarios", "'3m' is not one of this manifest's scenarios"],
    ),
    (
        ("algorithms", 0, "seeds"),
        [0, 7],
        ["algorithms[0].seeds", "seeds [7] are not among the suite's seeds [0, 1, 2]", "a subset"],
    ),
    (("algorithms", 0, "seeds"), [], ["algorithms[0].seeds: must be a non-empty list"]),
]


@pytest.mark.parametrize(
    "path,value,expected", BAD_MANIFESTS, ids=[".".join(map(str, b[0])) + "=" + repr(b[1])[:20] for b in BAD_MANIFESTS]
)
def test_bad_manifest_is_refused_with_a_specific_message_and_nothing_written(tmp_path, capsys, path, value, expected):
    manifest = write_manifest(tmp_path / "bad.yaml", _with(path, value))
    out = tmp_path / "out"
    code = reproduce.main(["--suite", str(manifest), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(manifest) in err  # names the file
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert not out.exists()


def test_every_problem_is_reported_at_once(tmp_path):
    data = _with(("seeds",), [])
    data["algorithms"][0]["name"] = "nope"
    with pytest.raises(ManifestError) as info:
        load_suite(str(write_manifest(tmp_path / "bad.yaml", data)))
    assert [where for where, _ in info.value.problems] == ["seeds", "algorithms[0].name"]


def test_unparsable_yaml_and_unknown_suite(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert reproduce.main(["--suite", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert reproduce.main(["--suite", "no_such_suite", "--out", str(tmp_path / "o")]) == 2
    assert "unknown suite; valid suites: " + ", ".join(sorted(SHIPPED)) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


BAD_FLAGS = [
    (["--workers", "0"], "--workers must be >= 1"),
    (["--retries", "-1"], "--retries must be >= 0"),
    (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
    (["--seeds", "7"], "--seeds 7: not in suite 'tiny''s seeds 0, 1, 2"),
    (["--only", "colour=red"], "unknown key 'colour'; valid keys: family, scenario, algorithm"),
    (["--only", "algorithm=vdn"], "vdn is not a algorithm of suite 'tiny'; valid choices: qmix"),
    (["--only", "banana"], "matches no scenario, algorithm, label or group"),
    (["--address", "auto"], "--address only applies to --backend ray"),
    (["--image", "x"], "--image only applies to --backend docker"),
    (["--dry-run", "--list"], "exclude each other"),
]


@pytest.mark.parametrize("flags,expected", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_are_refused_and_nothing_written(tmp_path, capsys, tiny_manifest, flags, expected):
    out = tmp_path / "out"
    assert reproduce.main(["--suite", str(tiny_manifest), "--out", str(out), *flags]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_unknown_backend_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        reproduce.main(["--backend", "slurm"])
    assert info.value.code == 2
    assert "invalid choice: 'slurm' (choose from 'local', 'ray', 'docker')" in capsys.readouterr().err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--suite",
        "--backend",
        "--workers",
        "--out",
        "--dry-run",
        "--list",
        "--report-only",
        "--seeds",
        "--only",
        "--skip-unavailable",
        "examples:",
        "make reproduce",
    ):
        assert flag in text


def test_run_ids_hash_the_training_content_and_are_stable(tiny_manifest):
    suite = load_suite(str(tiny_manifest))
    assert len(suite.runs) == 3 and {r.seed for r in suite.runs} == {0, 1, 2}
    run = suite.runs[0]
    assert run.id == content_id(run.content()) and len(run.id) == 12
    assert run.to_json()["id"] == run.id and run.to_json()["budget"] == TINY["budget"]
    # Same manifest -> same ids; a different seed, budget or override -> a different id.
    assert [r.id for r in load_suite(str(tiny_manifest)).runs] == [r.id for r in suite.runs]
    assert len({r.id for r in suite.runs}) == 3
    import dataclasses

    assert dataclasses.replace(run, budget={**run.budget, "env_steps": 1}).id != run.id
    assert dataclasses.replace(run, overrides={"batch_size": 9}).id != run.id
    # Table placement is not part of the id.
    assert dataclasses.replace(run, label="other", group="g").id == run.id


def test_override_types_are_canonical_so_equal_configs_share_ids(tmp_path):
    a = _with(("algorithms", 0, "overrides"), {"lr": 1})
    b = _with(("algorithms", 0, "overrides"), {"lr": 1.0})
    ra = load_suite(str(write_manifest(tmp_path / "a.yaml", a))).runs
    rb = load_suite(str(write_manifest(tmp_path / "b.yaml", b))).runs
    assert ra[0].overrides == {"batch_size": 8, "lr": 1.0} and isinstance(ra[0].overrides["lr"], float)
    assert [r.id for r in ra] == [r.id for r in rb]


def test_override_layers_algorithm_wins_over_scenario_over_suite(tmp_path):
    data = copy.deepcopy(TINY)
    data["overrides"] = {"batch_size": 8, "lr": 0.1}
    data["scenarios"][0]["overrides"] = {"lr": 0.2, "hidden_dim": 32}
    data["algorithms"][0]["overrides"] = {"hidden_dim": 16}
    run = load_suite(str(write_manifest(tmp_path / "m.yaml", data))).runs[0]
    assert run.overrides == {"batch_size": 8, "lr": 0.2, "hidden_dim": 16}


def test_an_algorithm_entry_may_run_a_subset_of_the_suites_seeds(tmp_path):
    """An arm the comparison needs fewer seeds of (BiDist's OPRE and RandNet: 3 of 5) runs only
    those; the others keep every seed, and a run's id is the same as with all seeds."""
    data = copy.deepcopy(TINY)
    data["algorithms"] = [{"name": "qmix"}, {"name": "vdn", "seeds": [0, 2]}]
    runs = load_suite(str(write_manifest(tmp_path / "m.yaml", data))).runs
    assert sorted((r.algorithm, r.seed) for r in runs) == [
        ("qmix", 0),
        ("qmix", 1),
        ("qmix", 2),
        ("vdn", 0),
        ("vdn", 2),
    ]
    data["algorithms"] = [{"name": "qmix"}, {"name": "vdn"}]
    every = {(r.algorithm, r.seed): r.id for r in load_suite(str(write_manifest(tmp_path / "n.yaml", data))).runs}
    assert all(every[(r.algorithm, r.seed)] == r.id for r in runs)


def test_heldout_entries_take_their_seeds_from_the_heldout_section(tmp_path):
    from tests.suites.conftest import write_manifest as write

    data = {
        "name": "h",
        "paper": "bidist",
        "budget": {"env_steps": 200, "eval_interval": 100, "eval_episodes": 2},
        "seeds": [0],
        "scenarios": [{"family": "matrix_game", "scenario": "wqmix_payoff"}],
        "algorithms": ["mappo"],
        "heldout": {"seeds": [100], "algorithms": [{"name": "mappo", "seeds": [100]}]},
    }
    with pytest.raises(ManifestError, match=r"heldout.algorithms\[0\].seeds: held-out runs use heldout.seeds"):
        load_suite(str(write(tmp_path / "h.yaml", data)))


def test_scenario_budget_overrides_the_suite_budget(tmp_path):
    data = copy.deepcopy(TINY)
    data["scenarios"][0]["budget"] = {"env_steps": 300}
    run = load_suite(str(write_manifest(tmp_path / "m.yaml", data))).runs[0]
    assert run.budget == {**TINY["budget"], "env_steps": 300}


def test_shipped_suite_list_and_every_shipped_manifest_validates():
    assert set(list_suites()) == set(SHIPPED)
    for name in SHIPPED:
        suite = load_suite(name)
        assert suite.name == name and suite.runs, name
        assert all(isinstance(r, RunSpec) for r in suite.runs)


def test_ddn_smac_is_the_papers_matrix_and_needs_starcraft_here():
    suite = load_suite("ddn_smac")
    maps = {"3s_vs_5z", "MMM2", "2s_vs_1sc", "5m_vs_6m", "3s5z_vs_3s6z", "6h_vs_8z", "corridor"}
    assert {r.scenario for r in suite.runs} == maps and {r.family for r in suite.runs} == {"smac"}
    assert {r.label for r in suite.runs} == {"ddn", "qmix", "ow_wqmix", "cw_wqmix"}
    assert suite.seeds == (0, 1, 2, 3, 4) and len(suite.runs) == 7 * 4 * 5
    assert all(r.budget["env_steps"] == 2_000_000 and r.overrides["profile"] == "pymarl" for r in suite.runs)


def test_ddn_ablations_groups_labels_and_shared_ddn_runs():
    suite = load_suite("ddn_ablations")
    cells = {(g, lbl) for r in suite.runs for g, lbl in r.memberships}
    expected = {
        ("ablation_state", "ddn"),
        ("ablation_state", "ddn_raw_state"),
        ("ablation_distill", "ddn"),
        ("ablation_distill", "ddn_distill_B"),
        ("ablation_idm", "ddn"),
        ("ablation_idm", "ddn_no_idm"),
        *{("mu_sweep", f"ddn_mu_{mu}") for mu in ("0.1", "0.25", "0.5", "0.75", "0.9")},
    }
    assert cells == expected
    by_label = {r.label: r for r in suite.runs if r.seed == 0 and r.scenario == "MMM2"}
    assert by_label["ddn_raw_state"].overrides["personalize"] is False
    assert by_label["ddn_distill_B"].overrides["distill_losses"] == ["B"]
    assert by_label["ddn_no_idm"].overrides["idm"] is False
    assert by_label["ddn_mu_0.1"].overrides["idm_mask_prob"] == 0.1
    # The plain DDN training is one run per (scenario, seed), shared by the three tables that need it.
    plain = [r for r in suite.runs if r.label == "ddn"]
    assert len(plain) == 3 * 5
    assert {m[0] for m in plain[0].memberships} == {"ablation_state", "ablation_distill", "ablation_idm"}


def test_ddn_smax_is_labelled_as_the_stand_in():
    suite = load_suite("ddn_smax")
    assert {r.family for r in suite.runs} == {"smax"}
    assert "STAND-IN" in suite.description and "not the paper's SMAC numbers" in suite.description
    assert {"3s_vs_5z", "5m_vs_6m", "3s5z_vs_3s6z", "6h_vs_8z", "3m", "2s3z"} <= {r.scenario for r in suite.runs}


def test_bidist_suites_have_the_six_learners_and_a_heldout_population():
    algorithms = {"bidist", "mappo", "selfplay", "rpm", "opre", "randnet"}
    for name, seeds in (("bidist_meltingpot", {100, 101, 102}), ("bidist_quick", {100, 101})):
        suite = load_suite(name)
        focal = [r for r in suite.runs if not r.is_heldout]
        assert {r.algorithm for r in focal} == algorithms and {r.family for r in suite.runs} == {"meltingpot"}
        heldout = [r for r in suite.runs if r.is_heldout]
        assert {r.algorithm for r in heldout} == {"mappo"} and {r.seed for r in heldout} == seeds
        assert not {r.seed for r in heldout} & set(suite.seeds)
        # issue 16's co-players: round robin, held-out MAPPO at 10/50/100% of training, random, self-play
        assert suite.heldout.coplayers == ("round_robin", "heldout", "random", "self_play")
        assert suite.heldout.checkpoints == (0.1, 0.5, 1.0) and {r.snapshots for r in heldout} == {(0.1, 0.5)}
        # unavailable only where a learner's module cannot be imported here, never "planned"
        assert all(r.unavailable is None or "cannot be imported here" in r.unavailable for r in suite.runs)
    assert load_suite("bidist_meltingpot").runs[0].budget["env_steps"] == 10_000_000
    quick = load_suite("bidist_quick")
    assert all(r.env_options == {"max_episode_frames": 300} for r in quick.runs)


def test_bidist_stag_hunt_runs_the_seeds_ablations_from_the_manifest():
    from algorithms.bidist import Config
    from marl.config import build_config

    suite = load_suite("bidist_stag_hunt")
    focal = [r for r in suite.runs if not r.is_heldout and r.algorithm == "bidist"]
    by_label = {}
    for r in focal:
        for group, label in r.memberships:
            by_label.setdefault((group, label), []).append(r)
    assert set(by_label) == {
        ("main", "bidist"),
        ("ablation_bidist", "bidist"),
        ("ablation_bidist", "bidist_forward_only"),
        ("ablation_bidist", "bidist_reverse_only"),
        ("ablation_bidist", "bidist_no_mask"),
    }
    # The unmodified BiDist is one run per seed, in both tables.
    assert [r.id for r in by_label[("main", "bidist")]] == [r.id for r in by_label[("ablation_bidist", "bidist")]]
    cfg = {
        k: build_config(Config, by_label[("ablation_bidist", k)][0].overrides)
        for k in ("bidist", "bidist_forward_only", "bidist_reverse_only", "bidist_no_mask")
    }
    assert (cfg["bidist"].schedule, cfg["bidist"].use_mask) == ("alternate", True)
    assert (cfg["bidist_forward_only"].schedule, cfg["bidist_forward_only"].use_mask) == ("forward", True)
    assert (cfg["bidist_reverse_only"].schedule, cfg["bidist_reverse_only"].use_mask) == ("reverse", True)
    assert (cfg["bidist_no_mask"].schedule, cfg["bidist_no_mask"].use_mask) == ("alternate", False)
    assert {r.seed for r in focal} == set(suite.seeds)
    # Skipping the ablations keeps the main comparison and its held-out population: 3 labels x 5 seeds fewer.
    kept = filter_runs(suite, only=["group=main,heldout"])
    assert len(suite.runs) - len(kept) == 3 * len(suite.seeds) and any(r.is_heldout for r in kept)


def test_filters(tiny_manifest):
    suite = load_suite(str(tiny_manifest))
    assert [r.seed for r in filter_runs(suite, seeds=[2])] == [2]
    assert len(filter_runs(suite, only=["qmix"])) == 3
    assert len(filter_runs(suite, only=["seed=0,1", "scenario=stag_hunt_small"])) == 2
    with pytest.raises(UsageError, match="valid choices: 0, 1, 2"):
        filter_runs(suite, only=["seed=5"])


def test_smac_runs_are_unavailable_here_and_refused_up_front(tmp_path, capsys):
    from envs import unavailable_reason

    if unavailable_reason("smac", "3m") is None:
        pytest.skip("StarCraft II is installed here")
    manifest = write_manifest(
        tmp_path / "sc2.yaml",
        {
            **TINY,
            "scenarios": [
                {"family": "smac", "scenario": "3m"},
                {"family": "predator_prey", "scenario": "stag_hunt_small"},
            ],
        },
    )
    out = tmp_path / "out"
    assert reproduce.main(["--suite", str(manifest), "--out", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "UNAVAILABLE [1]" in listing and "[1] smac scenario '3m' cannot run on this machine" in listing
    assert "3 unavailable" in listing and "3 new" in listing
    assert reproduce.main(["--suite", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "3 run(s) of suite 'tiny' cannot run on this machine; nothing was started" in err
    assert "Docker image" in err and "--skip-unavailable" in err
    assert not out.exists()


def test_dry_run_writes_nothing_and_list_names_everything(tmp_path, capsys, tiny_manifest):
    out = tmp_path / "out"
    assert reproduce.main(["--suite", str(tiny_manifest), "--out", str(out), "--dry-run"]) == 0
    assert "suite 'tiny' (ddn): 3 runs - 3 new" in capsys.readouterr().out
    assert not out.exists()
    assert reproduce.main(["--list"]) == 0
    listing = capsys.readouterr().out
    for text in (
        "smoke",
        "ddn_ablations",
        "qmix",
        "ddn",
        "bidist",
        "bidist_quick",
        "mappo        kind policy",
        "predator_prey: 2 scenarios, 2 available here",
        "local",
        "ray",
        "docker",
    ):
        assert text in listing, text


def test_bidist_stag_hunt_is_the_comparison_of_the_six_learners():
    """The BiDist issue's design: the six learners on 5 seeds (OPRE and RandNet too: one command, one
    cross-play population), held-out MAPPO seeds 100-102 at 10/50/100% of training, the four
    co-player kinds, at the pilot's budget; ``--only group=main,heldout`` is the comparison."""
    suite = load_suite("bidist_stag_hunt")
    runs = filter_runs(suite, only=["group=main,heldout"])
    per_algorithm = {}
    for r in runs:
        if not r.is_heldout:
            per_algorithm.setdefault(r.algorithm, set()).add(r.seed)
    assert per_algorithm == {a: {0, 1, 2, 3, 4} for a in ("bidist", "mappo", "selfplay", "rpm", "opre", "randnet")}
    assert sorted(r.seed for r in runs if r.is_heldout) == [100, 101, 102]
    assert all(r.budget["env_steps"] == 3_000_000 for r in runs) and len(runs) == 33
    assert suite.heldout.coplayers == ("round_robin", "heldout", "random", "self_play")
    assert suite.heldout.checkpoints == (0.1, 0.5, 1.0)
