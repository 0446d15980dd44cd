"""Cross-play evaluation: a focal policy against a held-out population of co-players.

Melting Pot's protocol (methods.md): the policy under test fills the *focal* slots, a background
population the others; the metric is the focal per-capita return (mean episode return over focal
slots). Where DeepMind's bot scenarios are installed they are the background; where they are not
(as on the development machines), the suite's own held-out population is: policies trained in
separate runs (other seeds, other algorithms) that the focal learner never met in training.

Per episode, ``n_focal`` slots chosen uniformly at random hold the focal policy and every other slot
an independently, uniformly drawn population member, so every member meets the focal policy in
every seat over many episodes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

import envs
from marl.policy_runner import LEARNER, play_episodes
from marl.population import LoadedPolicy, load_policy

POPULATION_KIND_SUITE = "suite-trained held-out population (other seeds / algorithms, never seen in training)"


class PopulationPlayers:
    """Key 0 = the focal actor; keys 1..M = population members."""

    def __init__(self, focal: nn.Module, members: Sequence[nn.Module], n_focal: int):
        if not members:
            raise ValueError("a cross-play population needs at least one member")
        self.focal, self.members, self.n_focal = focal, list(members), n_focal

    def assign(self, n_envs: int, n_agents: int, generator: torch.Generator) -> torch.Tensor:
        if not 1 <= self.n_focal < n_agents:
            raise ValueError(f"n_focal must be in [1, {n_agents - 1}] for {n_agents} players, got {self.n_focal}")
        keys = 1 + torch.randint(len(self.members), (n_envs, n_agents), generator=generator)
        order = torch.rand(n_envs, n_agents, generator=generator).argsort(-1)
        focal = order[:, : self.n_focal]
        keys.scatter_(1, focal, LEARNER)
        return keys

    def module(self, key: int) -> nn.Module:
        return self.focal if key == LEARNER else self.members[key - 1]


def default_n_focal(n_agents: int) -> int:
    """Half the slots (rounded down, at least one): 1 of 2 in the 2-player games, 3 of 7 in clean_up."""
    return max(1, n_agents // 2)


def focal_return_summary(focal_per_capita: torch.Tensor) -> dict[str, Any]:
    """Mean, std, standard error and the per-episode values of the focal per-capita return [k]."""
    n = int(focal_per_capita.shape[0])
    std = float(focal_per_capita.std(unbiased=True)) if n > 1 else 0.0
    return {
        "focal_per_capita_return": float(focal_per_capita.mean()),
        "focal_per_capita_return_std": std,
        "focal_per_capita_return_sem": std / math.sqrt(n) if n > 1 else 0.0,
        "episodes": n,
        "episode_focal_returns": [round(float(x), 4) for x in focal_per_capita],
    }


def _describe(p: LoadedPolicy) -> dict[str, Any]:
    return {"path": p.path, "algorithm": p.algorithm, **{k: p.info[k] for k in ("seed", "env_steps", "run_id")
                                                          if k in p.info}}


def evaluate_crossplay(focal_path: str | Path, member_paths: Sequence[str | Path], family: str, scenario: str,
                       env_options: Mapping[str, Any] | None = None, episodes: int = 16, seed: int = 0,
                       num_envs: int = 4, n_focal: int | None = None, greedy: bool = False,
                       device: str = "cpu") -> dict[str, Any]:
    """Play ``episodes`` episodes (at least; a multiple of the copies) of the focal policy against
    the population; returns the focal per-capita return and what it was measured against."""
    num_envs = max(1, min(num_envs, episodes))
    env = envs.make_env(family, scenario, num_envs=num_envs, seed=seed, device=device, **dict(env_options or {}))
    try:
        focal = load_policy(focal_path, device, expect=env.spec)
        members = [load_policy(p, device, expect=env.spec) for p in member_paths]
        n_focal = default_n_focal(env.spec.n_agents) if n_focal is None else n_focal
        players = PopulationPlayers(focal.actor, [m.actor for m in members], n_focal)
        eps = play_episodes(env, players, math.ceil(episodes / num_envs), seed, greedy, device)
    finally:
        env.close()
    background = (eps.returns * (eps.policy != LEARNER)).sum(-1) / (eps.policy != LEARNER).sum(-1)
    return {
        **focal_return_summary(eps.per_capita(LEARNER)),
        "background_per_capita_return": float(background.mean()),
        "n_focal": n_focal,
        "n_agents": env.spec.n_agents,
        "actions": "greedy" if greedy else "sampled",
        "population_kind": POPULATION_KIND_SUITE,
        "focal": _describe(focal),
        "population": [_describe(m) for m in members],
    }
