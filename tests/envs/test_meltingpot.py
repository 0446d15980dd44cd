"""Melting Pot adapter: real dm-meltingpot substrates in worker processes.

Kept cheap: the 2-player ``prisoners_dilemma_in_the_matrix__repeated`` substrate, module-scoped
envs, few steps. The first env of the session pays for importing TensorFlow in the fork server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

pytest.importorskip("meltingpot")

from envs import BackendUnavailableError, EnvError, UnknownChoiceError, make_env, unavailable_reason  # noqa: E402
from envs import meltingpot as mp_env  # noqa: E402

PD = "prisoners_dilemma_in_the_matrix__repeated"
NOOP_SCENARIO = "collaborative_cooking__asymmetric_2"  # 1 focal player, partner is a noop bot
B = 2


@pytest.fixture(scope="module")
def env():
    e = make_env("meltingpot", PD, num_envs=B, seed=3)
    yield e
    e.close()


@pytest.fixture(scope="module")
def short_env():
    """Episodes cut after 5 steps; one worker holds both copies; every declared extra obs."""
    e = make_env("meltingpot", PD, num_envs=B, seed=11, max_episode_frames=5, envs_per_worker=2, all_extra_obs=True)
    yield e
    e.close()


def _actions(generator: torch.Generator, n: int = 2) -> torch.Tensor:
    return torch.randint(0, 8, (B, n), generator=generator)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(")")[-1].split()[0] != "Z"


# Names and availability ----------------------------------------------------------------------


def test_lists_all_substrates_then_all_scenarios():
    import meltingpot

    names = mp_env.list_scenarios()
    assert len(meltingpot.substrate.SUBSTRATES) == 49
    assert names[:49] == sorted(meltingpot.substrate.SUBSTRATES)
    assert set(names[49:]) == set(meltingpot.scenario.SCENARIOS)
    assert PD in names and NOOP_SCENARIO in names


def test_unknown_name_lists_valid_choices():
    with pytest.raises(UnknownChoiceError, match="valid choices: .*clean_up"):
        make_env("meltingpot", "not_a_substrate")


def test_substrates_and_noop_scenarios_are_available():
    assert unavailable_reason("meltingpot", PD) is None
    assert unavailable_reason("meltingpot", "clean_up") is None
    assert unavailable_reason("meltingpot", NOOP_SCENARIO) is None


def test_scenario_with_missing_bot_models_says_what_and_how():
    scenario = "prisoners_dilemma_in_the_matrix__repeated_0"
    missing = mp_env._missing_bot_models(scenario)
    if not missing:
        pytest.skip("the bot asset bundle is installed here")
    reason = unavailable_reason("meltingpot", scenario)
    version = mp_env.install_info()["assets_version"]
    assert f"meltingpot-assets-{version}" in reason
    assert str(mp_env.models_root()) in reason and missing[0] in reason
    assert "Docker image" in reason and "setup_venv.sh" in reason
    with pytest.raises(BackendUnavailableError, match=scenario):
        make_env("meltingpot", scenario)


def test_bad_options_are_errors_listing_valid_ones():
    with pytest.raises(EnvError, match="valid options: envs_per_worker"):
        make_env("meltingpot", PD, colour="red")
    with pytest.raises(EnvError, match="start_method"):
        make_env("meltingpot", PD, start_method="fork")
    with pytest.raises(EnvError, match="substrates only"):
        make_env("meltingpot", NOOP_SCENARIO, max_episode_frames=10)


# Spec, reset and step -------------------------------------------------------------------------


def test_spec(env):
    s = env.spec
    assert (s.n_agents, s.n_actions, s.num_envs) == (2, 8, B)
    assert s.obs_shape == (40, 40, 3) and s.state_shape == (120, 184, 3)
    assert s.obs_dtype == torch.uint8 and s.state_dtype == torch.uint8
    # Only the observations Melting Pot lets focal players see (INTERACTION_INVENTORIES is not one).
    assert dict(s.extra_obs_shapes) == {"INVENTORY": (2,), "READY_TO_SHOOT": ()}
    assert s.shared_reward is False and s.has_won is False
    assert s.episode_limit == 5000


def test_reset_output(env):
    out = env.reset()
    assert out.obs.shape == (B, 2, 40, 40, 3) and out.obs.dtype == torch.uint8
    assert out.state.shape == (B, 120, 184, 3) and out.state.dtype == torch.uint8
    assert out.obs_extra["INVENTORY"].shape == (B, 2, 2) and out.obs_extra["INVENTORY"].dtype == torch.float32
    assert out.obs_extra["READY_TO_SHOOT"].shape == (B, 2)
    assert out.avail_actions.shape == (B, 2, 8) and out.avail_actions.all()
    assert out.reward.shape == (B, 2) and not out.reward.any()
    assert not (out.terminated.any() or out.truncated.any() or out.won.any())
    assert torch.equal(out.final_obs, out.obs) and torch.equal(out.final_state, out.state)
    assert out.obs.float().std() > 0 and out.state.float().std() > 0  # real pixels
    # Copies are seeded differently, so they start differently.
    assert not torch.equal(out.state[0], out.state[1])


def test_step_outputs_are_per_player_and_independent_of_buffers(env):
    out = env.reset(seed=5)
    first = out.obs.clone()
    g = torch.Generator().manual_seed(0)
    out = env.step(_actions(g))
    assert out.reward.shape == (B, 2) and out.reward.dtype == torch.float32
    assert out.obs.dtype == torch.uint8
    # Returned tensors are copies: later steps do not overwrite them.
    assert not torch.equal(first, out.obs)
    assert out.obs.float().std() > 0


def test_bad_actions_are_rejected(env):
    env.reset()
    with pytest.raises(EnvError, match="shape"):
        env.step(torch.zeros(B, 3, dtype=torch.long))
    with pytest.raises(EnvError, match=r"\[0, 8\)"):
        env.step(torch.full((B, 2), 8))


def test_rewards_are_per_player_over_an_episode(env):
    """Run until the substrate's own random end: rewards differ between players; the end is a
    terminal (discount 0) step and the copy auto-resets."""
    out = env.reset(seed=1)
    g = torch.Generator().manual_seed(1)
    returns = torch.zeros(B, 2)
    for t in range(1, 5001):  # noqa: B007 (t is the episode length, read after the loop)
        out = env.step(_actions(g))
        returns += out.reward
        if out.done.any():
            break
    assert 1000 <= t < 5000  # PD repeated: at least 1000 steps, then a random end
    ended = out.done
    assert out.terminated[ended].all() and not out.truncated.any()
    assert not torch.equal(out.final_obs[ended], out.obs[ended])
    assert returns.abs().sum() > 0 and not torch.equal(returns[:, 0], returns[:, 1])


# Auto-reset --------------------------------------------------------------------------------------


def _run(env, seed, steps):
    g = torch.Generator().manual_seed(seed)
    outs = [env.reset(seed=seed)]
    for _ in range(steps):
        outs.append(env.step(_actions(g)))
    return outs


def test_truncation_auto_resets_with_final_fields(short_env):
    assert short_env.spec.episode_limit == 5
    assert "INTERACTION_INVENTORIES" in short_env.spec.extra_obs_shapes  # all_extra_obs=True
    outs = _run(short_env, seed=2, steps=10)
    for t, out in enumerate(outs[1:], start=1):
        assert not out.terminated.any()
        assert bool(out.truncated.all()) == (t % 5 == 0) and bool(out.truncated.any()) == (t % 5 == 0)
        if t % 5:
            assert torch.equal(out.final_obs, out.obs) and torch.equal(out.final_state, out.state)
            for key in out.obs_extra:
                assert torch.equal(out.final_obs_extra[key], out.obs_extra[key])
    end = outs[5]
    # The new episode starts fresh: nothing collected yet, unlike the final step of the old one.
    assert not torch.equal(end.final_obs, end.obs)
    start_inventory = outs[0].obs_extra["INVENTORY"]
    assert torch.equal(end.obs_extra["INVENTORY"], start_inventory)


def test_worker_copy_writes_final_step_then_new_episode():
    """Worker-level check on a real substrate: at an episode end the final_* rows hold the LAST
    timestep's observations and the current rows the new episode's first ones."""
    layout = mp_env._layout(PD, all_extra_obs=False, max_episode_frames=3)
    fields = mp_env._buffer_fields(layout, num_envs=1)
    views = mp_env._views(memoryview(bytearray(mp_env._buffer_size(fields))), fields)
    copy = mp_env._Copy(layout, 0, views)
    copy.build(seed=1)
    seen = []
    real_step, real_reset = copy.env.step, copy.env.reset
    copy.env.step = lambda a: seen.append(("step", real_step(a))) or seen[-1][1]
    copy.env.reset = lambda: seen.append(("reset", real_reset())) or seen[-1][1]
    try:
        copy.reset(None)
        views["actions"][0] = [1, 2]
        for _ in range(3):
            copy.step()
        assert [kind for kind, _ in seen] == ["reset", "step", "step", "step", "reset"]
        last, first = seen[3][1], seen[4][1]
        assert last.last() and first.first()
        assert views["truncated"][0] and not views["terminated"][0]
        for i in range(2):
            assert (views["final_obs"][0, i] == last.observation[i]["RGB"]).all()
            assert (views["obs"][0, i] == first.observation[i]["RGB"]).all()
            assert (views["final_extra:INVENTORY"][0, i] == last.observation[i]["INVENTORY"]).all()
        assert (views["final_state"][0] == last.observation[0]["WORLD.RGB"]).all()
        assert (views["state"][0] == first.observation[0]["WORLD.RGB"]).all()
        assert (views["reward"][0] == last.reward).all()
    finally:
        copy.close()


# Seeding ---------------------------------------------------------------------------------------------


def test_same_seed_same_start_different_seed_different(env):
    """The seed fixes each copy's world (Lua seed). Step-by-step replay is not asserted: the
    dmlab2d engine itself is not bit-reproducible (see the module docstring)."""
    a, b, c = env.reset(seed=21), env.reset(seed=21), env.reset(seed=22)
    assert torch.equal(a.state, b.state)
    assert not torch.equal(a.state, c.state)


def test_make_seed_is_used_by_the_first_reset():
    e = make_env("meltingpot", PD, num_envs=1, seed=9, envs_per_worker=1)
    try:
        first = e.reset().state
        assert torch.equal(first, e.reset(seed=9).state)
    finally:
        e.close()


def test_copy_seeds_are_distinct_and_reproducible():
    seeds = mp_env.copy_seeds(3, 8)
    assert seeds == mp_env.copy_seeds(3, 8) and len(set(seeds)) == 8
    assert seeds[:4] == mp_env.copy_seeds(3, 4) and seeds != mp_env.copy_seeds(4, 8)


# Scenarios and provenance -------------------------------------------------------------------------


def test_noop_bot_scenario_exposes_only_focal_players():
    e = make_env("meltingpot", NOOP_SCENARIO, num_envs=1, seed=0)
    try:
        assert e.spec.n_agents == 1 and e.spec.obs_shape == (40, 40, 3)
        assert e.spec.state_shape == (40, 72, 3)  # the substrate's WORLD.RGB, read beside the scenario
        out = e.reset()
        assert out.obs.shape == (1, 1, 40, 40, 3) and out.state.float().std() > 0
        out = e.step(torch.zeros(1, 1, dtype=torch.long))
        assert out.reward.shape == (1, 1)
        prov = e.provenance()
        assert prov["backend"] == "dm-meltingpot scenario" and prov["scenario_bots_present"] is True
    finally:
        e.close()


def test_provenance(env):
    prov = env.provenance()
    assert prov["family"] == "meltingpot" and prov["scenario"] == PD
    assert prov["dm_meltingpot"] == "2.4.1" and prov["dmlab2d"]
    assert prov["install_mode"] in ("online", "offline", "unknown")
    assert prov["assets_version"] == mp_env.install_info()["assets_version"]
    assert isinstance(prov["bot_models_present"], bool)


# Worker processes ----------------------------------------------------------------------------------


def test_close_leaves_no_worker_processes():
    e = make_env("meltingpot", PD, num_envs=3, seed=0, envs_per_worker=2)
    pids = e.worker_pids()
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    e.reset()
    e.close()
    e.close()  # idempotent
    assert not any(_alive(p) for p in pids)


@pytest.mark.slow  # a fresh interpreter and a spawned worker each import TensorFlow (~15 s)
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal
        from envs import make_env
        if __name__ == "__main__":
            env = make_env("meltingpot", {PD!r}, num_envs=1, seed=0, start_method="spawn")
            print(*env.worker_pids(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    path = tmp_path / "orphan.py"
    path.write_text(script)
    proc = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    pids = [int(p) for p in proc.stdout.split()]
    assert pids, proc.stderr[-2000:]
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def test_auto_envs_per_worker_uses_at_most_one_worker_per_core(monkeypatch):
    from envs import meltingpot as mp_env

    monkeypatch.setattr(mp_env.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [mp_env.auto_envs_per_worker(b) for b in (1, 2, 3, 8)] == [1, 1, 2, 4]
    monkeypatch.setattr(mp_env.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert mp_env.auto_envs_per_worker(8) == 1
    assert mp_env.MeltingPotOptions().envs_per_worker == 0  # auto by default
