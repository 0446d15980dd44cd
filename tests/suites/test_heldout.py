"""Policy learners in suites: the ``heldout`` manifest section, the worker's dispatch to the policy
trainer, and the cross-play phase (crossplay.json written, skipped when up to date, re-evaluated when
the population changes, failures recorded per run). Runs in-process through a synchronous backend;
tiny MAPPO runs on SMAX 3m."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import reproduce
from suites.backends.base import Backend, Job
from suites.backends.docker_backend import DockerBackend
from marl.policy.population import POLICY_FILE
from suites.crossplay_phase import describe_plan, execute_crossplay_phase, plan_crossplay
from suites.crossplay_worker import CROSSPLAY
from suites.manifest import HELDOUT_GROUP, ManifestError, load_suite
from suites.orchestrator import execute, filter_runs, plan
from suites.store import METRICS, STATUS, SuiteStore
from suites.protocol import EventSink
from suites.worker import execute as worker_execute
from tests.suites.conftest import write_manifest

POLICY = {
    "name": "tinypol",
    "paper": "bidist",
    "budget": {"env_steps": 200, "eval_interval": 100, "eval_episodes": 2, "checkpoint_interval": 100},
    "seeds": [0, 1],
    "overrides": {"num_envs": 2, "rollout_length": 20, "ppo_epochs": 1, "eval_num_envs": 2},
    "scenarios": [{"family": "smax", "scenario": "3m"}],
    "algorithms": [{"name": "mappo"}],
    "heldout": {"seeds": [100, 101], "algorithms": ["mappo"], "budget": {"env_steps": 100}, "episodes": 4},
}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _manifest(tmp_path: Path, **changes: Any) -> Path:
    data = copy.deepcopy(POLICY)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return write_manifest(tmp_path / "m.yaml", data)


# Manifest -------------------------------------------------------------------------------------------

BAD_HELDOUT = [
    ({"seeds": [1, 100]}, ["heldout.seeds", "seeds [1] are also focal seeds", "must be disjoint"]),
    ({"seeds": "100"}, ["heldout.seeds: must be a non-empty list of non-negative integers"]),
    (
        {"seeds": [100], "algorithms": ["mapo"]},
        ["heldout.algorithms[0].name: unknown algorithm 'mapo'", "valid choices: qmix"],
    ),
    (
        {"seeds": [100], "algorithms": ["qmix"]},
        ["heldout.algorithms[0].name", "of kind 'value'", "must be policy learners"],
    ),
    (
        {"seeds": [100], "algorithms": [{"name": "mappo", "group": "x"}]},
        ["heldout.algorithms[0].group: held-out runs are always in group 'heldout'"],
    ),
    ({"seeds": [100], "episodes": 0}, ["heldout.episodes: must be a positive integer, got 0"]),
    ({"seeds": [100], "n_focal": "one"}, ["heldout.n_focal: must be a positive integer"]),
    ({"seeds": [100], "budget": {"env_step": 5}}, ["heldout.budget.env_step: unknown key"]),
    ({"seeds": [100], "colour": 1}, ["heldout.colour: unknown key; valid keys: seeds, algorithms"]),
    ({"algorithms": ["mappo"]}, ["heldout.seeds: missing (required)"]),
    ({"seeds": [100], "bot_scenarios": "all"}, ["heldout.bot_scenarios", "need a Melting Pot substrate"]),
    ([100], ["heldout: must be a mapping"]),
    (
        {"seeds": [100], "coplayers": ["round_robin", "bots"]},
        [
            "heldout.coplayers[1]: unknown co-player kind 'bots'",
            "valid choices: round_robin, heldout, random, self_play",
        ],
    ),
    ({"seeds": [100], "checkpoints": [0.1, 2.0]}, ["heldout.checkpoints[1]: must be a fraction of training in (0, 1]"]),
]


@pytest.mark.parametrize("heldout,expected", BAD_HELDOUT, ids=[repr(h)[:40] for h, _ in BAD_HELDOUT])
def test_bad_heldout_section_is_refused_and_nothing_written(tmp_path, capsys, heldout, expected):
    manifest = _manifest(tmp_path, heldout=heldout)
    out = tmp_path / "out"
    assert reproduce.main(["--suite", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert not out.exists()


def test_heldout_group_is_reserved(tmp_path):
    with pytest.raises(ManifestError, match=r"algorithms\[0\].group: group 'heldout' is reserved"):
        load_suite(str(_manifest(tmp_path, algorithms=[{"name": "mappo", "group": "heldout"}])))


def test_expansion_adds_heldout_runs_with_their_seeds_and_budget(tmp_path):
    suite = load_suite(str(_manifest(tmp_path)))
    focal = [r for r in suite.runs if not r.is_heldout]
    held = [r for r in suite.runs if r.is_heldout]
    assert sorted(r.seed for r in focal) == [0, 1] and sorted(r.seed for r in held) == [100, 101]
    assert all(r.group == HELDOUT_GROUP and r.memberships == ((HELDOUT_GROUP, "mappo"),) for r in held)
    assert {r.budget["env_steps"] for r in held} == {100} and {r.budget["env_steps"] for r in focal} == {200}
    assert held[0].budget["eval_interval"] == 100  # the rest of the scenario's budget is kept
    assert all(r.overrides == focal[0].overrides for r in held)  # the suite's overrides apply to both
    assert suite.all_seeds == (0, 1, 100, 101) and suite.heldout.episodes == 4
    assert [r.seed for r in filter_runs(suite, seeds=[101])] == [101]
    assert len(filter_runs(suite, only=["group=heldout"])) == 2


def test_heldout_algorithms_default_to_the_suites_policy_learners(tmp_path):
    suite = load_suite(
        str(
            _manifest(
                tmp_path,
                algorithms=["qmix", {"name": "mappo", "overrides": {"lr": 1e-4}}],
                overrides={"num_envs": 2},
                heldout={"seeds": [7]},
            )
        )
    )
    held = [r for r in suite.runs if r.is_heldout]
    assert [(r.algorithm, r.seed, r.overrides["lr"]) for r in held] == [("mappo", 7, 1e-4)]


def test_a_registered_module_that_cannot_be_imported_is_unavailable_not_invalid(tmp_path, monkeypatch, capsys):
    from marl import registry

    monkeypatch.setitem(registry.ALGORITHMS, "ghost", "baselines.no_such_learner_module")
    manifest = _manifest(tmp_path, algorithms=["mappo", "ghost"], heldout=None)
    suite = load_suite(str(manifest))
    ghost = [r for r in suite.runs if r.algorithm == "ghost"]
    assert ghost and all("cannot be imported here (ModuleNotFoundError" in r.unavailable for r in ghost)
    assert not any(r.unavailable for r in suite.runs if r.algorithm == "mappo")
    assert reproduce.main(["--suite", str(manifest), "--out", str(tmp_path / "out")]) == 2
    assert "cannot run on this machine; nothing was started" in capsys.readouterr().err


def test_crossplay_jobs_reach_the_worker_through_every_backend(tmp_path):
    spec = load_suite(str(_manifest(tmp_path))).runs[0]
    root = tmp_path / "out" / "tinypol"
    job = Job(spec, root / "runs" / spec.id, 1, "cpu", 1.0, 0.0, task="crossplay", request={"focal": spec.id})
    cmd = DockerBackend(image="img", suite_root=root).container_args(job, {})["command"]
    assert cmd[cmd.index("--task") + 1] == "crossplay" and json.loads(cmd[cmd.index("--request") + 1]) == {
        "focal": spec.id
    }
    assert Job(spec, job.run_dir, 1, "cpu", 1.0, 0.0).worker_args() == []  # training: the worker's default


# Worker and cross-play phase ---------------------------------------------------------------------


class ListSink(EventSink):
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


class InlineBackend(Backend):
    """Runs each job synchronously in this process, through the same worker entry point."""

    name = "inline"

    def __init__(self) -> None:
        self.sink = ListSink()
        self.jobs: list[Job] = []

    def slots(self) -> int:
        return 1

    def submit(self, job: Job, provenance: dict[str, Any]) -> None:
        self.jobs.append(job)
        worker_execute(job.run_dir, self.sink, self.name, provenance, job.threads, job.device, job.task, job.request)

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        events, self.sink.events = self.sink.events, []
        return events

    def request_stop(self) -> None:
        pass

    def kill(self) -> None:
        pass


def test_worker_dispatches_policy_learners_and_writes_the_policy_artifact(tmp_path):
    suite = load_suite(str(_manifest(tmp_path, seeds=[0], heldout=None)))
    store = SuiteStore(tmp_path / "out", suite.name)
    spec = suite.runs[0]
    run_dir = store.prepare(spec)
    sink = ListSink()
    assert worker_execute(run_dir, sink, "local", {"git": {"commit": "c0ffee"}}) == ("done", None)
    assert [e["event"] for e in sink.events][0] == "start" and sink.events[-1]["state"] == "done"
    assert json.loads((run_dir / STATUS).read_text())["state"] == "done"
    rows = (run_dir / METRICS).read_text().splitlines()
    header = rows[0].split(",")
    assert {"env_steps", "test_return_mean", "test_win_rate", "policy_loss", "value_loss", "entropy"} <= set(header)
    assert [int(r.split(",")[header.index("env_steps")]) for r in rows[1:]] == [0, 120, 200]
    blob = torch.load(run_dir / POLICY_FILE, weights_only=False)
    assert blob["algorithm"] == "mappo" and blob["info"]["run_id"] == spec.id and blob["info"]["seed"] == 0
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["run_id"] == spec.id and prov["algorithm"] == "mappo"


def _train(store: SuiteStore, suite, seeds: list[int]) -> None:
    items = plan([r for r in suite.runs if r.seed in seeds], store)
    summary = execute(items, store, InlineBackend(), suite, {})
    assert summary.exit_code == 0, summary.format()


def test_crossplay_phase_writes_skips_and_reevaluates_when_the_population_changes(tmp_path):
    suite = load_suite(str(_manifest(tmp_path)))
    store = SuiteStore(tmp_path / "out", suite.name)
    items = plan(list(suite.runs), store)
    by_seed = {r.seed: r for r in suite.runs}

    # Nothing held-out has finished: the focal runs wait.
    _train(store, suite, [0, 1])
    phase = execute_crossplay_phase(items, store, InlineBackend(), suite, {})
    # (the third: the floor row, a uniform-random focal player on the same schedule)
    assert [o.state for o in phase.outcomes] == ["waiting"] * 3 and phase.exit_code == 0
    assert "none of the 2 held-out run(s) of smax/3m has finished" in phase.format()

    # One member finished: both focal runs are evaluated against it.
    _train(store, suite, [100])
    phase = execute_crossplay_phase(items, store, InlineBackend(), suite, {})
    assert sorted(o.state for o in phase.outcomes) == ["done"] * 3, phase.format()
    record = json.loads((store.run_dir(by_seed[0].id) / CROSSPLAY).read_text())
    assert record["state"] == "done" and record["focal_run"] == by_seed[0].id
    assert [m["run_id"] for m in record["population"]] == [by_seed[100].id] and record["population_expected"] == 2
    # One entry per co-player kind (round robin: the suite has no other algorithm, so it is empty), the
    # score (mean over the unseen kinds) and the per-kind breakdown at the top level.
    evals = {e["kind"]: e for e in record["evaluations"]}
    assert list(evals) == ["round_robin", "heldout", "random", "self_play", "coplayer_score"]
    # 2 mappo runs x 3 seat arrangements (1 focal slot of 3), all of the focal run's own algorithm
    assert evals["round_robin"]["state"] == "empty" and evals["round_robin"]["skipped_own_algorithm"] == 6
    held = evals["heldout"]
    assert held["state"] == "done" and held["scenario"] == "3m" and held["population_kind"].startswith("held-out runs")
    assert held["n_agents"] == 3 and held["n_focal"] == 1 and held["actions"] == "greedy" and held["num_envs"] == 2
    # seed 100 at 10%, 50%, 100% of its training; seed 101 not finished: its entries are skipped
    assert [(m["seed"], m["fraction"]) for m in held["population"]] == [(100, 0.1), (100, 0.5), (100, 1.0)]
    assert held["skipped_unavailable"] == held["scheduled"] - held["episodes"] > 0
    assert held["episodes"] >= 4 and "path" not in held["population"][0]
    assert {k for k, v in record["per_kind"].items() if v["episodes"]} == {"heldout", "random", "self_play"}
    score = (evals["heldout"]["focal_per_capita_return"] + evals["random"]["focal_per_capita_return"]) / 2
    assert evals["coplayer_score"]["focal_per_capita_return"] == pytest.approx(score)
    assert record["focal_per_capita_return"] == pytest.approx(score) and math.isfinite(score)
    assert record["generalisation_gap"] == pytest.approx(record["self_play_return"] - score)
    assert held["focal_per_capita_return"] == pytest.approx(
        sum(held["episode_focal_returns"]) / held["episodes"], abs=1e-3
    )
    first = (store.run_dir(by_seed[0].id) / CROSSPLAY).read_bytes()

    # Rerun: up to date, nothing evaluated, nothing rewritten.
    backend = InlineBackend()
    phase = execute_crossplay_phase(items, store, backend, suite, {})
    assert [o.state for o in phase.outcomes] == ["skipped"] * 3 and backend.jobs == []
    assert (store.run_dir(by_seed[0].id) / CROSSPLAY).read_bytes() == first

    # The second member finishes: the population changed, so both are evaluated again. Seed 1's
    # policy is gone: its evaluation fails, is recorded, and does not stop seed 0's.
    _train(store, suite, [101])
    seed1_policy = (store.run_dir(by_seed[1].id) / POLICY_FILE).read_bytes()
    (store.run_dir(by_seed[1].id) / POLICY_FILE).unlink()
    assert "2 focal run(s) and 1 floor row(s) to evaluate, 0 up to date" in describe_plan(
        plan_crossplay(items, suite, store)
    )
    phase = execute_crossplay_phase(items, store, InlineBackend(), suite, {}, retries=0)
    states = {(o.spec.group, o.spec.seed): o.state for o in phase.outcomes}
    assert states == {("main", 0): "done", ("main", 1): "failed", ("floor", 0): "done"} and phase.exit_code == 1
    record = json.loads((store.run_dir(by_seed[0].id) / CROSSPLAY).read_text())
    assert sorted(m["seed"] for m in record["population"]) == [100, 101]
    evals_after = {e["kind"]: e for e in record["evaluations"]}
    failed = json.loads((store.run_dir(by_seed[1].id) / CROSSPLAY).read_text())
    assert failed["state"] == "failed" and "policy.pt is missing" in failed["error"]
    assert "FAILED" in phase.format() and "policy.pt is missing" in phase.format()

    # The report reads it: seed 0 scored, seed 1 listed as failed, the held-out runs never a column.
    from reports.collect import collect
    from reports.tables import build_crossplay_table

    data = collect(store.root)
    table = build_crossplay_table(data, "main", reps=200)
    assert table.columns == ["mappo"] and len(table.rows) == 1  # the score row; per kind: the co-player table
    cell = table.rows[0].cells["mappo"]
    assert (cell.n_done, cell.n_runs) == (1, 2) and cell.values == [pytest.approx(record["focal_per_capita_return"])]
    assert table.rows[0].members == ["mappo seed 100", "mappo seed 101"]

    # The floor row: a uniform-random focal player on the same schedule, every finished focal run
    # its round robin (no algorithm of its own), greedy like the focal runs; a row of the co-player table.
    (floor_dir,) = (store.root / "floor").iterdir()
    floor = json.loads((floor_dir / CROSSPLAY).read_text())
    fevals = {e["kind"]: e for e in floor["evaluations"]}
    assert floor["state"] == "done" and fevals["heldout"]["actions"] == "greedy"
    assert [m["seed"] for m in fevals["round_robin"]["population"]] == [0]  # seed 1's policy is gone
    assert fevals["round_robin"]["skipped_own_algorithm"] == 0 and fevals["round_robin"]["skipped_unavailable"] == 3
    # the same schedule: the held-out, random and self-play episodes are seed 0's, index for index
    for kind in ("heldout", "random", "self_play"):
        assert fevals[kind]["episode_index"] == evals_after[kind]["episode_index"]
    from reports.tables import build_coplayer_table

    # Against a population with a member missing (seed 1's policy) the floor is no result yet ...
    rows = build_coplayer_table(collect(store.root), "main", reps=200).rows
    assert [(r.label, r.floor) for r in rows] == [("mappo", False)]
    # ... with it back, seed 1 and the floor are evaluated again and the floor is the table's last row.
    (store.run_dir(by_seed[1].id) / POLICY_FILE).write_bytes(seed1_policy)
    phase = execute_crossplay_phase(items, store, InlineBackend(), suite, {}, retries=0)
    assert sorted(o.state for o in phase.outcomes) == ["done", "done", "skipped"], phase.format()
    floor = json.loads((floor_dir / CROSSPLAY).read_text())
    fevals = {e["kind"]: e for e in floor["evaluations"]}
    assert [m["seed"] for m in fevals["round_robin"]["population"]] == [0, 1]
    rows = build_coplayer_table(collect(store.root), "main", reps=200).rows
    assert [(r.label, r.floor) for r in rows] == [("mappo", False), ("uniform random (floor)", True)]
    assert rows[1].cells["random"].values == [pytest.approx(fevals["random"]["focal_per_capita_return"])]
    assert rows[1].episodes["heldout"] == fevals["heldout"]["episodes"]


class StopAfter(ListSink):
    """Asks the worker to stop once ``n`` batches were played (a Ctrl-C in the middle)."""

    def __init__(self, run_dir: Path, n: int) -> None:
        super().__init__()
        self.run_dir, self.n = run_dir, n

    def should_stop(self) -> bool:
        from suites.crossplay_worker import read_batches

        return len(read_batches(self.run_dir)) >= self.n


def test_crossplay_resumes_from_its_batches_and_replays_only_what_a_new_member_changes(tmp_path, monkeypatch):
    """With a clean commit, crossplay_batches.json keeps every batch played: a stopped evaluation
    resumes where it stopped, a re-evaluation after a member finished plays only the batches that
    hold it, and both equal an evaluation from nothing (SMAX is deterministic). A dirty tree turns
    the reuse off."""
    from suites.crossplay_phase import build_request
    from suites.crossplay_worker import BATCHES, execute_crossplay, read_batches

    monkeypatch.setenv("SUITE_GIT_COMMIT", "0123abc")
    monkeypatch.delenv("SUITE_GIT_DIRTY", raising=False)
    suite = load_suite(str(_manifest(tmp_path)))
    store = SuiteStore(tmp_path / "out", suite.name)
    items = plan(list(suite.runs), store)
    by_seed = {r.seed: r for r in suite.runs}
    _train(store, suite, [0, 1, 100])
    focal = store.run_dir(by_seed[0].id)

    # Stopped after 2 batches: interrupted, the 2 batches kept; the rerun reuses them.
    request, _ = build_request(by_seed[0], suite, store)
    assert execute_crossplay(focal, StopAfter(focal, 2), request) == ("interrupted", None)
    assert len(read_batches(focal)) == 2 and not (focal / CROSSPLAY).exists()
    assert execute_crossplay(focal, ListSink(), request)[0] == "done"
    cache = json.loads((focal / CROSSPLAY).read_text())["batch_cache"]
    assert cache["state"] == "on" and cache["batches_reused"] == 2 and cache["batches_played"] > 0
    played_first = cache["batches_played"] + cache["batches_reused"]
    assert len(read_batches(focal)) == played_first

    # The second held-out run finishes: only the batches holding its entries are played.
    _train(store, suite, [101])
    phase = execute_crossplay_phase(items, store, InlineBackend(), suite, {})
    assert sorted(o.state for o in phase.outcomes) == ["done"] * 3, phase.format()  # 2 focal runs, the floor
    record = json.loads((focal / CROSSPLAY).read_text())
    cache = record["batch_cache"]
    assert 0 < cache["batches_played"] < cache["batches_played"] + cache["batches_reused"]
    assert cache["batches_reused"] < played_first  # a batch that held both seeds' entries is replayed

    # From nothing (no batches file): the same per-kind returns, episode by episode.
    (focal / BATCHES).unlink()
    (focal / CROSSPLAY).unlink()
    execute_crossplay_phase(items, store, InlineBackend(), suite, {})
    fresh = json.loads((focal / CROSSPLAY).read_text())
    assert fresh["batch_cache"]["batches_reused"] == 0
    assert fresh["per_kind"] == record["per_kind"]
    kinds = lambda r: {e["kind"]: e.get("episode_focal_returns") for e in r["evaluations"]}  # noqa: E731
    assert kinds(fresh) == kinds(record)

    # A dirty working tree: nothing reused, nothing stored, and the record says why.
    monkeypatch.setenv("SUITE_GIT_DIRTY", "1")
    (focal / CROSSPLAY).unlink()
    execute_crossplay_phase(items, store, InlineBackend(), suite, {})
    dirty = json.loads((focal / CROSSPLAY).read_text())
    assert dirty["batch_cache"]["state"].startswith("off: the working tree has uncommitted changes")
    assert dirty["batch_cache"]["batches_reused"] == 0 and dirty["per_kind"] == record["per_kind"]


def test_a_campaign_spans_machines_through_its_records(tmp_path):
    """Machine A trains part of the suite and exports it (compact files and policy artifacts, never
    the checkpoint); machine B imports the records, trains only the rest, and evaluates every focal
    run against the whole population, A's members included; a second import touches nothing."""
    from suites.records import export, import_records, main as records_main

    suite = load_suite(str(_manifest(tmp_path)))
    by_seed = {r.seed: r for r in suite.runs}
    store_a = SuiteStore(tmp_path / "a", suite.name)
    store_a.write_manifest(suite)
    _train(store_a, suite, [0, 100])
    records = tmp_path / "records"
    assert sorted(export(store_a.root, "reference", records)) == sorted([by_seed[0].id, by_seed[100].id])
    held = {p.name for p in (records / "reference" / suite.name / "runs" / by_seed[100].id).iterdir()}
    assert {"policy.pt", "policy_at_0.1.pt", "policy_at_0.5.pt", "metrics.csv", "spec.json"} <= held
    assert not any(name.startswith("checkpoint") for name in held)
    assert (store_a.run_dir(by_seed[100].id) / "checkpoint.pt").is_file()  # it existed, and was left behind

    store_b = SuiteStore(tmp_path / "b", suite.name)
    assert records_main(["import", str(records / "reference" / suite.name), "--out", str(tmp_path / "b")]) == 0
    states = {r.seed: store_b.inspect(r).kind for r in suite.runs}
    assert states == {0: "done", 100: "done", 1: "new", 101: "new"}
    _train(store_b, suite, [1, 101])
    items = plan(list(suite.runs), store_b)
    phase = execute_crossplay_phase(items, store_b, InlineBackend(), suite, {})
    assert sorted(o.state for o in phase.outcomes) == ["done"] * 3, phase.format()  # and the floor row
    for seed in (0, 1):
        record = json.loads((store_b.run_dir(by_seed[seed].id) / CROSSPLAY).read_text())
        assert sorted(m["seed"] for m in record["population"]) == [100, 101]
        evaluated = {
            (m["seed"], m["fraction"]) for m in {e["kind"]: e for e in record["evaluations"]}["heldout"]["population"]
        }
        assert evaluated == {(s, f) for s in (100, 101) for f in (0.1, 0.5, 1.0)}

    # Importing again keeps every run dir as it is (B's crossplay.json of seed 0 stays).
    before = (store_b.run_dir(by_seed[0].id) / CROSSPLAY).read_bytes()
    imported, kept = import_records(records / "reference" / suite.name, tmp_path / "b")
    assert imported == [] and sorted(kept) == sorted([by_seed[0].id, by_seed[100].id])
    assert (store_b.run_dir(by_seed[0].id) / CROSSPLAY).read_bytes() == before
    assert not list((tmp_path / "b" / suite.name / "runs").glob(".import-*"))
    with pytest.raises(ValueError, match="no finished run records"):
        import_records(tmp_path / "empty", tmp_path / "b")

    # B's export brings the floor row's evaluation into the records, where a report finds it.
    export(store_b.root, "reference", records)
    (floor,) = (records / "reference" / suite.name / "floor").iterdir()
    assert json.loads((floor / CROSSPLAY).read_text())["state"] == "done" and (floor / "spec.json").is_file()
    # ... and an import brings it into a fresh store, where the cross-play phase finds it up to date.
    imported, _ = import_records(records / "reference" / suite.name, tmp_path / "c")
    assert len(imported) == 4  # two focal runs, two held-out ones
    assert (tmp_path / "c" / suite.name / "floor" / floor.name / CROSSPLAY).read_bytes() == (
        floor / CROSSPLAY
    ).read_bytes()
    assert not list((tmp_path / "c" / suite.name / "floor").glob(".import-*"))
    store_c = SuiteStore(tmp_path / "c", suite.name)
    assert "0 focal run(s) to evaluate, 3 up to date" in describe_plan(  # 2 focal runs and the floor
        plan_crossplay(plan(list(suite.runs), store_c), suite, store_c)
    )


def test_no_crossplay_trains_only_and_a_later_invocation_evaluates(tmp_path, capsys):
    manifest = _manifest(tmp_path)
    suite = load_suite(str(manifest))
    by_seed = {r.seed: r for r in suite.runs}
    out = tmp_path / "out"
    args = ["--suite", str(manifest), "--out", str(out), "--seeds", "0,100", "--workers", "1", "--no-report"]
    assert reproduce.main([*args, "--no-crossplay"]) == 0
    store = SuiteStore(out, suite.name)
    assert store.inspect(by_seed[0]).kind == "done" and store.inspect(by_seed[100]).kind == "done"
    assert not (store.run_dir(by_seed[0].id) / CROSSPLAY).exists()
    assert "cross-play" not in capsys.readouterr().out
    assert reproduce.main(args) == 0
    record = json.loads((store.run_dir(by_seed[0].id) / CROSSPLAY).read_text())
    assert record["state"] == "done" and [m["seed"] for m in record["population"]] == [100]
