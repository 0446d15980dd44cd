"""BiDist: the Bernoulli mask and its slot shares, the burn-in mask, both distillation phases at the
DEFAULT settings on fixed data (forward towards the history mixture, reverse a bounded push, also
from phi = theta and just after a forward round), the sampled start's gradient, the phase schedule
and ablations, checkpoints, and a short training run."""

from __future__ import annotations

import io
import math

import pytest
import torch

from algorithms.bidist import (
    DISTILLED,
    Config,
    Learner,
    bernoulli_slots,
    burn_in_mask,
    forward_target,
    reverse_objective,
    sample_actions,
    sampled_score_objective,
)
from envs.base import EnvSpec
from marl.config import ConfigError, build_config
from marl.policy.runner import LEARNER, Episodes, Rollout
from marl.policy.ppo import kl_categorical, masked_mean

pytestmark = pytest.mark.usefixtures("one_thread")

T, B, N, A, D = 20, 3, 2, 4, 6


def vector_spec() -> EnvSpec:
    return EnvSpec(
        family="test",
        scenario="vec",
        num_envs=B,
        n_agents=N,
        n_actions=A,
        obs_shape=(D,),
        state_shape=(5,),
        episode_limit=50,
    )


def make_learner(sharp: bool = False, **overrides) -> Learner:
    torch.manual_seed(0)
    cfg = build_config(Config, {"rollout_length": T, "data_chunk_length": 10, "ppo_epochs": 1, **overrides})
    learner = Learner(cfg, vector_spec())
    if sharp:  # MAPPO's policy head starts near uniform; make theta's policy clearly non-uniform
        with torch.no_grad():
            learner.actor.head.weight.mul_(300.0)
    return learner


def fixed_rollout(seed: int = 0) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[0] = True
    starts[12, 1] = True
    terminated = torch.zeros(T, B, dtype=torch.bool)
    terminated[11, 1] = True
    return Rollout(
        obs=torch.randn(T, B, N, D, generator=g),
        extra=torch.zeros(T, B, N, 0),
        state=torch.randn(T, B, 5, generator=g),
        avail=torch.ones(T, B, N, A, dtype=torch.bool),
        actions=torch.randint(A, (T, B, N), generator=g),
        logp=torch.full((T, B, N), -math.log(A)),
        values=torch.zeros(T, B, N),
        final_values=torch.zeros(T, B, N),
        last_values=torch.zeros(B, N),
        rewards=torch.randn(T, B, N, generator=g),
        terminated=terminated,
        truncated=torch.zeros(T, B, dtype=torch.bool),
        starts=starts,
        policy=torch.zeros(T, B, N, dtype=torch.long),
        actor_h=torch.zeros(T, B, N, 64),
        critic_h=torch.zeros(T, B, N, 64),
        env_steps=T * B,
    )


def no_episodes() -> Episodes:
    return Episodes.cat([], N)


def kls(learner: Learner, r: Rollout) -> tuple[float, float]:
    inp, starts, mask = learner.sequence_input(r)
    with torch.no_grad():
        th = learner.actor.sequence(inp, learner.actor.initial_hidden(B * N), starts)["logits"]
        ph = learner.phi.sequence(inp, learner.phi.initial_hidden(B * N), starts)["logits"]
    return learner._kls(th, ph, mask)


def test_default_mask_gives_theta_a_share_of_one_minus_p():
    # Default: an independent Bernoulli(p) per slot, no forced theta slot.
    assert Config().min_learner_slots == 0 and Config().fictitious_prob == 0.5
    for p in (0.3, 0.5, 0.8):
        learner = make_learner(fictitious_prob=p)
        keys = learner.assign(20000, N, torch.Generator().manual_seed(3))
        assert set(keys.unique().tolist()) <= {LEARNER, DISTILLED}
        assert abs(float((keys == LEARNER).float().mean()) - (1 - p)) < 0.01
        # Slots are independent: P(both slots phi) = p^2 (those copies train nothing in theta).
        assert abs(float((keys == DISTILLED).all(-1).float().mean()) - p**2) < 0.01


def test_bernoulli_mask_statistics_and_min_learner_slots():
    g = torch.Generator().manual_seed(1)
    keys = bernoulli_slots(20000, 4, 0.3, 0, g)
    assert set(keys.unique().tolist()) <= {LEARNER, DISTILLED}
    assert abs(float((keys == DISTILLED).float().mean()) - 0.3) < 0.01
    # Slots are independent: P(all four slots phi) = 0.3^4.
    assert abs(float((keys == DISTILLED).all(-1).float().mean()) - 0.3**4) < 0.003

    keys = bernoulli_slots(20000, 2, 0.8, 1, torch.Generator().manual_seed(2))
    assert bool(((keys == LEARNER).sum(-1) >= 1).all())
    # A copy drawn all-phi (prob 0.64) gets one random slot back: P(slot phi) = 0.16 + 0.64 * 0.5 = 0.48.
    assert abs(float((keys == DISTILLED).float().mean()) - 0.48) < 0.015
    # The slot given back is uniform over the two seats.
    back = keys[(keys == DISTILLED).sum(-1) == 1]
    assert abs(float((back[:, 0] == LEARNER).float().mean()) - 0.5) < 0.02

    assert bool((bernoulli_slots(100, 3, 0.0, 1, g) == LEARNER).all())


def test_burn_in_mask_by_hand():
    starts = torch.tensor([[False, False], [False, True], [False, False], [False, False]])
    expected = torch.tensor([[False, False], [False, True], [True, True], [True, True]])
    assert torch.equal(burn_in_mask(starts, 2), expected)
    assert bool(burn_in_mask(starts, 0).all())


def test_reverse_objective_is_clipped_kl_and_stops_pushing_beyond_the_bound():
    theta = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    phi = torch.tensor([[0.5, 0.0, 0.0], [8.0, 0.0, 0.0]], requires_grad=True)
    p = torch.softmax(phi.detach(), -1)
    kl = (p * (p.log() - math.log(1 / 3))).sum(-1)  # KL(phi || uniform theta), by hand
    value = reverse_objective(phi, theta, bound=0.5)
    assert value[0].item() == pytest.approx(kl[0].item(), rel=1e-5)
    assert kl[1] > 0.5 and value[1].item() == pytest.approx(0.5)
    value.sum().backward()
    assert phi.grad[0].abs().sum() > 0
    assert torch.equal(phi.grad[1], torch.zeros(3))  # beyond the bound: no push


PUSH = Config().reverse_kl_push  # 0.25 nats: what a default reverse round adds to KL(phi || theta)
MOVE = 0.15  # nats: the least each default round must move its KL on this data (60% of the push)


def perturb_theta(learner: Learner, scale: float = 0.25, seed: int = 5) -> None:
    """Move theta away from phi as a learner's own updates would: noise on the policy head (MAPPO's
    starts near zero, gain 0.01; it reads the GRU output through LayerNorm, unit scale per unit, so
    0.25 moves the logits by about 2 over 64 units) and 10% relative noise on every other weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in learner.actor.named_parameters():
            size = scale if name.startswith("head.") else 0.1 * float(p.abs().mean())
            p.add_(size * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("sharp", [False, True], ids=["theta_at_init", "theta_sharp"])
def test_default_reverse_round_from_phi_equal_to_theta_pushes_kl_up_to_the_bound(sharp):
    learner = make_learner(sharp=sharp)
    learner.phi.load_state_dict(learner.actor.state_dict())  # phi = theta exactly: every gradient is zero
    r = fixed_rollout()
    assert kls(learner, r)[1] == pytest.approx(0.0, abs=1e-7)
    stats = learner.distill(r, "reverse", torch.Generator().manual_seed(0))
    _, after = kls(learner, r)
    assert MOVE < after <= PUSH + 1e-6  # pushed out, and no further than the bound
    assert stats["push_reached"] == 1.0 and stats["sampled_steps"] >= 1  # the sampled start broke the symmetry
    assert stats["steps"] <= Config().reverse_steps
    assert stats["kl_phi_theta_after"] == pytest.approx(after, rel=1e-4)


def test_at_phi_equal_to_theta_the_exact_gradient_vanishes_and_the_sampled_start_does_not():
    # Why the push needs a start: on the actor itself, grad KL(phi || theta) at phi = theta is rounding
    # noise (1e-9), below Adam's eps (1e-5); the sampled start's gradient is a usable direction.
    learner = make_learner()
    r = fixed_rollout()
    inp, starts, mask = learner.sequence_input(r)
    with torch.no_grad():
        th = learner.actor.sequence(inp, learner.actor.initial_hidden(B * N), starts)["logits"]
    params = list(learner.phi.parameters())
    norm = lambda gs: float(torch.sqrt(sum((g**2).sum() for g in gs)))  # noqa: E731
    exact = torch.autograd.grad(masked_mean(kl_categorical(learner._phi_logits(inp, starts), th), mask), params)
    phi_logits = learner._phi_logits(inp, starts)
    a = sample_actions(phi_logits, torch.Generator().manual_seed(0))
    sampled = torch.autograd.grad(masked_mean(sampled_score_objective(phi_logits, th, a), mask), params)
    assert norm(exact) < 1e-6 and norm(sampled) > 1e-2


def test_default_forward_round_lowers_kl_to_the_history_mixture_and_reverse_then_raises_it():
    learner = make_learner()
    r, g = fixed_rollout(), torch.Generator().manual_seed(0)
    perturb_theta(learner)  # theta has moved since phi last saw it
    fwd_before, _ = kls(learner, r)
    assert fwd_before > 0.3
    inp, starts, mask = learner.sequence_input(r)
    with torch.no_grad():
        th = learner.actor.sequence(inp, learner.actor.initial_hidden(B * N), starts)["logits"]
        target = forward_target(th, learner._phi_logits(inp, starts), Config().forward_history_weight)
    stats = learner.distill(r, "forward", g)
    fwd_after, rev_start = kls(learner, r)
    assert fwd_before - fwd_after > MOVE
    assert stats["steps"] == Config().forward_steps
    # phi now is (close to) the mixture 0.5 phi_before + 0.5 theta: it keeps part of its own past.
    with torch.no_grad():
        to_target = float(masked_mean(kl_categorical(target, learner._phi_logits(inp, starts)), mask))
        theta_to_target = float(masked_mean(kl_categorical(th, target), mask))
    assert to_target < 0.2 * theta_to_target  # measured 0.018 vs 0.186
    assert fwd_after == pytest.approx(theta_to_target, rel=0.3)
    # Just after a forward round (where the old reverse round moved KL by 1e-6), a default reverse
    # round adds the whole push.
    learner.distill(r, "reverse", g)
    _, rev_after = kls(learner, r)
    assert rev_after - rev_start > MOVE and rev_after <= rev_start + PUSH + 1e-6


def test_forward_target_by_hand_and_the_history_weight_sets_how_much_phi_keeps():
    theta = torch.tensor([[0.0, math.log(3.0)]])  # probabilities 1/4, 3/4
    phi = torch.tensor([[math.log(3.0), 0.0]])  # 3/4, 1/4
    assert torch.allclose(forward_target(theta, phi, 0.0).exp(), torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(forward_target(theta, phi, 0.5).exp(), torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(forward_target(theta, phi, 0.8).exp(), torch.tensor([[0.65, 0.35]]))
    # After a reverse push, a forward round with w = 0 returns phi to theta; larger w keep more of the push.
    r = fixed_rollout()
    after = {}
    for w in (0.0, 0.5, 0.8):
        learner = make_learner(forward_history_weight=w)
        learner.distill(r, "reverse", torch.Generator().manual_seed(0))
        learner.distill(r, "forward")
        after[w] = kls(learner, r)[0]
    assert after[0.0] < 0.02 and after[0.0] < after[0.5] < after[0.8]  # measured 0.006, 0.031, 0.197


def test_reverse_round_is_bounded_even_at_a_large_rate():
    learner = make_learner(sharp=True, reverse_lr=0.3)  # one Adam step overshoots by far: cut back to the push
    r = fixed_rollout()
    _, start = kls(learner, r)
    stats = learner.distill(r, "reverse", torch.Generator().manual_seed(0))
    _, after = kls(learner, r)
    assert stats["push_reached"] == 1.0
    assert start + 0.8 * PUSH < after <= start + PUSH + 1e-6


def test_sampled_score_objective_is_unbiased_for_the_kl_gradient():
    # Exact expectation over a ~ pi_phi of the surrogate's gradient = autograd of KL(phi || theta).
    phi = torch.tensor([[0.3, -0.2, 0.5, 0.0]], requires_grad=True)
    theta = torch.tensor([[0.0, 0.4, -0.1, 0.2]])
    probs = torch.softmax(phi.detach(), -1)[0]
    expected = torch.zeros(4)
    for a in range(4):
        (grad,) = torch.autograd.grad(sampled_score_objective(phi, theta, torch.tensor([a])).sum(), phi)
        expected += probs[a] * grad[0]
    (exact,) = torch.autograd.grad(kl_categorical(phi, theta).sum(), phi)
    assert torch.allclose(expected, exact[0], atol=1e-6)
    # At phi = theta the exact gradient is zero, one sample's is not.
    same = theta.clone().requires_grad_(True)
    (g0,) = torch.autograd.grad(kl_categorical(same, theta).sum(), same)
    (g1,) = torch.autograd.grad(sampled_score_objective(same, theta, torch.tensor([1])).sum(), same)
    assert g0.abs().max() < 1e-6 and g1.abs().max() > 0.1


def test_distillation_never_changes_theta_and_ppo_never_changes_phi():
    learner = make_learner()
    r = fixed_rollout()
    theta = {k: v.clone() for k, v in learner.actor.state_dict().items()}
    learner.distill(r, "forward")
    learner.distill(r, "reverse")
    assert all(torch.equal(theta[k], v) for k, v in learner.actor.state_dict().items())
    phi = {k: v.clone() for k, v in learner.phi.state_dict().items()}
    learner.cfg.distill_interval = 1000  # no distillation inside this update
    learner.train_step(r, no_episodes(), torch.Generator().manual_seed(0))
    assert all(torch.equal(phi[k], v) for k, v in learner.phi.state_dict().items())
    assert any(not torch.equal(theta[k], v) for k, v in learner.actor.state_dict().items())


def test_phase_schedule_interval_and_ablations():
    learner = make_learner(distill_interval=2, phase_length=2)
    r, g = fixed_rollout(), torch.Generator().manual_seed(0)
    phases = []
    for _ in range(10):
        stats = learner.train_step(r, no_episodes(), g)
        phases.append(None if "distill_phase_reverse" not in stats else int(stats["distill_phase_reverse"]))
    # A round after updates 2, 4, 6, 8, 10; phases forward, forward, reverse, reverse, forward.
    assert phases == [None, 0, None, 0, None, 1, None, 1, None, 0]


@pytest.mark.parametrize(
    "schedule, expected", [("alternate", [0, 1, 0, 1]), ("forward", [0, 0, 0, 0]), ("reverse", [1, 1, 1, 1])]
)
def test_schedule_ablations_run_only_their_phase_at_the_default_interval(schedule, expected):
    learner = make_learner(schedule=schedule)
    r, g = fixed_rollout(), torch.Generator().manual_seed(0)
    rounds = []
    for _ in range(4 * Config().distill_interval):
        stats = learner.train_step(r, no_episodes(), g)
        if "distill_phase_reverse" in stats:
            rounds.append(stats)
    assert [int(s["distill_phase_reverse"]) for s in rounds] == expected
    for s in rounds:  # every reverse round pushed, every forward round moved phi towards theta
        if s["distill_phase_reverse"]:
            assert s["reverse_kl_phi_theta_after"] > s["reverse_kl_phi_theta_before"] + MOVE
        else:
            assert s["forward_kl_theta_phi_after"] < s["forward_kl_theta_phi_before"]


def test_mask_ablation_and_forced_learner_slots():
    no_mask = make_learner(use_mask=False)
    assert bool((no_mask.assign(50, N, torch.Generator().manual_seed(0)) == LEARNER).all())
    masked = make_learner(fictitious_prob=1.0, min_learner_slots=1)
    keys = masked.assign(50, N, torch.Generator().manual_seed(0))
    assert bool(((keys == LEARNER).sum(-1) == 1).all())
    assert masked.module(DISTILLED) is masked.phi and masked.module(LEARNER) is masked.actor


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"schedule": "both"}, "must be one of alternate, forward, reverse"),
        ({"forward_history_weight": 1.0}, "forward_history_weight must be in"),
        ({"reverse_kl_push": 0.0}, "reverse_kl_push must be positive"),
        ({"reverse_steps": 0}, "reverse_steps must be at least 1"),
    ],
)
def test_bad_distillation_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(Config, overrides)


def test_checkpoint_round_trip_restores_phi_and_phase():
    a = make_learner()
    r, g = fixed_rollout(), torch.Generator().manual_seed(0)
    for _ in range(5):
        a.train_step(r, no_episodes(), g)
    b = make_learner()
    buf = io.BytesIO()  # through bytes, as a checkpoint file (in-memory state dicts share tensors)
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=False))
    assert b.distill_rounds == a.distill_rounds == 1
    assert all(torch.equal(a.phi.state_dict()[k], v) for k, v in b.phi.state_dict().items())
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(5):
        a.train_step(r, no_episodes(), ga)
        b.train_step(r, no_episodes(), gb)
    assert all(torch.equal(a.phi.state_dict()[k], v) for k, v in b.phi.state_dict().items())


def test_short_run_on_smax_plays_phi_and_distills():
    from marl.policy.trainer import PolicyTrainer
    from marl.trainer import Budget

    trainer = PolicyTrainer(
        "bidist",
        "smax",
        "3m",
        0,
        Budget(env_steps=480, eval_interval=10_000, eval_episodes=2),
        overrides={"num_envs": 4, "rollout_length": 20, "ppo_epochs": 1, "distill_interval": 2},
    )
    rows = trainer.run()
    last = rows[-1]
    assert 0.2 < last["fictitious_fraction"] < 0.6  # p = 0.5, minus the forced learner slots
    assert last["fictitious_fraction"] + last["learner_fraction"] == pytest.approx(1.0)
    assert "forward_kl_theta_phi_after" in last and "reverse_kl_phi_theta_after" in last
    assert math.isfinite(last["policy_loss"])
