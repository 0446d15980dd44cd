"""PPO's pieces (marl/policy/ppo.py) against hand-computed values: GAE with termination,
truncation and tail bootstrap, value normalisation, the clipped surrogate and value losses, masked
means, KL and entropy with unavailable actions."""

import math

import pytest
import torch

from marl.policy.networks import masked_logits
from marl.policy.ppo import (
    ValueNorm,
    categorical_entropy,
    gae,
    kl_categorical,
    masked_mean,
    normalize_advantages,
    surrogate_loss,
    value_loss,
)


def test_gae_hand_computed_with_termination_truncation_and_tail_bootstrap():
    gamma, lam = 0.9, 0.8
    # One copy, 4 steps: t=1 terminates its episode, t=2 is a one-step episode cut by the time
    # limit (bootstrap from final_values[2]), t=3 is cut by the end of the rollout (last_values).
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    values = torch.tensor([0.5, 1.0, 1.5, 2.0])
    final_values = torch.tensor([9.0, 9.0, 5.0, 9.0])  # only the truncated step's entry may be read
    terminated = torch.tensor([False, True, False, False])
    truncated = torch.tensor([False, False, True, False])
    last_values = torch.tensor(3.0)
    adv, ret = gae(rewards, values, last_values, terminated, truncated, final_values, gamma, lam)

    a3 = 4.0 + 0.9 * 3.0 - 2.0  # tail: bootstrap from last_values
    a2 = 3.0 + 0.9 * 5.0 - 1.5  # truncated: bootstrap from the final observation, nothing carried over
    a1 = 2.0 - 1.0  # terminated: no bootstrap
    a0 = (1.0 + 0.9 * 1.0 - 0.5) + 0.9 * 0.8 * a1
    assert adv.tolist() == pytest.approx([a0, a1, a2, a3])
    assert ret.tolist() == pytest.approx([a0 + 0.5, a1 + 1.0, a2 + 1.5, a3 + 2.0])


def test_gae_broadcasts_per_copy_flags_over_agents():
    gamma, lam = 0.9, 0.8
    torch.manual_seed(0)
    T, B, N = 5, 3, 2
    rewards, values, final_values = torch.randn(T, B, N), torch.randn(T, B, N), torch.randn(T, B, N)
    last_values = torch.randn(B, N)
    terminated = torch.rand(T, B) < 0.3
    truncated = (torch.rand(T, B) < 0.3) & ~terminated
    adv, ret = gae(
        rewards, values, last_values, terminated.unsqueeze(-1), truncated.unsqueeze(-1), final_values, gamma, lam
    )
    for b in range(B):
        for n in range(N):
            a, r = gae(
                rewards[:, b, n],
                values[:, b, n],
                last_values[b, n],
                terminated[:, b],
                truncated[:, b],
                final_values[:, b, n],
                gamma,
                lam,
            )
            assert torch.allclose(adv[:, b, n], a) and torch.allclose(ret[:, b, n], r)


def _random_rollout(T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards, values, final_values = (torch.randn(T, generator=g) for _ in range(3))
    last_values = torch.randn((), generator=g)
    terminated = torch.zeros(T, dtype=torch.bool)
    truncated = torch.zeros(T, dtype=torch.bool)
    terminated[[2, 6]] = True
    truncated[[3]] = True
    return rewards, values, last_values, terminated, truncated, final_values


def _episode_end(t, terminated, truncated):
    """(index of the step that ends t's episode within the rollout, or the last step; its bootstrap kind)."""
    for e in range(t, len(terminated)):
        if terminated[e]:
            return e, "terminated"
        if truncated[e]:
            return e, "truncated"
    return len(terminated) - 1, "tail"


def test_gae_lambda_one_is_discounted_return_minus_value():
    gamma = 0.9
    rewards, values, last_values, terminated, truncated, final_values = _random_rollout()
    adv, ret = gae(rewards, values, last_values, terminated, truncated, final_values, gamma, 1.0)
    for t in range(len(rewards)):
        e, kind = _episode_end(t, terminated, truncated)
        g = sum(gamma ** (k - t) * rewards[k].item() for k in range(t, e + 1))
        boot = {"terminated": 0.0, "truncated": final_values[e].item(), "tail": last_values.item()}[kind]
        g += gamma ** (e - t + 1) * boot
        assert adv[t].item() == pytest.approx(g - values[t].item(), abs=1e-5)
        assert ret[t].item() == pytest.approx(g, abs=1e-5)


def test_gae_lambda_zero_is_the_one_step_td_error():
    gamma = 0.9
    rewards, values, last_values, terminated, truncated, final_values = _random_rollout()
    adv, _ = gae(rewards, values, last_values, terminated, truncated, final_values, gamma, 0.0)
    T = len(rewards)
    for t in range(T):
        if terminated[t]:
            nxt = 0.0
        elif truncated[t]:
            nxt = final_values[t].item()
        else:
            nxt = values[t + 1].item() if t + 1 < T else last_values.item()
        assert adv[t].item() == pytest.approx(rewards[t].item() + gamma * nxt - values[t].item(), abs=1e-6)


# Value normalisation ----------------------------------------------------------------------------


def test_value_norm_is_the_debiased_ema_of_batch_moments():
    vn = ValueNorm(beta=0.5)
    vn.update(torch.tensor([1.0, 3.0]))  # batch mean 2, mean of squares 5
    mean, var = vn.mean_var()
    assert mean.item() == pytest.approx(2.0) and var.item() == pytest.approx(1.0)
    vn.update(torch.tensor([4.0]))  # batch mean 4, mean of squares 16
    # EMA weights of the two batches: 0.25 and 0.5, debiased by their sum 0.75.
    m = (0.25 * 2.0 + 0.5 * 4.0) / 0.75
    m2 = (0.25 * 5.0 + 0.5 * 16.0) / 0.75
    mean, var = vn.mean_var()
    assert mean.item() == pytest.approx(m) and var.item() == pytest.approx(m2 - m * m)
    x = torch.tensor([-3.0, 0.0, 2.5, 10.0])
    assert torch.allclose(vn.normalize(x), (x - m) / math.sqrt(m2 - m * m))
    assert torch.allclose(vn.denormalize(vn.normalize(x)), x, atol=1e-5)
    assert torch.allclose(vn.normalize(vn.denormalize(x)), x, atol=1e-5)


def test_value_norm_variance_floor_and_initial_state():
    vn = ValueNorm(beta=0.5, var_floor=1e-2)
    mean, var = vn.mean_var()  # nothing seen yet: identity up to the variance floor
    assert mean.item() == 0.0 and var.item() == pytest.approx(1e-2)
    vn.update(torch.full((4,), 5.0))  # constant targets: zero variance -> the floor
    mean, var = vn.mean_var()
    assert mean.item() == pytest.approx(5.0) and var.item() == pytest.approx(1e-2)
    assert vn.normalize(torch.tensor([5.1])).item() == pytest.approx(1.0, rel=1e-4)


# PPO losses ---------------------------------------------------------------------------------------


def test_surrogate_clips_both_sides_and_counts_clipped_ratios():
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.7])
    adv = torch.tensor([1.0, 1.0, -2.0, -1.0])
    old_logp = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    logp = (old_logp + ratios.log()).requires_grad_()
    loss, clip_frac = surrogate_loss(logp, old_logp, adv, torch.ones(4, dtype=torch.bool), 0.2)
    # min(r A, clip(r) A): 1.2 (clipped above, A > 0), 0.5 (unclipped, pessimistic), -2.2, -0.8 (clipped below, A < 0)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 2.2 - 0.8) / 4)
    assert clip_frac.item() == pytest.approx(3 / 4)  # |r - 1| > 0.2 for entries 0, 1, 3
    loss.backward()
    # Clipped terms pass no gradient; unclipped ones d(-r A / 4)/dlogp = -r A / 4 (minimising raises
    # the log-prob of an action with positive advantage).
    assert logp.grad.tolist() == pytest.approx([0.0, -0.5 / 4, 2.2 / 4, 0.0])

    mask = torch.tensor([False, True, True, True])
    loss, clip_frac = surrogate_loss(logp.detach(), old_logp, adv, mask, 0.2)
    assert loss.item() == pytest.approx(-(0.5 - 2.2 - 0.8) / 3)
    assert clip_frac.item() == pytest.approx(2 / 3)


def test_value_loss_huber_squared_and_clipping():
    targets = torch.zeros(3)
    old = torch.tensor([0.0, 1.0, 0.0])
    values = torch.tensor([0.5, 0.1, 3.0])
    mask = torch.ones(3, dtype=torch.bool)
    # Errors unclipped: 0.5, -0.1, 3.0; clipped values (old +- 0.2): 0.2, 0.8, 0.2.
    huber_unclipped = [0.5 * 0.25, 0.5 * 0.01, 1.0 * (3.0 - 0.5)]  # delta 1
    huber_clipped = [0.5 * 0.04, 0.5 * 0.64, 0.5 * 0.04]
    sq_unclipped = [0.5 * 0.25, 0.5 * 0.01, 0.5 * 9.0]
    sq_clipped = huber_clipped

    def mean(x):
        return sum(x) / len(x)

    got = value_loss(values, old, targets, mask, 0.2, use_clipped=False, use_huber=True, delta=1.0)
    assert got.item() == pytest.approx(mean(huber_unclipped))
    got = value_loss(values, old, targets, mask, 0.2, use_clipped=True, use_huber=True, delta=1.0)
    assert got.item() == pytest.approx(mean([max(a, b) for a, b in zip(huber_unclipped, huber_clipped)]))
    got = value_loss(values, old, targets, mask, 0.2, use_clipped=False, use_huber=False)
    assert got.item() == pytest.approx(mean(sq_unclipped))
    got = value_loss(values, old, targets, mask, 0.2, use_clipped=True, use_huber=False)
    assert got.item() == pytest.approx(mean([max(a, b) for a, b in zip(sq_unclipped, sq_clipped)]))
    got = value_loss(values, old, targets, torch.tensor([True, True, False]), 0.2, True, True, 1.0)
    assert got.item() == pytest.approx((0.125 + 0.32) / 2)


def test_masked_mean_and_advantage_normalisation_use_only_masked_entries():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert masked_mean(x, torch.tensor([True, False, True, False])).item() == pytest.approx(2.0)
    assert masked_mean(x, torch.zeros(4, dtype=torch.bool)).item() == 0.0  # nothing to average
    adv = torch.tensor([1.0, 3.0, 100.0])
    out = normalize_advantages(adv, torch.tensor([True, True, False]), eps=1e-5)
    # masked mean 2, masked (population) std 1
    assert out.tolist() == pytest.approx([-1.0 / (1 + 1e-5), 1.0 / (1 + 1e-5), 98.0 / (1 + 1e-5)])


def test_kl_and_entropy_against_hand_computation_with_unavailable_actions():
    avail = torch.tensor([[True, True, False]])
    p_logits = masked_logits(torch.tensor([[0.0, math.log(2.0), 7.0]]), avail)  # p = (1/3, 2/3, 0)
    q_logits = masked_logits(torch.tensor([[math.log(3.0), 0.0, -4.0]]), avail)  # q = (3/4, 1/4, 0)
    expected = (1 / 3) * math.log((1 / 3) / (3 / 4)) + (2 / 3) * math.log((2 / 3) / (1 / 4))
    assert kl_categorical(p_logits, q_logits).item() == pytest.approx(expected, abs=1e-6)
    assert kl_categorical(p_logits, p_logits).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_categorical(q_logits, p_logits).item() == pytest.approx(
        0.75 * math.log(0.75 * 3) + 0.25 * math.log(0.25 * 1.5), abs=1e-6
    )
    assert torch.isfinite(kl_categorical(p_logits, q_logits)).all()

    assert categorical_entropy(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    uniform_of_two = masked_logits(torch.zeros(1, 4), torch.tensor([[True, False, True, False]]))
    assert categorical_entropy(uniform_of_two).item() == pytest.approx(math.log(2))
    assert categorical_entropy(p_logits).item() == pytest.approx(-(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3))
