"""The co-player kinds of BiDist's cross-play (issue 16): the common partner schedule (the same for
every focal method), round robin without the focal algorithm, held-out checkpoints at fractions of
training, the uniform-random floor, self-play, and the manifest's ``heldout`` keys that choose them.
Fast: the one-step matrix game and untrained actors, except one tiny MAPPO run for the checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import envs
from marl.policy.crossplay import COPLAYER_KINDS as crossplay_kinds
from marl.policy.crossplay import SCORE_KIND
from marl.policy.crossplay import (
    KIND_NAMES,
    UniformRandomActor,
    coplayer_score,
    evaluate_schedule,
    partner_schedule,
    seat_arrangements,
)
from marl.policy.networks import ActInput
from marl.policy.population import POLICY_FILE, POLICY_SNAPSHOT_GLOB, load_policy, policy_file, save_policy
from marl.registry import get_algorithm
from reports.collect import COPLAYER_KINDS as report_kinds
from reports.collect import SCORE_KIND as report_score_kind
from suites.crossplay_phase import build_request, schedule_seed
from suites.manifest import COPLAYER_KINDS, ManifestError, load_suite
from suites.store import SuiteStore
from tests.suites.conftest import write_manifest

GAME = ("matrix_game", "wqmix_payoff")  # 2 players, 3 actions, one-step episodes
SUITE = {
    "name": "coplay",
    "paper": "bidist",
    "budget": {"env_steps": 200, "eval_interval": 100, "eval_episodes": 2},
    "seeds": [0, 1],
    "overrides": {"num_envs": 2, "rollout_length": 20, "ppo_epochs": 1, "eval_num_envs": 2},
    "scenarios": [{"family": GAME[0], "scenario": GAME[1]}],
    "algorithms": ["mappo", "selfplay", "bidist"],
    "heldout": {"seeds": [100, 101], "algorithms": ["mappo"], "episodes": 6},
}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _suite(tmp_path: Path, **heldout: Any):
    data = copy.deepcopy(SUITE)
    data["heldout"].update(heldout)
    return load_suite(str(write_manifest(tmp_path / "m.yaml", data)))


def _artifact(path: Path, algorithm: str, init_seed: int, spec) -> str:
    algo = get_algorithm(algorithm)
    cfg = algo.make_config({})
    torch.manual_seed(init_seed)
    save_policy(path, algorithm, cfg, spec, algo.module.build_actor(cfg, spec), {"seed": init_seed})
    return str(path)


# Manifest ---------------------------------------------------------------------------------------


def test_manifest_defaults_and_the_heldout_runs_snapshots(tmp_path):
    suite = _suite(tmp_path)
    assert suite.heldout.coplayers == COPLAYER_KINDS == ("round_robin", "heldout", "random", "self_play")
    # the names the evaluation writes and the report reads (reports/ imports no torch, so it keeps a copy)
    assert COPLAYER_KINDS == crossplay_kinds == report_kinds and SCORE_KIND == report_score_kind
    assert suite.heldout.checkpoints == (0.1, 0.5, 1.0) and suite.heldout.num_envs == 2
    held = [r for r in suite.runs if r.is_heldout]
    focal = [r for r in suite.runs if not r.is_heldout]
    assert held and all(r.snapshots == (0.1, 0.5) and r.content()["snapshots"] == [0.1, 0.5] for r in held)
    assert all(r.snapshots == () and "snapshots" not in r.content() for r in focal)  # focal ids unchanged
    # without the held-out kind there is nothing to snapshot
    assert all(r.snapshots == () for r in _suite(tmp_path, coplayers=["round_robin", "random"]).runs)
    assert _suite(tmp_path, coplayers=["self_play", "random"]).heldout.coplayers == ("random", "self_play")


BAD = [
    (
        {"coplayers": ["round_robin", "bots"]},
        [
            "heldout.coplayers[1]: unknown co-player kind 'bots'",
            "valid choices: round_robin, heldout, random, self_play",
        ],
    ),
    ({"coplayers": []}, ["heldout.coplayers: must be a non-empty list of co-player kinds"]),
    ({"coplayers": "random"}, ["heldout.coplayers: must be a non-empty list"]),
    ({"coplayers": ["random", "random"]}, ["heldout.coplayers: co-player kinds must be distinct"]),
    ({"coplayers": ["self_play"]}, ["heldout.coplayers: needs at least one co-player the focal policy never met"]),
    ({"checkpoints": [0.1, 0.5]}, ["heldout.checkpoints: must include 1.0"]),
    ({"checkpoints": [0, 1.0]}, ["heldout.checkpoints[0]: must be a fraction of training in (0, 1]"]),
    ({"checkpoints": [0.5, 1.5]}, ["heldout.checkpoints[1]: must be a fraction of training in (0, 1]", "got 1.5"]),
    ({"checkpoints": ["half", 1.0]}, ["heldout.checkpoints[0]: must be a fraction"]),
    ({"checkpoints": [0.5, 0.5, 1.0]}, ["heldout.checkpoints: fractions must be distinct"]),
    ({"checkpoints": 0.5}, ["heldout.checkpoints: must be a non-empty list of fractions"]),
    ({"num_envs": 0}, ["heldout.num_envs: must be a positive integer, got 0"]),
]


@pytest.mark.parametrize("heldout,expected", BAD, ids=[repr(h)[:40] for h, _ in BAD])
def test_bad_coplayer_keys_are_refused_with_the_valid_choices(tmp_path, heldout, expected):
    with pytest.raises(ManifestError) as err:
        _suite(tmp_path, **heldout)
    for fragment in expected:
        assert fragment in str(err.value), (fragment, str(err.value))


# The common partner schedule ------------------------------------------------------------------------


def test_partner_schedule_and_eval_seeds_are_identical_across_focal_methods(tmp_path):
    suite = _suite(tmp_path)
    store = SuiteStore(tmp_path / "out", suite.name)
    by = {(r.algorithm, r.seed): r for r in suite.runs if not r.is_heldout}
    a, b = by[("bidist", 0)], by[("mappo", 1)]  # two methods, two seeds
    req_a, _ = build_request(a, suite, store)
    req_b, _ = build_request(b, suite, store)
    assert req_a["focal"] != req_b["focal"] and req_a["focal_algorithm"] != req_b["focal_algorithm"]
    assert req_a["seed"] == req_b["seed"] == schedule_seed(suite, *GAME)  # the suite and scenario only
    assert req_a["num_envs"] == req_b["num_envs"] and req_a["episodes"] == req_b["episodes"]

    def strip(members):  # the members without the focal run's own view of them (availability)
        return {k: [{f: v for f, v in m.items() if f != "available"} for m in ms] for k, ms in members.items()}

    assert strip(req_a["members"]) == strip(req_b["members"])
    rr = req_a["members"]["round_robin"]
    assert [(m["algorithm"], m["seed"]) for m in rr] == [
        ("bidist", 0),
        ("bidist", 1),
        ("mappo", 0),
        ("mappo", 1),
        ("selfplay", 0),
        ("selfplay", 1),
    ]
    held = req_a["members"]["heldout"]
    assert [(m["seed"], m["fraction"], m["file"]) for m in held] == [
        (s, f, policy_file(f)) for s in (100, 101) for f in (0.1, 0.5, 1.0)
    ]
    sched_a = partner_schedule(req_a["members"], 2, 1, req_a["episodes"], req_a["num_envs"], req_a["seed"])
    sched_b = partner_schedule(req_b["members"], 2, 1, req_b["episodes"], req_b["num_envs"], req_b["seed"])
    assert sched_a == sched_b
    # alternating seats, every member in each, whole cycles of at least `episodes` per kind
    rr_entries = [e for e in sched_a if e["kind"] == "round_robin"]
    assert [(e["member"], e["focal_seats"]) for e in rr_entries] == [(m, [s]) for m in range(6) for s in (0, 1)]
    assert len([e for e in sched_a if e["kind"] == "heldout"]) == 12  # 6 members x 2 seats >= 6 episodes
    assert len([e for e in sched_a if e["kind"] == "random"]) == 6  # 3 cycles of 2 seats
    assert [e["focal_seats"] for e in sched_a if e["kind"] == "self_play"] == [[0, 1]] * 6
    assert [e["index"] for e in sched_a] == list(range(len(sched_a)))
    assert all(e["batch"] == e["index"] // 2 and e["copy"] == e["index"] % 2 for e in sched_a)
    assert len({e["batch_seed"] for e in sched_a}) == len({e["batch"] for e in sched_a})
    # another suite name, another schedule seed; another focal run never
    other = load_suite(str(write_manifest(tmp_path / "o.yaml", {**copy.deepcopy(SUITE), "name": "other"})))
    assert schedule_seed(other, *GAME) != req_a["seed"]


def test_seat_arrangements_rotate_the_focal_slots():
    assert seat_arrangements(2, 1) == [(0,), (1,)]
    assert seat_arrangements(3, 1) == [(0,), (1,), (2,)]
    assert seat_arrangements(4, 2) == [(0, 1), (1, 2), (2, 3), (0, 3)]
    with pytest.raises(ValueError, match="n_focal must be in"):
        seat_arrangements(2, 2)


def test_round_robin_excludes_the_focal_algorithm_and_every_method_plays_the_same_episodes(tmp_path):
    env = envs.make_env(*GAME, num_envs=1, seed=0)
    spec = env.spec
    env.close()
    algorithms = {"mappo0": "mappo", "mappo1": "mappo", "selfplay0": "selfplay", "held0": "mappo"}
    paths = {
        name: _artifact(tmp_path / f"{name}.pt", algo, i, spec) for i, (name, algo) in enumerate(algorithms.items())
    }
    members = {
        "round_robin": [
            {"run_id": "m0", "algorithm": "mappo", "path": paths["mappo0"]},
            {"run_id": "m1", "algorithm": "mappo", "path": paths["mappo1"]},
            {"run_id": "s0", "algorithm": "selfplay", "path": paths["selfplay0"]},
            {"run_id": "b0", "algorithm": "bidist", "path": None},
        ],  # not finished
        "heldout": [
            {"run_id": "h", "algorithm": "mappo", "seed": 100, "fraction": f, "path": paths["held0"]}
            for f in (0.1, 0.5, 1.0)
        ],
        "random": [{"name": "uniform_random"}],
        "self_play": [{"name": "self"}],
    }
    kw = {"episodes": 4, "seed": 11, "num_envs": 2}
    as_mappo = evaluate_schedule(paths["mappo0"], members, *GAME, exclude_algorithm="mappo", **kw)
    as_selfplay = evaluate_schedule(paths["selfplay0"], members, *GAME, exclude_algorithm="selfplay", **kw)
    rr_m, rr_s = as_mappo["kinds"]["round_robin"], as_selfplay["kinds"]["round_robin"]
    assert [m["run_id"] for m in rr_m["population"]] == ["s0"]  # never a mappo run, never the unfinished one
    assert [m["run_id"] for m in rr_s["population"]] == ["m0", "m1"]
    assert (rr_m["skipped_own_algorithm"], rr_m["skipped_unavailable"]) == (4, 2)
    assert (rr_s["skipped_own_algorithm"], rr_s["skipped_unavailable"]) == (2, 2)
    # the schedule's indices: mappo's and selfplay's played episodes are slices of the same list
    assert rr_m["episode_index"] == [4, 5] and rr_s["episode_index"] == [0, 1, 2, 3]
    for kind in ("heldout", "random", "self_play"):
        assert as_mappo["kinds"][kind]["episode_index"] == as_selfplay["kinds"][kind]["episode_index"]
    held = as_mappo["kinds"]["heldout"]
    assert [(m["fraction"], m["episodes"]) for m in held["population"]] == [(0.1, 2), (0.5, 2), (1.0, 2)]
    assert held["episodes"] == 6 and held["population_kind"] == KIND_NAMES["heldout"]
    # deterministic: the same evaluation again gives the same returns
    again = evaluate_schedule(paths["mappo0"], members, *GAME, exclude_algorithm="mappo", **kw)
    assert again["kinds"] == as_mappo["kinds"]
    score, gap = coplayer_score(as_mappo["kinds"])
    expected = sum(as_mappo["kinds"][k]["focal_per_capita_return"] for k in ("round_robin", "heldout", "random")) / 3
    assert score == pytest.approx(expected)
    assert gap == pytest.approx(as_mappo["kinds"]["self_play"]["focal_per_capita_return"] - expected)


def test_the_batch_cache_replays_only_the_batches_a_new_member_changes(tmp_path):
    """A re-evaluation after a member finished plays only the batches that hold that member's
    entries and takes the rest from the cache, with returns equal to a fresh evaluation; another
    context (commit) or another policy file reuses nothing."""
    env = envs.make_env(*GAME, num_envs=1, seed=0)
    spec = env.spec
    env.close()
    names = {"mappo0": "mappo", "mappo1": "mappo", "selfplay0": "selfplay", "bidist0": "bidist", "held0": "mappo"}
    paths = {name: _artifact(tmp_path / f"{name}.pt", algo, i, spec) for i, (name, algo) in enumerate(names.items())}

    def members(bidist_path):
        return {
            "round_robin": [
                {"run_id": "m0", "algorithm": "mappo", "path": paths["mappo0"]},
                {"run_id": "m1", "algorithm": "mappo", "path": paths["mappo1"]},
                {"run_id": "s0", "algorithm": "selfplay", "path": paths["selfplay0"]},
                {"run_id": "b0", "algorithm": "bidist", "path": bidist_path},
            ],
            "heldout": [
                {"run_id": "h", "algorithm": "mappo", "fraction": f, "path": paths["held0"]} for f in (0.1, 1.0)
            ],
            "random": [{"name": "uniform_random"}],
            "self_play": [{"name": "self"}],
        }

    kw = {"episodes": 4, "seed": 5, "num_envs": 2, "exclude_algorithm": "mappo"}
    cache: dict = {}
    persisted: list[int] = []
    first = evaluate_schedule(
        paths["mappo0"], members(None), *GAME, batch_cache=cache, cache_context={"code": "c1"},
        on_batch=lambda: persisted.append(len(cache)), **kw,
    )  # fmt: skip
    # round robin: m0, m1 (own algorithm) and b0 (unfinished) are whole batches of nothing to play;
    # s0's batch, 2 held-out batches, 2 random, 2 self-play
    assert first["batches_played"] == 7 and first["batches_reused"] == 0
    assert len(cache) == 7 and persisted == list(range(1, 8))  # on_batch after every batch played
    assert evaluate_schedule(paths["mappo0"], members(None), *GAME, **kw)["kinds"] == first["kinds"]

    # b0 finishes: only its batch is played; everything else comes from the cache, as played afresh
    again = evaluate_schedule(
        paths["mappo0"], members(paths["bidist0"]), *GAME, batch_cache=cache, cache_context={"code": "c1"}, **kw
    )
    fresh = evaluate_schedule(paths["mappo0"], members(paths["bidist0"]), *GAME, **kw)
    assert (again["batches_played"], again["batches_reused"]) == (1, 7)
    assert again["kinds"] == fresh["kinds"]
    assert [m["run_id"] for m in again["kinds"]["round_robin"]["population"]] == ["s0", "b0"]

    # another commit: nothing reused; another focal policy (same path, new content): nothing reused
    other = evaluate_schedule(
        paths["mappo0"], members(paths["bidist0"]), *GAME, batch_cache=dict(cache), cache_context={"code": "c2"}, **kw
    )
    assert other["batches_reused"] == 0 and other["kinds"] == fresh["kinds"]
    _artifact(Path(paths["mappo0"]), "mappo", 99, spec)
    changed = evaluate_schedule(
        paths["mappo0"], members(paths["bidist0"]), *GAME, batch_cache=dict(cache), cache_context={"code": "c1"}, **kw
    )
    assert changed["batches_reused"] == 0


def test_uniform_random_coplayer_draws_every_available_action_equally():
    torch.manual_seed(0)
    actor = UniformRandomActor(4, seed=3)
    rows = 20000
    avail = torch.tensor([[True, False, True, True]]).repeat(rows, 1)
    inp = ActInput(
        torch.zeros(rows, 1), torch.zeros(rows, 0), torch.zeros(rows, dtype=torch.long), avail, torch.zeros(rows, 1)
    )
    logits, h = actor.act(inp, actor.initial_hidden(rows))
    assert h.shape == (rows, 1) and torch.isinf(logits[:, 1]).all()
    greedy = torch.bincount(logits.argmax(-1), minlength=4).float() / rows  # greedy acting: argmax of Gumbel noise
    generator = torch.Generator().manual_seed(1)
    sampled = (
        torch.bincount(
            torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1), minlength=4
        ).float()
        / rows
    )
    for freq in (greedy, sampled):
        assert freq[1] == 0.0
        assert torch.allclose(freq[[0, 2, 3]], torch.full((3,), 1 / 3), atol=0.015), freq  # ~4 standard errors
    actor.reseed(3)
    again, _ = actor.act(inp, h)
    actor.reseed(3)
    assert torch.equal(actor.act(inp, h)[0], again)  # reproducible from its seed


def test_heldout_checkpoint_fractions_are_saved_and_loaded(tmp_path):
    from marl.trainer import train_run
    from marl.trainer import Budget

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    budget = Budget(env_steps=200, eval_interval=200, eval_episodes=2, checkpoint_interval=200)
    train_run(
        "mappo",
        *GAME,
        seed=3,
        budget=budget,
        run_dir=run_dir,
        overrides={"num_envs": 2, "rollout_length": 10, "ppo_epochs": 1, "eval_num_envs": 2},
        snapshots=(0.1, 0.5),
    )
    assert sorted(p.name for p in run_dir.glob("policy*.pt")) == ["policy.pt", "policy_at_0.1.pt", "policy_at_0.5.pt"]
    # the names the records export carries (suites/records.py): the final policy and every snapshot
    assert sorted(p.name for p in run_dir.glob(POLICY_SNAPSHOT_GLOB)) == ["policy_at_0.1.pt", "policy_at_0.5.pt"]
    steps = {}
    for fraction in (0.1, 0.5, 1.0):
        loaded = load_policy(run_dir / policy_file(fraction))
        assert loaded.algorithm == "mappo" and loaded.info["fraction"] == fraction and loaded.info["seed"] == 3
        steps[fraction] = loaded.info["env_steps"]
    # the first update (20 env steps each) at or past each fraction of the 200-step budget
    assert steps == {0.1: 20, 0.5: 100, 1.0: 200}
    early, final = (load_policy(run_dir / policy_file(f)).actor.state_dict() for f in (0.1, 1.0))
    assert any(not torch.equal(early[k], final[k]) for k in early)  # different skill levels, not copies
    assert policy_file(1.0) == POLICY_FILE
    with pytest.raises(ValueError):
        policy_file(0.0)


def test_a_resumed_heldout_run_saves_the_same_checkpoints_as_an_uninterrupted_one(tmp_path):
    from marl.trainer import train_run
    from marl.trainer import Budget

    budget = Budget(env_steps=200, eval_interval=200, eval_episodes=2, checkpoint_interval=100)
    small = {"num_envs": 2, "rollout_length": 10, "ppo_epochs": 1, "eval_num_envs": 2}
    args = ("mappo", *GAME, 4, budget)
    train_run(*args, overrides=small, run_dir=tmp_path / "a", snapshots=(0.1, 0.75))

    class Killed(Exception):
        pass

    def kill_after_the_checkpoint(t_env, total, row):
        if t_env > 100:
            raise Killed

    with pytest.raises(Killed):  # killed at 120 env steps: 0.1 saved before, 0.75 (150) not yet
        train_run(
            *args, overrides=small, run_dir=tmp_path / "b", snapshots=(0.1, 0.75), progress=kill_after_the_checkpoint
        )
    assert (tmp_path / "b" / policy_file(0.1)).is_file() and not (tmp_path / "b" / policy_file(0.75)).exists()
    train_run(*args, overrides=small, run_dir=tmp_path / "b", snapshots=(0.1, 0.75))  # resumes from 100
    for fraction in (0.1, 0.75, 1.0):
        a, b = (load_policy(tmp_path / d / policy_file(fraction)) for d in ("a", "b"))
        assert a.info["env_steps"] == b.info["env_steps"]
        for key, value in a.actor.state_dict().items():
            assert torch.equal(value, b.actor.state_dict()[key]), (fraction, key)


def test_round_robin_holds_the_main_comparison_not_the_ablation_variants(tmp_path):
    """An ablation group's variants are focal runs (each gets its cross-play) but no co-players: the
    round robin is the methods' main comparison, the run the ablation group shares with it once."""
    data = copy.deepcopy(SUITE)
    data["algorithms"] = [
        "mappo",
        "bidist",
        {"name": "bidist", "label": "bidist", "group": "ablation_bidist"},
        {
            "name": "bidist",
            "label": "bidist_forward_only",
            "group": "ablation_bidist",
            "overrides": {"schedule": "forward"},
        },
    ]
    suite = load_suite(str(write_manifest(tmp_path / "m.yaml", data)))
    store = SuiteStore(tmp_path / "out", suite.name)
    variant = next(r for r in suite.runs if r.label == "bidist_forward_only" and r.seed == 0)
    mappo = next(r for r in suite.runs if r.algorithm == "mappo" and r.seed == 0 and not r.is_heldout)
    for focal in (variant, mappo):  # the variant is evaluated against the same population
        request, _ = build_request(focal, suite, store)
        rr = request["members"]["round_robin"]
        assert [(m["label"], m["seed"]) for m in rr] == [("bidist", 0), ("bidist", 1), ("mappo", 0), ("mappo", 1)]
