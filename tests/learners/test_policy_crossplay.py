"""Cross-play evaluation (marl/policy/crossplay.py): population players assign focal slots and
members uniformly; a cross-play evaluation on SMAX."""

from pathlib import Path

import pytest
import torch
from torch import nn

import envs
from marl.policy.config import PolicyLearnerConfig
from marl.policy.crossplay import PopulationPlayers, evaluate_crossplay
from marl.policy.networks import RecurrentActor
from marl.policy.population import save_policy
from marl.policy.runner import LEARNER

# Cross-play -----------------------------------------------------------------------------------------


def test_population_players_assign_focal_slots_and_members_uniformly():
    members = [nn.Linear(1, 1) for _ in range(3)]
    players = PopulationPlayers(nn.Linear(1, 1), members, n_focal=2)
    keys = players.assign(6000, 4, torch.Generator().manual_seed(0))
    assert keys.shape == (6000, 4)
    assert ((keys == LEARNER).sum(-1) == 2).all()  # exactly n_focal per copy
    focal_rate = (keys == LEARNER).float().mean(0)  # every seat is focal half the time
    assert torch.allclose(focal_rate, torch.full((4,), 0.5), atol=0.03)
    background = keys[keys != LEARNER]
    freq = torch.bincount(background, minlength=4)[1:].float() / background.numel()
    assert torch.allclose(freq, torch.full((3,), 1 / 3), atol=0.02)
    assert players.module(LEARNER) is players.focal and players.module(2) is members[1]
    with pytest.raises(ValueError, match="n_focal"):
        PopulationPlayers(nn.Linear(1, 1), members, n_focal=4).assign(2, 4, torch.Generator())
    with pytest.raises(ValueError, match="at least one member"):
        PopulationPlayers(nn.Linear(1, 1), [], n_focal=1)


def test_evaluate_crossplay_on_smax(tmp_path: Path):
    env = envs.make_env("smax", "3m", num_envs=1, seed=0)
    spec = env.spec
    env.close()
    cfg = PolicyLearnerConfig(hidden_dim=8)
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        path = tmp_path / f"p{seed}.pt"
        save_policy(path, "mappo", cfg, spec, RecurrentActor(spec, cfg), {"seed": seed, "env_steps": 0})
        paths.append(path)
    result = evaluate_crossplay(paths[0], paths[1:], "smax", "3m", episodes=8, seed=0, num_envs=4)
    assert result["episodes"] == 8 and len(result["episode_focal_returns"]) == 8
    assert result["n_focal"] == 1 and result["n_agents"] == 3 and result["actions"] == "sampled"
    assert result["focal"]["path"] == str(paths[0]) and result["focal"]["seed"] == 0
    assert [m["seed"] for m in result["population"]] == [1, 2]
    assert all(m["algorithm"] == "mappo" for m in result["population"])
    mean = sum(result["episode_focal_returns"]) / 8
    assert result["focal_per_capita_return"] == pytest.approx(mean, abs=1e-3)
    # SMAX's reward is shared: focal and background slots get the same return in every episode.
    assert result["background_per_capita_return"] == pytest.approx(result["focal_per_capita_return"], abs=1e-5)
    assert result["focal_per_capita_return_std"] >= 0.0
    again = evaluate_crossplay(paths[0], paths[1:], "smax", "3m", episodes=8, seed=0, num_envs=4)
    assert again == result  # same seed: same episodes
