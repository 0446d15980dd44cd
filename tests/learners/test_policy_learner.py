"""The PPO update (marl/policy/learner.py): one update lowers the surrogate loss, and entries of
other players do not affect it."""

import copy

import pytest
import torch

import envs
from marl.policy.config import PolicyLearnerConfig
from marl.policy.learner import PolicyLearner, chunked, rows
from marl.policy.ppo import normalize_advantages, surrogate_loss
from marl.policy.runner import RolloutCollector
from tests.learners.test_policy_runner import OTHER, _sharpened

# The PPO update ----------------------------------------------------------------------------------


def _smax_rollout(cfg: PolicyLearnerConfig, T: int, seed: int = 0):
    env = envs.make_env("smax", "3m", num_envs=cfg.num_envs, seed=seed)
    torch.manual_seed(seed)
    learner = _sharpened(PolicyLearner(cfg, env.spec))
    collector = RolloutCollector(env, learner, learner.actor, learner.critic, torch.Generator().manual_seed(seed))
    collector.start(seed=seed)
    r, episodes = collector.collect(T)
    env.close()
    return learner, r, episodes


def _surrogate(learner: PolicyLearner, r, adv) -> torch.Tensor:
    L = learner.cfg.data_chunk_length
    inp, h0, starts = learner.chunk_input(r, torch.arange((r.rewards.shape[0] // L) * r.rewards.shape[1]))
    with torch.no_grad():
        logits = learner.actor.sequence(inp, h0, starts)["logits"]
    logp = torch.log_softmax(logits, -1).gather(-1, rows(chunked(r.actions, L)).unsqueeze(-1)).squeeze(-1)
    mask = rows(chunked(r.learner_mask, L))
    loss, _ = surrogate_loss(logp, rows(chunked(r.logp, L)), rows(chunked(adv, L)), mask, 1e9)
    return loss


def test_one_ppo_update_lowers_the_surrogate_loss():
    cfg = PolicyLearnerConfig(
        num_envs=4,
        rollout_length=20,
        data_chunk_length=10,
        hidden_dim=16,
        ppo_epochs=1,
        clip_param=1e9,
        entropy_coef=0.0,
        lr=5e-3,
    )
    learner, r, episodes = _smax_rollout(cfg, 20)
    adv, _ = copy.deepcopy(learner).advantages(r)  # before train_step updates the value normalisation
    adv = normalize_advantages(adv, r.learner_mask)
    before = _surrogate(learner, r, adv)
    assert before.item() == pytest.approx(0.0, abs=1e-4)  # ratio 1, normalised advantages average 0
    stats = learner.train_step(r, episodes, torch.Generator().manual_seed(0))
    after = _surrogate(learner, r, adv)
    assert after.item() < before.item() - 5e-3  # observed: 0 -> -0.0128
    assert stats["policy_loss"] == pytest.approx(before.item(), abs=1e-4)  # one epoch, one minibatch
    assert learner.updates == 1 and stats["learner_fraction"] == 1.0


def _params(learner: PolicyLearner) -> dict[str, torch.Tensor]:
    return {
        **{f"actor.{k}": v for k, v in learner.actor.state_dict().items()},
        **{f"critic.{k}": v for k, v in learner.critic.state_dict().items()},
        **{f"vn.{k}": v for k, v in learner.value_norm.state_dict().items()},
    }


def test_entries_of_other_players_do_not_affect_the_update():
    cfg = PolicyLearnerConfig(
        num_envs=4, rollout_length=20, data_chunk_length=10, hidden_dim=16, ppo_epochs=2, num_mini_batch=2
    )
    learner, r, episodes = _smax_rollout(cfg, 20)
    r.policy[:, 1] = OTHER  # copy 1 was played by someone else
    changed = copy.deepcopy(r)
    changed.rewards[:, 1] += 5.0
    changed.logp[:, 1] -= 1.0
    changed.values[:, 1] += 3.0

    def update(rollout):
        lrn = copy.deepcopy(learner)
        stats = lrn.train_step(rollout, episodes, torch.Generator().manual_seed(0))
        return _params(lrn), stats

    a, stats_a = update(r)
    b, stats_b = update(changed)
    assert stats_a["learner_fraction"] == pytest.approx(0.75)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert stats_a == stats_b
    # Control: the same change in a learner's copy does change the update.
    control = copy.deepcopy(r)
    control.rewards[:, 0] += 5.0
    c, _ = update(control)
    assert any(not torch.equal(a[k], c[k]) for k in a)
