"""SMAX adapter (envs/smax.py): shapes, masks, auto-reset, episode ends, seeding, errors.

Each (map, options, batch size) compiles once per process (5-15 s), so the tests share two
module-scoped environments:
* ``env_easy``: 3m with enemies that do not shoot and max_steps=30, so that episodes end by wins and
  by the time limit within a few dozen steps; 8 copies;
* ``env3s``: 3s_vs_5z with SMAX's defaults (the zealots kill the stalkers: losses, dead agents);
  4 copies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario
from jaxmarl.wrappers.baselines import SMAXLogWrapper

import envs
from envs import smax
from envs.base import EnvError, UnknownChoiceError

STOP = 4  # SMAX's no-op: movement actions 0-3 (up, right, down, left), 4 = stop, 5+ = attack enemy j
EASY = {"enemy_shoots": False, "max_steps": 30}


@pytest.fixture(scope="module")
def env_easy():
    return envs.make_env("smax", "3m", num_envs=8, seed=0, **EASY)


@pytest.fixture(scope="module")
def env3s():
    return envs.make_env("smax", "3s_vs_5z", num_envs=4, seed=0)


def random_actions(avail: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    flat = avail.reshape(-1, avail.shape[-1]).float()
    return torch.multinomial(flat, 1, generator=gen).view(avail.shape[:2])


def greedy_actions(avail: torch.Tensor) -> torch.Tensor:
    """Attack the first enemy in range, else move right (towards the enemy), else stop."""
    attack = avail[..., STOP + 1 :]
    right = torch.ones(avail.shape[:2], dtype=torch.long)
    act = torch.where(attack.any(-1), attack.float().argmax(-1) + STOP + 1, right)
    return torch.where(avail.gather(2, act.unsqueeze(-1)).squeeze(-1), act, torch.full_like(act, STOP))


def stop_actions(env) -> torch.Tensor:
    return torch.full((env.spec.num_envs, env.spec.n_agents), STOP)


# Spaces ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture, n_agents, obs_dim, state_dim, n_actions",
    [("env_easy", 3, 75, 72, 8), ("env3s", 3, 101, 96, 10)],  # obs 13(n_allies-1)+13 n_enemies+10
)
def test_spec_shapes_and_dtypes(request, fixture, n_agents, obs_dim, state_dim, n_actions):
    env = request.getfixturevalue(fixture)
    b = env.spec.num_envs
    s = env.spec
    assert (s.n_agents, s.obs_shape, s.state_shape, s.n_actions) == (n_agents, (obs_dim,), (state_dim,), n_actions)
    assert s.shared_reward and s.has_won and s.family == "smax"
    for out in (env.reset(seed=1), env.step(random_actions(env.reset(seed=1).avail_actions))):
        expected = {
            "obs": ((b, n_agents, obs_dim), torch.float32),
            "final_obs": ((b, n_agents, obs_dim), torch.float32),
            "state": ((b, state_dim), torch.float32),
            "final_state": ((b, state_dim), torch.float32),
            "avail_actions": ((b, n_agents, n_actions), torch.bool),
            "final_avail_actions": ((b, n_agents, n_actions), torch.bool),
            "reward": ((b, n_agents), torch.float32),
            "terminated": ((b,), torch.bool),
            "truncated": ((b,), torch.bool),
            "won": ((b,), torch.bool),
        }
        for name, (shape, dtype) in expected.items():
            t = getattr(out, name)
            assert (tuple(t.shape), t.dtype, t.device.type) == (shape, dtype, "cpu"), name
    # 3s_vs_5z is stalkers vs zealots: the unit-type bits of the own features say stalker (type 2).
    if fixture == "env3s":
        own = env.reset(seed=1).obs[:, :, -6:]
        assert torch.all(own.argmax(-1) == 2)


def test_reset_output_is_a_fresh_episode(env_easy):
    out = env_easy.reset(seed=4)
    assert not out.terminated.any() and not out.truncated.any() and not out.won.any()
    assert torch.all(out.reward == 0)
    assert torch.equal(out.final_obs, out.obs) and torch.equal(out.final_state, out.state)
    # Every unit alive at the start: own health feature (first own feature) is 1.
    assert torch.allclose(out.obs[:, :, -10], torch.ones(8, 3))


def test_compiled_functions_are_shared_and_never_retrace(env_easy, env3s):
    twin = envs.make_env("smax", "3m", num_envs=8, seed=123, **EASY)
    assert twin._c is env_easy._c  # module-level cache per (scenario, options, num_envs)
    out = twin.reset()
    for _ in range(5):
        out = twin.step(random_actions(out.avail_actions))
    # reset's state has the same types as step's: one compiled step, not two (HeuristicEnemySMAX
    # alone retraces on its second call).
    assert twin._c.step._cache_size() == 1 and twin._c.reset._cache_size() == 1
    assert set(smax._COMPILED) >= {("3m", smax.SMAXOptions(**EASY), 8), ("3s_vs_5z", smax.SMAXOptions(), 4)}


# Available actions ---------------------------------------------------------------------------------


def test_avail_actions_follow_smax_rules(env3s):
    """Stop always; moves iff alive; attack enemy j iff both alive and j within attack range.
    Checked against positions read from the env state, and against jaxmarl's get_avail_actions."""
    env = env3s
    b_size = env.spec.num_envs
    je = env._c.env
    n_allies = je.num_allies
    gen = torch.Generator().manual_seed(0)
    out = env.reset(seed=7)
    seen = {"dead": 0, "in_range": 0, "out_of_range": 0}
    for _ in range(40):
        st = env._state.state
        pos, alive = np.asarray(st.unit_positions), np.asarray(st.unit_alive)
        rng = np.asarray(je.unit_type_attack_ranges)[np.asarray(st.unit_types)]
        avail = out.avail_actions.numpy()
        theirs = np.stack([np.asarray(v) for v in jax.vmap(je.get_avail_actions)(env._state).values()], 1)
        np.testing.assert_array_equal(avail, theirs.astype(bool))
        for b in range(b_size):
            for i in range(n_allies):
                assert avail[b, i, STOP]
                assert np.all(avail[b, i, :STOP] == alive[b, i])
                if not alive[b, i]:
                    assert avail[b, i].sum() == 1  # a dead agent can only stop
                    seen["dead"] += 1
                for j in range(je.num_enemies):
                    in_range = np.linalg.norm(pos[b, n_allies + j] - pos[b, i]) < rng[b, i]
                    expected = alive[b, i] and alive[b, n_allies + j] and in_range
                    assert avail[b, i, STOP + 1 + j] == expected
                    if alive[b, i] and alive[b, n_allies + j]:
                        seen["in_range" if in_range else "out_of_range"] += 1
        out = env.step(random_actions(out.avail_actions, gen))
    assert all(v > 0 for v in seen.values()), seen  # every branch of the rule was exercised


# Episode ends and auto-reset ---------------------------------------------------------------------------


def test_time_limit_truncates_and_resets(env_easy):
    """Nobody shoots and the allies stand still: every episode is cut by the time limit. SMAX checks
    step >= max_steps before counting the step, so that happens on step max_steps + 1."""
    limit = env_easy.spec.episode_limit
    assert limit == EASY["max_steps"] + 1
    out = env_easy.reset(seed=2)
    for t in range(1, limit + 1):
        prev = out
        out = env_easy.step(stop_actions(env_easy))
        if t < limit:
            assert not out.done.any()
            assert torch.equal(out.final_obs, out.obs) and torch.equal(out.final_state, out.state)
            assert torch.equal(out.final_avail_actions, out.avail_actions)
    assert out.truncated.all() and not out.terminated.any() and not out.won.any()
    # final_* is the end of the old episode (units where they stood), obs the start of a new one.
    assert not torch.equal(out.final_obs, out.obs)
    assert torch.allclose(out.final_obs[:, :, -9:-7], prev.obs[:, :, -9:-7], atol=0.05)  # own position
    assert np.all(np.asarray(env_easy._state.state.step) == 0)
    assert torch.allclose(out.obs[:, :, -10], torch.ones(8, 3))  # fresh units at full health


def test_wins_are_terminal_and_match_smax_log_wrapper_rule(env_easy):
    """Focus fire against enemies that do not shoot wins. won = all enemies dead with an ally
    alive; SMAXLogWrapper counts a win when the final-step reward is >= 1."""
    out = env_easy.reset(seed=3)
    wins = 0
    for _ in range(45):
        out = env_easy.step(greedy_actions(out.avail_actions))
        assert not (out.terminated & out.truncated).any()
        assert torch.equal(out.won, out.done & (out.reward[:, 0] >= 1.0))
        assert torch.all(out.won <= out.terminated)
        assert torch.all(out.reward == out.reward[:, :1])  # shared reward
        for b in out.won.nonzero().flatten().tolist():
            wins += 1
            # In the last observation every enemy is dead (its features are zero) ...
            enemy_feats = out.final_obs[b, :, 13 * 2 : 13 * 5]
            assert torch.all(enemy_feats == 0)
            # ... and no attack action is available any more.
            assert not out.final_avail_actions[b, :, STOP + 1 :].any()
    assert wins >= 8


def test_losses_are_terminated_not_won(env3s):
    """Stalkers that stand still are cut down by the zealots: terminated, not won."""
    out = env3s.reset(seed=5)
    losses = 0
    for _ in range(60):
        out = env3s.step(stop_actions(env3s))
        for b in out.done.nonzero().flatten().tolist():
            assert out.terminated[b] and not out.truncated[b] and not out.won[b]
            assert out.reward[b, 0] < 1.0
            own_health = out.final_obs[b, :, -10]
            assert torch.all(own_health == 0)  # every ally dead in the last observation
            assert out.final_avail_actions[b].sum() == 3  # only stop, for each dead agent
            losses += 1
    assert losses >= 4


def test_matches_jaxmarl_step_and_smax_log_wrapper(env_easy):
    """Driven with the same keys, our step equals jaxmarl's own auto-resetting step (obs, reward,
    done), final_obs equals jaxmarl's step_env output (which jaxmarl's step discards), and won equals
    SMAXLogWrapper's returned_won_episode at episode ends."""
    wrapper = SMAXLogWrapper(HeuristicEnemySMAX(scenario=map_name_to_scenario("3m"), **EASY))
    inner = wrapper._env
    scale = np.asarray(smax._state_scale(inner._env))
    split = jax.vmap(jax.random.split)

    def stack(d):
        return np.stack([np.asarray(d[a]) for a in inner.agents], 1)

    @jax.jit
    def w_reset(keys):
        obs, state = jax.vmap(wrapper.reset)(keys)
        # Strong types, so that w_step compiles once (see the weak-type note in envs/smax.py).
        return obs, jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), state)

    @jax.jit  # one compiled function for both, to keep the test quick
    def w_step(step_keys, state, act):
        env_obs = jax.vmap(inner.step_env)(split(step_keys)[:, 0], state.env_state, act)[0]
        return env_obs, jax.vmap(wrapper.step)(step_keys, state, act)

    # The adapter's keys: split(key(seed), B); reset uses split(key)[1] and keeps split(key)[0];
    # each step uses split(key)[1] as jaxmarl's step key and keeps split(key)[0].
    keys = jax.random.split(jax.random.key(11), 8)
    # reset: key -> (key, reset_key); jaxmarl's reset is called with reset_key.
    obs, wstate = w_reset(split(keys)[:, 1])
    out = env_easy.reset(seed=11)
    np.testing.assert_array_equal(out.obs.numpy(), stack(obs))
    keys = split(keys)[:, 0]

    gen = torch.Generator().manual_seed(1)
    ends = wins = 0
    for _ in range(70):
        actions = random_actions(out.avail_actions, gen)
        step_keys = split(keys)[:, 1]
        act = {a: jnp.asarray(actions[:, i].numpy()) for i, a in enumerate(inner.agents)}
        env_obs, (obs, wstate, reward, done, info) = w_step(step_keys, wstate, act)
        out = env_easy.step(actions)
        keys = split(keys)[:, 0]

        np.testing.assert_array_equal(out.obs.numpy(), stack(obs))
        # the state is jaxmarl's world_state rescaled to SMAC-like ranges (normalize_state)
        np.testing.assert_allclose(out.state.numpy(), np.clip(np.asarray(obs["world_state"]) * scale, -1, 1), rtol=1e-6)
        np.testing.assert_array_equal(out.final_obs.numpy(), stack(env_obs))
        np.testing.assert_array_equal(out.reward.numpy(), stack(reward))
        np.testing.assert_array_equal(out.done.numpy(), np.asarray(done["__all__"]))
        ended = np.asarray(done["__all__"])
        won_wrapper = np.asarray(info["returned_won_episode"])[:, 0] > 0
        np.testing.assert_array_equal(out.won.numpy()[ended], won_wrapper[ended])
        ends += ended.sum()
        wins += out.won.sum().item()
    assert ends >= 8 and wins >= 2


# Seeding ---------------------------------------------------------------------------------------------------


def _trajectory(env, seed: int, steps: int = 25) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = env.reset(seed=seed)
    traj = [out.obs.clone()]
    for _ in range(steps):
        out = env.step(random_actions(out.avail_actions, gen))
        traj += [out.obs.clone(), out.reward.clone(), out.done.clone(), out.final_obs.clone()]
    return traj


def test_same_seed_same_episodes(env_easy):
    a = _trajectory(env_easy, seed=42)
    b = _trajectory(env_easy, seed=42)  # reset(seed) restarts the random stream
    twin = envs.make_env("smax", "3m", num_envs=8, seed=42, **EASY)
    c = _trajectory(twin, seed=42)
    assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a, b, c))
    d = _trajectory(env_easy, seed=43)
    assert not torch.equal(a[0], d[0])
    # The copies of one batch differ from each other (each has its own key).
    assert not torch.equal(a[0][0], a[0][1])


def test_make_seed_is_the_default_reset_seed():
    x = envs.make_env("smax", "3m", num_envs=8, seed=9, **EASY)
    y = envs.make_env("smax", "3m", num_envs=8, seed=0, **EASY)
    assert torch.equal(x.reset().obs, y.reset(seed=9).obs)
    # A reset without a seed continues the random stream: a new start, not a repeat.
    first, second = x.reset(seed=9).obs, x.reset().obs
    assert not torch.equal(first, second)


# Scan rollout -------------------------------------------------------------------------------------------------


def test_rollout_equals_stepping_with_the_same_actions(env_easy):
    env_easy.reset(seed=21)
    res = env_easy.rollout(40)
    assert res.actions.shape == (40, 8, 3) and res.reward.shape == (40, 8, 3)
    assert res.won.dtype == torch.bool and res.terminated.shape == (40, 8)
    # The policy picked only available actions, and episodes did end inside the scan.
    assert (res.terminated | res.truncated).sum() >= 4
    out = env_easy.reset(seed=21)
    for t in range(40):
        act = res.actions[t].long()
        assert out.avail_actions.gather(2, act.unsqueeze(-1)).all()
        out = env_easy.step(act)
        assert torch.equal(out.reward, res.reward[t])
        assert torch.equal(out.terminated, res.terminated[t]) and torch.equal(out.truncated, res.truncated[t])
        assert torch.equal(out.won, res.won[t])
    assert torch.equal(out.obs, res.last.obs) and torch.equal(out.final_obs, res.last.final_obs)
    # After a rollout, step() continues from where the scan stopped.
    after_replay = env_easy.step(stop_actions(env_easy))
    env_easy.reset(seed=21)
    env_easy.rollout(40)
    after_rollout = env_easy.step(stop_actions(env_easy))
    assert torch.equal(after_rollout.obs, after_replay.obs) and torch.equal(after_rollout.reward, after_replay.reward)


# Errors -------------------------------------------------------------------------------------------------------


def test_scenarios_are_smax_registry():
    assert envs.list_scenarios("smax") == list(smax.MAP_NAME_TO_SCENARIO)
    assert {"3m", "3s_vs_5z", "6h_vs_8z", "smacv2_5_units"} <= set(envs.list_scenarios("smax"))
    assert envs.unavailable_reason("smax", "3s_vs_5z") is None


def test_unknown_scenario_lists_maps():
    with pytest.raises(UnknownChoiceError, match="valid choices: .*3s_vs_5z") as e:
        envs.make_env("smax", "MMM2")
    assert "MMM2" in str(e.value)


@pytest.mark.parametrize(
    "options, error, match",
    [
        (
            {"difficulty": 7},
            EnvError,
            r"unknown option\(s\) \['difficulty'\].*valid options: attack_mode \(closest\|random\).*max_steps \(int\)",
        ),
        ({"max_steps": "10"}, EnvError, "'max_steps' must be int, got '10'"),
        ({"max_steps": 0}, EnvError, "'max_steps' must be >= 1"),
        ({"attack_mode": "weakest"}, EnvError, "'attack_mode' must be one of closest, random, got 'weakest'"),
        ({"observation_type": "pixels"}, EnvError, "'observation_type' must be one of unit_list, conic, got 'pixels'"),
    ],
)
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        envs.make_env("smax", "3m", **options)


def test_bad_actions(env_easy):
    fresh = envs.make_env("smax", "3m", num_envs=8, seed=0, **EASY)
    with pytest.raises(EnvError, match="reset"):
        fresh.step(stop_actions(fresh))
    out = env_easy.reset(seed=0)
    with pytest.raises(EnvError, match=r"shape \(8, 3\)"):
        env_easy.step(torch.zeros(8, 2, dtype=torch.long))
    with pytest.raises(EnvError, match=r"\[0, 8\)"):
        env_easy.step(torch.full((8, 3), 8))
    with pytest.raises(EnvError, match=r"\[0, 8\)"):
        env_easy.step(torch.full((8, 3), -1))
    assert not out.avail_actions[0, 0, STOP + 1]  # the armies start out of range
    bad = stop_actions(env_easy)
    bad[0, 0] = STOP + 1
    with pytest.raises(EnvError, match="action 5 is not available to agent 0 of env 0"):
        env_easy.step(bad)


def test_provenance(env3s):
    p = env3s.provenance()
    assert p["backend"] == "SMAX (jaxmarl) - an embedded stand-in for SMAC, not StarCraft II"
    assert p["jaxmarl"] == "0.2.0" and p["jax"] == jax.__version__ and p["scenario"] == "3s_vs_5z"
    assert p["options"]["attack_mode"] == "closest" and p["options"]["max_steps"] == 100
    assert env3s.spec.episode_limit == 101  # SMAX's default max_steps=100, plus its extra step


def test_state_is_normalised_to_smac_like_ranges(env3s):
    """Positions, cooldowns and type indices are rescaled (QMIX's hypernetworks need it); the
    per-unit health fractions and one-hots are unchanged."""
    gen = torch.Generator().manual_seed(3)
    out = env3s.reset(seed=3)
    raw_positions_seen = False
    for _ in range(15):
        out = env3s.step(random_actions(out.avail_actions, gen))
        assert out.state.min() >= -1.0 and out.state.max() <= 1.0
        n_units = 8  # 3 stalkers + 5 zealots
        per_unit = out.state[:, : n_units * 10].reshape(-1, n_units, 10)
        alive = per_unit[..., 0] > 0
        raw_positions_seen |= bool((per_unit[..., 1:3][alive] > 0.05).any())
    assert raw_positions_seen  # positions are fractions of the 32x32 map, not all ~0
    scale = smax._state_scale(smax._compiled("3s_vs_5z", smax.SMAXOptions(), env3s.spec.num_envs).env._env)
    assert float(scale[1]) == pytest.approx(1 / 32) and float(scale[0]) == 1.0


def test_importing_the_adapter_keeps_redirected_streams():
    """jaxmarl's import resets stdout/stderr to the process's originals; the adapter undoes that, so
    pytest's capture or a caller's redirection survives the first SMAX use."""
    import subprocess
    import sys

    code = (
        "import io, sys; buf = io.StringIO(); sys.stderr = buf; out = sys.stdout\n"
        "import envs.smax\n"
        "assert sys.stderr is buf and sys.stdout is out, (sys.stderr, sys.stdout)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
