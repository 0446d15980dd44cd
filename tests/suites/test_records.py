"""Compact run records: only the shareable files of finished runs are exported, the index says where
they came from, and a record folder renders as a report; the repository's own records load."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from reports.collect import collect
from suites.records import RECORDS, export, main, write_index
from tests.reports.synthetic import FakeRun, write_suite


@pytest.fixture
def suite(tmp_path):
    runs = [
        FakeRun("smax", "3m", "ddn", 0, final=0.5),
        FakeRun("smax", "3m", "qmix", 0, final=0.75),
        FakeRun("smax", "3m", "qmix", 1, final=None, state="running"),
    ]
    root = write_suite(tmp_path / "store", "mysuite", runs, manifest="name: mysuite\n")
    for d in (root / "runs").iterdir():
        (d / "checkpoint.pt").write_bytes(b"x" * 100)
        for name in ("policy.pt", "policy_at_0.5.pt"):  # a policy learner's artifacts (cross-play co-players)
            (d / name).write_bytes(b"p" * 10)
        if (d / "provenance.json").is_file():  # as the worker writes it: git commit and CPU model
            prov = json.loads((d / "provenance.json").read_text())
            (d / "provenance.json").write_text(
                json.dumps({**prov, "git": {"commit": "abc1234", "dirty": False}, "cpu": "Some CPU"})
            )
    return root


def test_export_copies_finished_runs_compact_files_and_indexes_them(suite, tmp_path):
    records = tmp_path / "records"
    ids = export(suite, "tuning", records)
    assert len(ids) == 2  # the running run is not exported
    dest = records / "tuning" / "mysuite"
    assert (dest / "manifest.yaml").read_text() == "name: mysuite\n"
    for run_id in ids:
        files = {p.name for p in (dest / "runs" / run_id).iterdir()}
        # no checkpoint; the policy artifacts travel (another machine's cross-play needs them)
        assert files == {"spec.json", "status.json", "provenance.json", "metrics.csv", "policy.pt", "policy_at_0.5.pt"}
    index = yaml.safe_load((records / "index.yaml").read_text())
    (entry,) = index["suites"]
    assert entry["suite"] == "mysuite" and entry["kind"] == "tuning" and entry["commits"] == ["abc1234"]
    assert entry["cpus"] == ["Some CPU"]
    scores = sorted(r["final_score"] for r in entry["runs"])
    assert scores == pytest.approx([0.5, 0.75])
    # A record folder is a suite directory: the report's collector reads it.
    data = collect(dest)
    assert sorted(data.runs["final_score"]) == pytest.approx([0.5, 0.75])


def test_a_melting_pot_record_without_cross_play_indexes_its_test_return(tmp_path):
    """A Melting Pot run is scored by its cross-play phase; trained with --no-crossplay, its index
    entry has no score yet, and says the run's own test return instead (last evaluations' mean)."""
    runs = [
        FakeRun("meltingpot", "stag_hunt_in_the_matrix__repeated", "mappo", 0, final=2.5, paper="bidist"),
        FakeRun("smax", "3m", "qmix", 0, final=0.75),
    ]
    root = write_suite(tmp_path / "store", "mixed", runs, manifest="name: mixed\n")
    records = tmp_path / "records"
    export(root, "reference", records)
    (entry,) = yaml.safe_load((records / "index.yaml").read_text())["suites"]
    by_family = {r["scenario"].split("/")[0]: r for r in entry["runs"]}
    assert by_family["meltingpot"]["final_score"] is None
    assert by_family["meltingpot"]["final_test_return"] == pytest.approx(2.5)
    assert by_family["smax"]["final_score"] == pytest.approx(0.75)
    assert "final_test_return" not in by_family["smax"]  # its score is its test win rate already


def test_table_lists_every_run_by_arm_and_seed(tmp_path, capsys):
    runs = [
        FakeRun("meltingpot", "stag_hunt_in_the_matrix__repeated", "mappo", 0, final=2.5, paper="bidist"),
        FakeRun("smax", "3m", "qmix", 0, final=0.75),
        FakeRun("smax", "3m", "qmix", 2, final=1.0),
        FakeRun("meltingpot", "stag_hunt_in_the_matrix__repeated", "mappo", 100, 3.0, group="heldout", paper="bidist"),
    ]
    root = write_suite(tmp_path / "store", "mixed", runs, manifest="name: mixed\n")
    records = tmp_path / "records"
    export(root, "reference", records)
    assert main(["table", "mixed", "--records", str(records)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "| arm | seed 0 | seed 2 | seed 100 |"
    ids = {(r.label, r.seed): r.spec("mixed")["id"] for r in runs}
    # two scenarios: rows name theirs; a Melting Pot run without cross-play shows its test return
    focal, held_out, smax = lines[3:6]
    scenario = "mappo on meltingpot/stag_hunt_in_the_matrix__repeated"
    assert focal == f"| {scenario} | {ids['mappo', 0]} (2.50) | - | - |"
    assert held_out == f"| {scenario} (held-out population) | - | - | {ids['mappo', 100]} (3.00) |"
    assert smax == f"| qmix on smax/3m | {ids['qmix', 0]} 0.750 | {ids['qmix', 2]} 1.000 | - |"
    assert main(["table", "other", "--records", str(records)]) == 2
    assert "no suite 'other'" in capsys.readouterr().err


def test_export_refuses_what_is_not_a_suite(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--kind", "tuning", "--records", str(tmp_path / "r")]) == 2
    assert "not a suite directory" in capsys.readouterr().err
    with pytest.raises(ValueError, match="reference, tuning"):
        export(tmp_path, "final", tmp_path / "r")


def test_the_repositorys_records_load_and_match_their_index(tmp_path):
    """Every committed record folder loads without problems, and index.yaml is what the records on
    disk say (rewritten to a temporary copy and compared)."""
    if not (RECORDS / "index.yaml").is_file():
        pytest.skip("no records committed yet")
    committed = yaml.safe_load((RECORDS / "index.yaml").read_text())
    for entry in committed["suites"]:
        data = collect(RECORDS / entry["path"])
        assert not data.problems, data.problems
        assert len(data.run_dirs) == len(entry["runs"])
    import shutil

    copy = tmp_path / "records"
    shutil.copytree(RECORDS, copy)
    assert write_index(copy) == committed


def test_no_record_file_is_ignored_by_git(suite, tmp_path):
    """An exported record must be committable: none of its files, placed under the repository's
    records/, may match a .gitignore rule (a `runs/` rule once hid every run of a committed record,
    so a fresh clone had the index and no runs)."""
    export(suite, "tuning", tmp_path / "records")
    files = [p.relative_to(tmp_path / "records") for p in (tmp_path / "records").rglob("*") if p.is_file()]
    assert {"metrics.csv", "policy.pt", "policy_at_0.5.pt"} <= {f.name for f in files}
    as_committed = [str(RECORDS / f) for f in files]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *as_committed], cwd=RECORDS.parent, capture_output=True, text=True
    ).stdout.split()
    assert not ignored, f"record files ignored by .gitignore: {ignored}"


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def _complete_crossplay(run_dir, skipped=0):
    evaluations = [{"kind": "round_robin", "episodes": 4, "skipped_unavailable": skipped}]
    (run_dir / "crossplay.json").write_text(json.dumps({"state": "done", "evaluations": evaluations}))


@pytest.fixture
def committed_records(suite, tmp_path):
    """The suite exported into records/ of a fresh git repository and committed, each focal run
    with a cross-play evaluation against the whole population."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@t")
    _git(repo, "config", "user.name", "t")
    records = repo / "records"
    export(suite, "reference", records)
    folder = records / "reference" / "mysuite"
    for run_dir in (folder / "runs").iterdir():
        _complete_crossplay(run_dir)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "records")
    return repo, folder


def test_drop_policies_removes_them_and_names_the_commit_that_holds_them(committed_records, capsys):
    repo, folder = committed_records
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert main(["drop-policies", str(folder)]) == 0
    assert not list(folder.rglob("policy*.pt"))
    assert {p.name for p in (folder / "runs").rglob("*") if p.is_file()} >= {
        "spec.json",
        "metrics.csv",
        "crossplay.json",
    }
    dropped = yaml.safe_load((folder / "policies.yaml").read_text())
    assert dropped["commit"] == head and dropped["files"] == 4  # two finished runs, two artifacts each
    assert dropped["restore"] == f"git checkout {head} -- records/reference/mysuite"
    index = yaml.safe_load((repo / "records" / "index.yaml").read_text())
    assert index["suites"][0]["policies_removed"] == dropped
    assert write_index(repo / "records") == index  # the index keeps saying so when rewritten
    # The named commit does hold them: the restore command brings every file back.
    subprocess.run(dropped["restore"].split(), cwd=repo, check=True, capture_output=True)
    assert len(list(folder.rglob("policy*.pt"))) == 4
    # Importing the folder without its policies says how to get them back.
    for p in folder.rglob("policy*.pt"):
        p.unlink()
    capsys.readouterr()
    assert main(["import", str(folder), "--out", str(repo / "store")]) == 0
    assert "restore them first" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["incomplete", "no_crossplay", "uncommitted"])
def test_drop_policies_refuses_and_touches_nothing(committed_records, case, capsys):
    repo, folder = committed_records
    run_dir = sorted((folder / "runs").iterdir())[0]
    if case == "incomplete":  # evaluated before every co-player had finished
        _complete_crossplay(run_dir, skipped=3)
        expected = "3 scheduled episodes skipped"
    elif case == "no_crossplay":
        (run_dir / "crossplay.json").unlink()
        expected = "no crossplay.json"
    else:  # a policy changed since the last commit: removing it would lose it
        (run_dir / "policy.pt").write_bytes(b"retrained")
        expected = "commit the policy artifacts first"
    before = sorted(str(p) for p in folder.rglob("*"))
    assert main(["drop-policies", str(folder)]) == 2
    assert expected in capsys.readouterr().err
    assert sorted(str(p) for p in folder.rglob("*")) == before


def test_drop_policies_of_a_superseded_campaign_without_cross_play(committed_records, capsys):
    # A campaign replaced by a rerun is never cross-played: --superseded drops its policies anyway,
    # says why, and still refuses uncommitted ones or an empty reason.
    repo, folder = committed_records
    for run_dir in (folder / "runs").iterdir():
        (run_dir / "crossplay.json").unlink()
    _git(repo, "commit", "-qam", "no cross-play")
    before = sorted(str(p) for p in folder.rglob("*"))
    assert main(["drop-policies", str(folder)]) == 2
    assert "--superseded" in capsys.readouterr().err
    assert main(["drop-policies", str(folder), "--superseded", "  "]) == 2
    assert "needs the reason" in capsys.readouterr().err
    assert sorted(str(p) for p in folder.rglob("*")) == before
    assert main(["drop-policies", str(folder), "--superseded", "rerun with on-policy's networks"]) == 0
    assert not list(folder.rglob("policy*.pt"))
    dropped = yaml.safe_load((folder / "policies.yaml").read_text())
    assert dropped["why"] == "superseded: rerun with on-policy's networks" and dropped["files"] == 4
    capsys.readouterr()
    assert main(["import", str(folder), "--out", str(repo / "store")]) == 0
    assert "superseded: rerun with on-policy's networks" in capsys.readouterr().out
