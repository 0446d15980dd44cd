"""Every policy learner goes through the one code path (rollout with its players -> PPO update and
its own work -> policy artifact) on a Melting Pot substrate and on SMAX."""

from __future__ import annotations

import math

import pytest
import torch

import envs
from marl.policy.runner import LEARNER, RolloutCollector
from marl.policy.population import load_policy, save_policy
from marl.registry import get_algorithm

pytestmark = pytest.mark.usefixtures("one_thread")

POLICY_LEARNERS = ("mappo", "selfplay", "rpm", "opre", "randnet", "bidist")
# Small enough for a test; intervals of 1 so every population mechanism acts within two updates.
OVERRIDES = {
    "mappo": {},
    "opre": {},
    "randnet": {"mc_samples": 2},
    "selfplay": {"snapshot_interval": 1},
    "rpm": {"save_interval": 1, "rpm_anneal_fraction": 0.0},
    "bidist": {"distill_interval": 1},
}
COMMON = {"num_envs": 2, "rollout_length": 20, "ppo_epochs": 1}


def test_every_policy_learner_is_registered_as_kind_policy():
    for name in POLICY_LEARNERS:
        assert get_algorithm(name).kind == "policy"


def _exercise(env: envs.BatchedEnv, name: str, tmp_path) -> None:
    algo = get_algorithm(name)
    cfg = algo.make_config({**COMMON, **OVERRIDES[name]})
    torch.manual_seed(0)
    learner = algo.make_learner(cfg, env.spec)
    generator = torch.Generator().manual_seed(0)
    collector = RolloutCollector(env, learner, learner.actor, learner.critic, generator)
    collector.start(seed=1)
    before = [p.detach().clone() for p in learner.actor.parameters()]
    for _ in range(3):
        learner.before_rollout(generator)
        rollout, episodes = collector.collect(cfg.rollout_length)
        assert rollout.env_steps == cfg.rollout_length * env.spec.num_envs
        assert bool((rollout.policy == LEARNER).any())
        stats = learner.train_step(rollout, episodes, generator)
        assert all(math.isfinite(v) for v in stats.values()), stats
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.actor.parameters()))
    path = tmp_path / f"{name}.pt"
    save_policy(path, name, cfg, env.spec, learner.eval_module())
    loaded = load_policy(path, expect=env.spec)
    assert loaded.algorithm == name


@pytest.mark.slow
def test_every_policy_learner_trains_on_a_meltingpot_substrate(tmp_path):
    pytest.importorskip("meltingpot")
    env = envs.make_env("meltingpot", "stag_hunt_in_the_matrix__repeated", num_envs=2, seed=0, max_episode_frames=30)
    try:
        for name in POLICY_LEARNERS:
            _exercise(env, name, tmp_path)
    finally:
        env.close()


def test_every_policy_learner_trains_on_smax(tmp_path):
    env = envs.make_env("smax", "3m", num_envs=2, seed=0)
    try:
        for name in POLICY_LEARNERS:
            _exercise(env, name, tmp_path)
    finally:
        env.close()
