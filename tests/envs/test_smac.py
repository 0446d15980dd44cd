"""The StarCraft II family (envs/smac.py).

StarCraft II and smacv2 are not installed on the development machine, so most tests check what can
be checked without the game:

* the scenario list, option validation and the smacv2 arguments built from them;
* ``unavailable_reason`` against directory layouts built under tmp_path (a check of the check: no
  game is faked);
* the worker pool - batching, auto-reset, ``final_*``, the terminated/truncated/won mapping,
  seeding, error propagation and the shutdown of every process a worker starts - driven by
  ``ScriptedEnv``, a small test double with smacv2's env API injected through ``SmacEnv``'s
  ``env_factory`` argument (``make``/``make_env`` never accept it).

``test_real_game_3m`` needs the game (``needs_sc2``); it runs in the project's Docker image.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

import envs
from envs import smac
from envs.base import BackendUnavailableError, EnvError, UnknownChoiceError

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Test doubles (they run inside the worker processes)


class ScriptedEnv:
    """A scripted stand-in with smacv2's env API (not StarCraft), for the worker-pool plumbing.

    2 agents, 4 actions, episode limit 4. Agent i observes ``[t, i, episode, draw]``; the state is
    ``[t, episode, draw, seed % 1000, reward so far]``; ``draw`` comes from a generator seeded with
    the copy's seed, one draw per reset.
    Rules of a step: the team reward is the number of agents choosing action 3; all agents choosing
    3 wins the battle, all choosing 2 loses it; otherwise the episode ends at t == 4 with
    ``info["episode_limit"]`` (smacv2 with continuing_episode=True). Agent 0 cannot choose action
    1 at odd t. Its first reset "launches the game": a ``sleep`` child process that ``close()``
    leaves running, so only the pool's own cleanup stops it.
    """

    N_AGENTS, N_ACTIONS, LIMIT = 2, 4, 4

    def __init__(self, kwargs: dict):
        self.seed = kwargs["seed"]
        self.rng = np.random.default_rng(self.seed)
        self.game: subprocess.Popen | None = None
        self.t = 0
        self.episode = -1
        self.draw = 0.0
        self.total = 0.0

    def get_env_info(self) -> dict:
        return {"state_shape": 5, "obs_shape": 4, "n_actions": self.N_ACTIONS, "n_agents": self.N_AGENTS,
                "episode_limit": self.LIMIT}  # fmt: skip

    def reset(self):
        if self.game is None:
            self.game = subprocess.Popen(["sleep", "300"])
        self.t, self.total = 0, 0.0
        self.episode += 1
        self.draw = float(self.rng.random())

    def get_obs(self):
        return [np.array([self.t, i, self.episode, self.draw], dtype=np.float32) for i in range(self.N_AGENTS)]

    def get_state(self):
        return np.array([self.t, self.episode, self.draw, self.seed % 1000, self.total], dtype=np.float32)

    def get_avail_actions(self):
        avail = [[1] * self.N_ACTIONS for _ in range(self.N_AGENTS)]
        if self.t % 2 == 1:
            avail[0][1] = 0
        return avail

    def step(self, actions):
        assert self.get_avail_actions()[0][actions[0]] == 1, "unavailable action reached the env"
        self.t += 1
        reward = float(sum(a == 3 for a in actions))
        self.total += reward
        info = {"battle_won": False}
        if all(a == 3 for a in actions):
            info["battle_won"] = True
            return reward, True, info
        if all(a == 2 for a in actions):
            return reward, True, info
        if self.t >= self.LIMIT:
            info["episode_limit"] = True
            return reward, True, info
        return reward, False, info

    def close(self):
        pass  # leaks self.game on purpose


class BrokenEnv(ScriptedEnv):
    def __init__(self, kwargs: dict):
        raise RuntimeError("no game here")


class CrashingEnv(ScriptedEnv):
    def step(self, actions):
        raise ValueError("boom in step")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_gone(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return all(_gone(pid) for pid in pids)


def _live_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if not _gone(p.pid)}


@pytest.fixture(scope="module")
def env3():
    env = smac.SmacEnv("3m", num_envs=3, seed=1, env_factory=ScriptedEnv)
    yield env
    env.close()


# ---------------------------------------------------------------------------------------------
# Scenarios, options, smacv2 arguments

SMAC_MAPS = {
    "3m", "8m", "25m", "5m_vs_6m", "8m_vs_9m", "10m_vs_11m", "27m_vs_30m", "MMM", "MMM2", "2s3z",
    "3s5z", "3s5z_vs_3s6z", "3s_vs_3z", "3s_vs_4z", "3s_vs_5z", "1c3s5z", "2m_vs_1z", "corridor",
    "6h_vs_8z", "2s_vs_1sc", "so_many_baneling", "bane_vs_bane", "2c_vs_64zg",
}  # fmt: skip


def test_scenarios_are_smacv2_maps_and_capability_scenarios():
    scenarios = envs.list_scenarios("smac")
    capability = {f"{race}_{size}" for race in ("protoss", "terran", "zerg")
                  for size in ("5_vs_5", "10_vs_10", "20_vs_20", "10_vs_11", "20_vs_23")}  # fmt: skip
    assert len(scenarios) == len(set(scenarios)) == 38
    assert set(scenarios) == SMAC_MAPS | capability
    with pytest.raises(UnknownChoiceError, match="MMM2"):
        envs.unavailable_reason("smac", "4m")


def test_map_files():
    assert smac.map_file("MMM2") == Path("SMAC_Maps/MMM2.SC2Map")
    assert smac.map_file("zerg_20_vs_23") == Path("SMAC_Maps/32x32_flat.SC2Map")


def test_smacv2_kwargs_for_a_smac_map():
    kwargs = smac.smacv2_kwargs("3s_vs_5z", smac.scenario_options("3s_vs_5z", {"difficulty": "5"}), seed=9)
    assert kwargs["map_name"] == "3s_vs_5z"
    assert kwargs["seed"] == 9 and kwargs["difficulty"] == "5"
    assert kwargs["continuing_episode"] is True  # smacv2 then reports info["episode_limit"]
    assert kwargs["game_version"] is None  # "" -> pysc2 picks the newest build
    assert kwargs["reward_scale_rate"] == 20.0 and kwargs["state_last_action"] is True
    assert "capability_config" not in kwargs and "obs_own_pos" not in kwargs


def test_smacv2_kwargs_for_capability_scenarios():
    kwargs = smac.smacv2_kwargs("terran_10_vs_11", smac.CapabilityOptions(reflect_probability=0.25), seed=0)
    assert kwargs["map_name"] == "10gen_terran"
    assert kwargs["obs_own_pos"] and kwargs["use_unit_ranges"] and kwargs["min_attack_range"] == 2
    assert "reflect_probability" not in kwargs
    config = kwargs["capability_config"]
    assert (config["n_units"], config["n_enemies"]) == (10, 11)
    assert config["team_gen"] == {
        "dist_type": "weighted_teams",
        "unit_types": ["marine", "marauder", "medivac"],
        "weights": [0.45, 0.45, 0.1],
        "exception_unit_types": ["medivac"],
        "observe": True,
    }
    assert config["start_positions"] == {"dist_type": "surrounded_and_reflect", "p": 0.25, "map_x": 32, "map_y": 32}
    protoss = smac.smacv2_kwargs("protoss_5_vs_5", smac.CapabilityOptions(), seed=0)["capability_config"]
    assert protoss["team_gen"]["unit_types"] == ["stalker", "zealot", "colossus"]
    assert protoss["team_gen"]["exception_unit_types"] == []
    zerg = smac.smacv2_kwargs("zerg_20_vs_23", smac.CapabilityOptions(), seed=0)["capability_config"]
    assert zerg["team_gen"]["weights"] == [0.45, 0.1, 0.45] and zerg["n_enemies"] == 23


def test_option_validation():
    # A choice field (Literal): the valid values are listed; a number for a quoted code says so.
    with pytest.raises(EnvError, match=r"'difficulty' must be one of 1, 2, .*, A, got 7 \(an int; quote it: '7'\)"):
        smac.scenario_options("3m", {"difficulty": 7})
    with pytest.raises(EnvError, match="'difficulty' must be one of 1, 2, 3, 4, 5, 6, 7, 8, 9, A, got '11'"):
        smac.scenario_options("3m", {"difficulty": "11"})
    with pytest.raises(EnvError, match=r"unknown option\(s\) \['conic_fov'\].*valid options: difficulty \(1\|2\|3"):
        smac.scenario_options("3m", {"conic_fov": True})  # capability scenarios only
    assert smac.scenario_options("protoss_5_vs_5", {"conic_fov": True}).conic_fov is True
    with pytest.raises(EnvError, match="step_mul must be >= 1"):
        smac.scenario_options("3m", {"step_mul": 0})
    with pytest.raises(EnvError, match="prob_obs_enemy must be in"):
        smac.scenario_options("zerg_5_vs_5", {"prob_obs_enemy": 1.5})
    with pytest.raises(EnvError, match="reward_defeat must be <= 0"):
        smac.scenario_options("3m", {"reward_defeat": 1})
    assert smac.scenario_options("3m", {"reward_win": 100}).reward_win == 100.0


def test_make_validates_options_before_the_backend_and_never_takes_a_factory():
    with pytest.raises(EnvError, match="unknown option"):
        smac.make("3m", difficulty="7", env_factory=ScriptedEnv)
    with pytest.raises(EnvError, match="'difficulty' must be one of"):
        smac.make("3m", difficulty=7)


def test_capability_distributions_are_seeded():
    """smacv2 draws teams and start positions from unseeded generators; the factory reseeds them.
    Building the wrapper needs smacv2 but launches no game."""
    pytest.importorskip("smacv2.env")

    def draws(seed: int) -> list[str]:
        env = smac.smacv2_factory(smac.smacv2_kwargs("zerg_10_vs_11", smac.CapabilityOptions(), seed))
        random.seed(seed)  # as the worker does
        out = []
        for _ in range(3):
            for distribution in env.env_key_to_distribution_map.values():
                out.append(repr(distribution.generate()))
        return out

    assert draws(4) == draws(4) and draws(4) != draws(5)


# ---------------------------------------------------------------------------------------------
# What is missing, and the refusal up front


def _sc2_layout(root: Path, maps=("3m",), build: int | None = 75689) -> Path:
    """A directory shaped like a StarCraft II install (empty files), for testing the check."""
    if build is not None:
        binary = root / "Versions" / f"Base{build}" / "SC2_x64"
        binary.parent.mkdir(parents=True)
        binary.write_bytes(b"")
    (root / "Maps" / "SMAC_Maps").mkdir(parents=True)
    for name in maps:
        (root / "Maps" / "SMAC_Maps" / f"{name}.SC2Map").write_bytes(b"map " + name.encode())
    return root


def test_unavailable_without_smacv2(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "smacv2", None)  # makes it unimportable for this test
    monkeypatch.setenv("SC2PATH", str(_sc2_layout(tmp_path / "sc2")))
    reason = smac.unavailable_reason("3m")
    assert reason is not None
    assert "smacv2" in reason and "pip install git+https://github.com/oxwhirl/smacv2.git" in reason
    assert "Docker image" in reason
    assert "StarCraft II is not installed" not in reason and "map file" not in reason


def test_unavailable_without_sc2_directory(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("SC2PATH", str(missing))
    reason = smac.unavailable_reason("3m")
    assert f"StarCraft II is not installed at {missing} (SC2PATH={missing})" in reason
    assert "set SC2PATH" in reason and "Docker image" in reason


def test_unavailable_uses_the_default_path_when_sc2path_is_unset(monkeypatch, tmp_path):
    monkeypatch.delenv("SC2PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    reason = smac.unavailable_reason("8m")
    assert f"StarCraft II is not installed at {tmp_path / 'StarCraftII'}" in reason
    assert "SC2PATH is not set, so smacv2's default ~/StarCraftII was used" in reason


def test_unavailable_without_binary(monkeypatch, tmp_path):
    root = _sc2_layout(tmp_path / "sc2", build=None)
    monkeypatch.setenv("SC2PATH", str(root))
    reason = smac.unavailable_reason("3m")
    assert f"no StarCraft II binary under {root / 'Versions'}" in reason
    assert "map file" not in reason


def test_unavailable_without_map_file(monkeypatch, tmp_path):
    root = _sc2_layout(tmp_path / "sc2", maps=("3m",))
    monkeypatch.setenv("SC2PATH", str(root))
    reason = smac.unavailable_reason("MMM2")
    assert f"the map file {root / 'Maps/SMAC_Maps/MMM2.SC2Map'} is missing" in reason
    assert "releases/tag/maps" in reason
    assert "binary" not in reason and "not installed at" not in reason
    assert f"{root / 'Maps/SMAC_Maps/32x32_flat.SC2Map'} is missing" in smac.unavailable_reason("protoss_5_vs_5")


def test_available_layout(monkeypatch, tmp_path):
    root = _sc2_layout(tmp_path / "sc2", maps=("3m", "32x32_flat"))
    monkeypatch.setenv("SC2PATH", str(root))
    assert smac.sc2_builds(root) == [75689]
    reason = smac.unavailable_reason("3m")
    capability_reason = smac.unavailable_reason("zerg_10_vs_10")
    if importlib.util.find_spec("smacv2") is not None and importlib.util.find_spec("pysc2") is not None:
        assert reason is None and capability_reason is None
    else:  # only the packages are missing
        for text in (reason, capability_reason):
            assert "are not installed" in text and "map file" not in text and "binary" not in text
    versions = smac.backend_versions()
    assert versions["sc2_build"] == 75689 and versions["sc2_version"] == "4.10.0"


def test_make_env_refuses_up_front(monkeypatch, tmp_path):
    monkeypatch.setenv("SC2PATH", str(tmp_path / "nowhere"))
    before = _live_children()
    with pytest.raises(BackendUnavailableError, match="StarCraft II is not installed"):
        envs.make_env("smac", "3s_vs_5z", num_envs=2)
    with pytest.raises(BackendUnavailableError, match="StarCraft II is not installed"):
        smac.SmacEnv("3m")  # without a factory it is smacv2 or nothing
    assert _live_children() <= before  # no worker was started


# ---------------------------------------------------------------------------------------------
# The worker pool, driven by ScriptedEnv


def test_spec_and_reset_shapes(env3):
    spec = env3.spec
    assert (spec.family, spec.scenario, spec.num_envs) == ("smac", "3m", 3)
    assert (spec.n_agents, spec.n_actions, spec.obs_shape, spec.state_shape) == (2, 4, (4,), (5,))
    assert spec.episode_limit == 4 and spec.has_won and spec.shared_reward
    assert spec.options["difficulty"] == "7"
    out = env3.reset(seed=3)
    assert out.obs.shape == (3, 2, 4) and out.obs.dtype == torch.float32
    assert out.state.shape == (3, 5) and out.state.dtype == torch.float32
    assert out.avail_actions.shape == (3, 2, 4) and out.avail_actions.dtype == torch.bool
    assert out.reward.shape == (3, 2) and not out.reward.any()
    assert not (out.terminated.any() or out.truncated.any() or out.won.any())
    assert torch.equal(out.final_obs, out.obs) and torch.equal(out.final_state, out.state)
    assert out.obs[:, :, 0].eq(0).all() and torch.equal(out.obs[:, :, 1], torch.tensor([[0.0, 1.0]] * 3))
    assert env3.provenance()["backend"] == "test double"


def test_step_batches_and_maps_won_lost_running(env3):
    env3.reset(seed=3)
    out = env3.step(torch.tensor([[3, 3], [2, 2], [3, 0]]))  # copy 0 wins, copy 1 loses, copy 2 goes on
    assert torch.equal(out.reward, torch.tensor([[2.0, 2.0], [0.0, 0.0], [1.0, 1.0]]))
    assert out.terminated.tolist() == [True, True, False]
    assert out.truncated.tolist() == [False, False, False]
    assert out.won.tolist() == [True, False, False]
    # ended copies: obs of the new episode (t=0, episode 1), final_* of the old one (t=1, episode 0)
    assert out.obs[:2, :, 0].eq(0).all() and out.obs[:2, :, 2].eq(1).all()
    assert out.final_obs[:2, :, 0].eq(1).all() and out.final_obs[:2, :, 2].eq(0).all()
    assert out.final_state[0, 4] == 2.0 and out.state[0, 4] == 0.0
    assert out.avail_actions[:2].all() and not out.final_avail_actions[0, 0, 1]
    # the running copy: final_* equal the current ones
    assert out.obs[2, :, 0].eq(1).all() and torch.equal(out.final_obs[2], out.obs[2])
    assert torch.equal(out.final_state[2], out.state[2])
    assert torch.equal(out.final_avail_actions[2], out.avail_actions[2]) and not out.avail_actions[2, 0, 1]


def test_episode_limit_is_truncation(env3):
    env3.reset(seed=3)
    for _ in range(3):
        out = env3.step(torch.zeros(3, 2, dtype=torch.long))
        assert not out.done.any()
    out = env3.step(torch.zeros(3, 2, dtype=torch.long))
    assert out.truncated.all() and not out.terminated.any() and not out.won.any()
    assert out.final_obs[:, :, 0].eq(4).all() and out.obs[:, :, 0].eq(0).all()


def test_unavailable_and_malformed_actions_are_refused(env3):
    env3.reset(seed=3)
    env3.step(torch.zeros(3, 2, dtype=torch.long))  # t = 1: agent 0 may not choose action 1
    with pytest.raises(EnvError, match=r"\(copy, agent, action\): \[\(1, 0, 1\)\]"):
        env3.step(torch.tensor([[0, 0], [1, 1], [0, 1]]))
    with pytest.raises(EnvError, match=r"actions must be in \[0, 4\)"):
        env3.step(torch.tensor([[0, 0], [0, 4], [0, 0]]))
    with pytest.raises(EnvError, match="shape"):
        env3.step(torch.zeros(2, 2, dtype=torch.long))
    out = env3.step(torch.zeros(3, 2, dtype=torch.long))  # nothing was sent: still usable, t = 2
    assert out.obs[:, :, 0].eq(2).all()


def test_seeded_reset_relaunches_and_reproduces(env3):
    first = env3.reset(seed=5)
    games = env3.game_pids()
    assert all(len(pids) == 1 for pids in games)
    draws = first.obs[:, 0, 3]
    assert len(set(draws.tolist())) == 3  # every copy has its own seed
    again = env3.reset(seed=5)
    assert torch.equal(again.obs, first.obs) and torch.equal(again.state, first.state)
    # the game took its seed at launch, so a seeded reset relaunched it and stopped the old one
    assert all(new != old for new, old in zip(env3.game_pids(), games))
    assert _wait_gone([pid for pids in games for pid in pids], timeout=5)
    assert not torch.equal(env3.reset(seed=6).obs[:, 0, 3], draws)
    unseeded = env3.reset()  # next episode of the same game: a new draw from the same generator
    assert unseeded.obs[:, :, 2].eq(1).all() and not torch.equal(unseeded.obs[:, 0, 3], draws)


def test_close_stops_exactly_the_game_processes():
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        env = smac.SmacEnv("3m", num_envs=2, seed=0, env_factory=ScriptedEnv)
        env.reset()
        games = [pid for pids in env.game_pids() for pid in pids]
        workers = env.worker_pids()
        assert len(games) == 2 and not any(_gone(pid) for pid in games + workers)
        assert all(psutil.Process(pid).ppid() in workers for pid in games)
        env.close()
        assert _wait_gone(games + workers, timeout=5)
        assert bystander.poll() is None  # an unrelated process lives on
        env.close()  # idempotent
        with pytest.raises(EnvError, match="closed"):
            env.reset()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_killed_worker_is_reported_and_its_game_still_stopped():
    env = smac.SmacEnv("3m", num_envs=1, seed=0, env_factory=ScriptedEnv)
    try:
        env.reset()
        (game,) = env.game_pids()[0]
        os.kill(env.worker_pids()[0], signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"worker 0 \(pid \d+\) (died|is gone)"):
            env.step(torch.zeros(1, 2, dtype=torch.long))
        with pytest.raises(RuntimeError, match="unusable after a worker failure"):
            env.reset()
        assert not _gone(game)  # orphaned by the dead worker
    finally:
        env.close()
    assert _wait_gone([game], timeout=5)


def test_worker_errors_carry_the_traceback():
    before = _live_children()
    with pytest.raises(RuntimeError, match="(?s)worker 0 failed during start.*no game here"):
        smac.SmacEnv("3m", num_envs=1, env_factory=BrokenEnv)
    assert _wait_gone(_live_children() - before, timeout=5)
    env = smac.SmacEnv("3m", num_envs=1, env_factory=CrashingEnv)
    try:
        env.reset()
        (game,) = env.game_pids()[0]
        with pytest.raises(RuntimeError, match="(?s)failed during step.*ValueError: boom in step"):
            env.step(torch.zeros(1, 2, dtype=torch.long))
    finally:
        env.close()
    assert _wait_gone([game], timeout=5)


@pytest.mark.parametrize("parent_end", ["killed", "exits without close"])
def test_workers_and_games_end_with_the_parent(parent_end):
    """A SIGKILLed parent: the workers notice and stop their games. A parent that just exits: the
    atexit handler closes the env."""
    script = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT)!r})
from envs.smac import SmacEnv
from tests.envs.test_smac import ScriptedEnv
env = SmacEnv("3m", num_envs=1, env_factory=ScriptedEnv)
env.reset()
print(json.dumps({{"workers": env.worker_pids(), "games": env.game_pids()}}), flush=True)
if {parent_end == "killed"}:
    time.sleep(300)
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        pids = json.loads(parent.stdout.readline())
        if parent_end == "exits without close":
            assert parent.wait(timeout=60) == 0
    finally:
        parent.kill()
        parent.wait()
    everything = pids["workers"] + [pid for pids in pids["games"] for pid in pids]
    assert len(everything) == 2
    assert _wait_gone(everything, timeout=15 if parent_end == "killed" else 0.5)


# ---------------------------------------------------------------------------------------------
# The real game (Docker image)


@pytest.mark.needs_sc2
def test_real_game_3m():
    env = envs.make_env("smac", "3m", num_envs=2, seed=0)
    try:
        spec = env.spec
        # SMAC's 3m: 6 + 3 actions, obs 4 + 3*5 + 2*5 + 1, state 3*4 + 3*3 + 3*9 (last actions)
        assert (spec.n_agents, spec.n_actions, spec.obs_shape, spec.state_shape) == (3, 9, (30,), (48,))
        assert spec.episode_limit == 60
        out = env.reset()
        games = [pid for pids in env.game_pids() for pid in pids]
        assert games and not any(_gone(pid) for pid in games)
        assert out.avail_actions[:, :, 0].eq(False).all()  # no-op is for dead agents only
        gen = torch.Generator().manual_seed(0)
        for _ in range(10):
            actions = torch.multinomial(out.avail_actions.view(-1, 9).float(), 1, generator=gen).view(2, 3)
            out = env.step(actions)
            assert out.obs.shape == (2, 3, 30) and out.state.shape == (2, 48)
            assert out.avail_actions.shape == (2, 3, 9) and out.reward.shape == (2, 3)
            assert (out.reward >= 0).all() and torch.equal(out.reward[:, 0:1].expand(-1, 3), out.reward)
            assert not (out.terminated & out.truncated).any()
        provenance = env.provenance()
        assert provenance["sc2_build"] is not None and provenance["map_sha256"]
        workers = env.worker_pids()
    finally:
        env.close()
    assert _wait_gone(games + workers, timeout=30)
