"""The one-step cooperative matrix game (WQMIX paper's payoff)."""

from __future__ import annotations

import pytest
import torch

from envs import EnvError, UnknownChoiceError, list_scenarios, make_env, unavailable_reason
from envs.matrix_game import WQMIX_PAYOFF

ALL_JOINT = torch.tensor([[a, b] for a in range(3) for b in range(3)])


def test_scenario_and_spec():
    assert list_scenarios("matrix_game") == ["wqmix_payoff"]
    assert unavailable_reason("matrix_game", "wqmix_payoff") is None
    env = make_env("matrix_game", "wqmix_payoff", num_envs=4)
    s = env.spec
    assert (s.n_agents, s.n_actions, s.obs_shape, s.state_shape, s.episode_limit) == (2, 3, (5,), (5,), 1)
    assert s.shared_reward and not s.has_won
    assert s.options["payoff"] == [[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 0.0]]
    out = env.reset(seed=3)
    assert out.obs.shape == (4, 2, 5) and out.obs.dtype == torch.float32 and bool((out.obs == 1).all())
    assert out.state.shape == (4, 5) and bool((out.state == 1).all())
    assert (
        out.avail_actions.shape == (4, 2, 3) and out.avail_actions.dtype == torch.bool and bool(out.avail_actions.all())
    )
    assert out.reward.shape == (4, 2) and not out.reward.any()
    assert not (out.terminated.any() or out.truncated.any() or out.won.any())


def test_rewards_follow_the_payoff_and_every_step_ends_the_episode():
    env = make_env("matrix_game", "wqmix_payoff", num_envs=9)
    env.reset()
    for _ in range(2):  # the second step runs on auto-reset episodes
        out = env.step(ALL_JOINT)
        expected = torch.tensor([WQMIX_PAYOFF[a][b] for a, b in ALL_JOINT.tolist()])
        assert torch.equal(out.reward, expected.unsqueeze(1).expand(9, 2))
        assert out.terminated.all() and not out.truncated.any() and not out.won.any()
        # Auto-reset: next obs and final obs are both the constant observation.
        assert bool((out.obs == 1).all()) and bool((out.final_obs == 1).all())
        assert bool((out.final_state == 1).all()) and bool(out.final_avail_actions.all())
    assert out.reward[0, 0] == 8.0 and out.reward.max() == 8.0  # (A, A) is the unique optimum


def test_custom_payoff_and_obs_dim():
    env = make_env("matrix_game", "wqmix_payoff", num_envs=2, payoff=[[1, 2], [3, 4]], obs_dim=2)
    assert env.spec.n_actions == 2 and env.spec.obs_shape == (2,)
    env.reset()
    out = env.step(torch.tensor([[1, 0], [0, 1]]))
    assert out.reward[:, 0].tolist() == [3.0, 2.0]


def test_errors_name_the_problem():
    with pytest.raises(UnknownChoiceError, match="wqmix_payoff"):
        make_env("matrix_game", "nope")
    with pytest.raises(EnvError, match="payoff.*obs_dim"):
        make_env("matrix_game", "wqmix_payoff", colour=1)
    with pytest.raises(EnvError, match="square"):
        make_env("matrix_game", "wqmix_payoff", payoff=[[1, 2, 3], [4, 5, 6]])
    env = make_env("matrix_game", "wqmix_payoff", num_envs=1)
    with pytest.raises(EnvError, match="reset"):
        env.step(torch.tensor([[0, 0]]))
    env.reset()
    with pytest.raises(EnvError, match=r"\[0, 3\)"):
        env.step(torch.tensor([[0, 3]]))
    with pytest.raises(EnvError, match="shape"):
        env.step(torch.tensor([0, 0]))
