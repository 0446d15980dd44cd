"""BiDist: the Bernoulli mask, the burn-in mask, both distillation directions on fixed data, the
reverse bound, the phase schedule and ablations, checkpoints, and a short training run."""

from __future__ import annotations

import io
import math

import pytest
import torch

from algorithms.bidist import DISTILLED, Config, Learner, bernoulli_slots, burn_in_mask, reverse_objective
from envs.base import EnvSpec
from marl.config import ConfigError, build_config
from marl.policy_runner import LEARNER, Episodes, Rollout

pytestmark = pytest.mark.usefixtures("one_thread")

T, B, N, A, D = 20, 3, 2, 4, 6


def vector_spec() -> EnvSpec:
    return EnvSpec(family="test", scenario="vec", num_envs=B, n_agents=N, n_actions=A, obs_shape=(D,),
                   state_shape=(5,), episode_limit=50)


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
        obs=torch.randn(T, B, N, D, generator=g), extra=torch.zeros(T, B, N, 0), state=torch.randn(T, B, 5, generator=g),
        avail=torch.ones(T, B, N, A, dtype=torch.bool), actions=torch.randint(A, (T, B, N), generator=g),
        logp=torch.full((T, B, N), -math.log(A)), values=torch.zeros(T, B, N), final_values=torch.zeros(T, B, N),
        last_values=torch.zeros(B, N), rewards=torch.randn(T, B, N, generator=g), terminated=terminated,
        truncated=torch.zeros(T, B, dtype=torch.bool), starts=starts,
        policy=torch.zeros(T, B, N, dtype=torch.long), actor_h=torch.zeros(T, B, N, 64),
        critic_h=torch.zeros(T, B, N, 64), env_steps=T * B)


def no_episodes() -> Episodes:
    return Episodes.cat([], N)


def kls(learner: Learner, r: Rollout) -> tuple[float, float]:
    inp, starts, mask = learner.sequence_input(r)
    with torch.no_grad():
        th = learner.actor.sequence(inp, learner.actor.initial_hidden(B * N), starts)["logits"]
        ph = learner.phi.sequence(inp, learner.phi.initial_hidden(B * N), starts)["logits"]
    return learner._kls(th, ph, mask)


def test_bernoulli_mask_statistics_and_min_learner_slots():
    g = torch.Generator().manual_seed(1)
    keys = bernoulli_slots(20000, 4, 0.3, 0, g)
    assert set(keys.unique().tolist()) <= {LEARNER, DISTILLED}
    assert abs(float((keys == DISTILLED).float().mean()) - 0.3) < 0.01
    # Slots are independent: P(all four slots phi) = 0.3^4.
    assert abs(float((keys == DISTILLED).all(-1).float().mean()) - 0.3 ** 4) < 0.003

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


def test_forward_distillation_lowers_kl_and_reverse_raises_it_on_fixed_data():
    learner = make_learner(sharp=True, init_from_learner=False, forward_steps=20, forward_lr=1e-2)
    r = fixed_rollout()
    fwd_before, _ = kls(learner, r)
    stats = learner.distill(r, "forward")
    fwd_after, _ = kls(learner, r)
    assert fwd_after < 0.5 * fwd_before
    assert stats["kl_theta_phi_after"] == pytest.approx(fwd_after, rel=1e-4)

    learner = make_learner(reverse_steps=20, reverse_lr=1e-2, reverse_kl_bound=10.0)
    _, rev_before = kls(learner, r)  # phi = copy of theta: KL = 0
    assert rev_before == pytest.approx(0.0, abs=1e-6)
    learner.distill(r, "reverse")
    _, rev_after = kls(learner, r)
    assert rev_after > 0.01


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
    assert make_learner(reverse=False).phase() == "forward"
    only_reverse = make_learner(forward=False)
    only_reverse.distill_rounds = 4
    assert only_reverse.phase() == "reverse"
    with pytest.raises(ConfigError, match="at least one of"):
        make_learner(forward=False, reverse=False)
    no_mask = make_learner(use_mask=False)
    assert bool((no_mask.assign(50, N, torch.Generator().manual_seed(0)) == LEARNER).all())
    masked = make_learner(fictitious_prob=1.0, min_learner_slots=1)
    keys = masked.assign(50, N, torch.Generator().manual_seed(0))
    assert bool(((keys == LEARNER).sum(-1) == 1).all())
    assert masked.module(DISTILLED) is masked.phi and masked.module(LEARNER) is masked.actor


def test_checkpoint_round_trip_restores_phi_optimisers_and_phase():
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
    from marl.policy_train import PolicyTrainer
    from marl.train import Budget

    trainer = PolicyTrainer("bidist", "smax", "3m", 0, Budget(env_steps=480, eval_interval=10_000, eval_episodes=2),
                            overrides={"num_envs": 4, "rollout_length": 20, "ppo_epochs": 1, "distill_interval": 2})
    rows = trainer.run()
    last = rows[-1]
    assert 0.2 < last["fictitious_fraction"] < 0.6  # p = 0.5, minus the forced learner slots
    assert last["fictitious_fraction"] + last["learner_fraction"] == pytest.approx(1.0)
    assert "forward_kl_theta_phi_after" in last and "reverse_kl_phi_theta_after" in last
    assert math.isfinite(last["policy_loss"])
