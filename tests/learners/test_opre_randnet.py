"""OPRE and RandNet: their loss terms and mixtures against hand-computed values, the test-time actors
(OPRE ignores the state, RandNet's Monte Carlo average), the per-iteration random layer (a convolution
on images, a linear map on vectors), artifact round trips, and short training runs (OPRE on SMAX 3m,
RandNet on a Melting Pot substrate and on SMAX 3m)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import baselines.opre as opre
import baselines.randnet as randnet
from envs.base import EnvSpec
from marl.config import ConfigError, build_config
from marl.policy.learner import chunked, rows
from marl.policy.networks import ActInput, RecurrentActor, preprocess_image
from marl.policy.runner import LEARNER, Episodes, Rollout
from marl.policy.population import load_policy, save_policy
from marl.policy.ppo import gae, masked_mean, vtrace

pytestmark = pytest.mark.usefixtures("one_thread")

N, A = 2, 4
FIELDS = ("obs", "extra", "agent_ids", "avail", "state")


def vector_spec() -> EnvSpec:
    return EnvSpec(
        family="test",
        scenario="vec",
        num_envs=2,
        n_agents=N,
        n_actions=A,
        obs_shape=(6,),
        state_shape=(5,),
        episode_limit=50,
    )


def image_spec() -> EnvSpec:
    # 40x40 RGB, stored at downsample 8 as 3 x 5 x 5 (Melting Pot's layout).
    return EnvSpec(
        family="test",
        scenario="img",
        num_envs=2,
        n_agents=N,
        n_actions=A,
        obs_shape=(40, 40, 3),
        state_shape=(48, 48, 3),
        episode_limit=50,
        obs_dtype=torch.uint8,
    )


def vector_input(rows: int, seed: int, lead: tuple[int, ...] = ()) -> ActInput:
    g = torch.Generator().manual_seed(seed)
    avail = torch.ones(*lead, rows, A, dtype=torch.bool)
    avail[..., 0, 3] = False  # one unavailable action
    ids = torch.arange(rows) % N
    return ActInput(
        torch.randn(*lead, rows, 6, generator=g),
        torch.zeros(*lead, rows, 0),
        ids.expand(*lead, rows).clone(),
        avail,
        torch.randn(*lead, rows, 5, generator=g),
    )


def image_input(rows: int, seed: int, lead: tuple[int, ...] = (), full: bool = True) -> ActInput:
    """RandNet's actor stores the image at full resolution (3 x 40 x 40, pixel-level randomization);
    ``full=False``: pooled by 8 (3 x 5 x 5), as the other learners and randomize_at "cells" store it."""
    g = torch.Generator().manual_seed(seed)
    size = 40 if full else 5
    obs = torch.randint(0, 256, (*lead, rows, 3, size, size), generator=g, dtype=torch.uint8)
    state = torch.randint(0, 256, (*lead, rows, 3, 6, 6), generator=g, dtype=torch.uint8)
    ids = (torch.arange(rows) % N).expand(*lead, rows).clone()
    return ActInput(obs, torch.zeros(*lead, rows, 0), ids, torch.ones(*lead, rows, A, dtype=torch.bool), state)


def step_input(inp: ActInput, t: int) -> ActInput:
    return ActInput(*(getattr(inp, f)[t] for f in FIELDS))


def opre_learner(**overrides) -> opre.Learner:
    torch.manual_seed(0)
    return opre.Learner(build_config(opre.Config, {"rollout_length": 20, **overrides}), vector_spec())


def randnet_learner(vector: bool = False, **overrides) -> randnet.Learner:
    torch.manual_seed(0)
    return randnet.Learner(
        build_config(randnet.Config, {"rollout_length": 20, **overrides}), vector_spec() if vector else image_spec()
    )


# OPRE (every test at OPRE's default settings unless it names the field it varies) -----------------

K_DEFAULT = opre.Config().n_options


def set_constant_heads(
    learner: opre.Learner,
    option_probs: torch.Tensor,
    q_probs: torch.Tensor,
    p_probs: torch.Tensor,
    option_values: torch.Tensor | None = None,
) -> None:
    """Zero the heads' weights and set their biases: pi_z, q and p are then the same at every input."""
    actor, critic = learner.actor, learner.critic
    with torch.no_grad():
        for layer in (actor.option_head, actor.meta_head, critic.p_head, critic.v):
            layer.weight.zero_()
        actor.option_head.bias.copy_(option_probs.log().reshape(-1))
        actor.meta_head.bias.copy_(q_probs.log())
        critic.p_head.bias.copy_(p_probs.log())
        if option_values is not None:
            critic.v.bias.copy_(option_values)


def hand_options(K: int = K_DEFAULT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Option 0 prefers action 0, every other option is uniform; q puts 0.5 on option 0, p 0.5 on option 1."""
    pi = torch.full((K, A), 1.0 / A)
    pi[0] = torch.tensor([0.7, 0.1, 0.1, 0.1])
    pi[1] = torch.tensor([0.1, 0.1, 0.1, 0.7])
    q = torch.full((K,), 0.5 / (K - 1))
    q[0] = 0.5
    p = torch.full((K,), 0.5 / (K - 1))
    p[1] = 0.5
    return pi, q, p


def opre_rollout(learner: opre.Learner, seed: int = 0, T: int = 20) -> Rollout:
    """A rollout collected as RolloutCollector does, on random vector inputs: the learner's acting
    module acts (sampled), its critic values every step."""
    B = vector_spec().num_envs
    g = torch.Generator().manual_seed(seed)
    obs, state = torch.randn(T, B, N, 6, generator=g), torch.randn(T, B, 5, generator=g)
    avail = torch.ones(T, B, N, A, dtype=torch.bool)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[0] = True
    starts[12, 1] = True
    terminated = torch.zeros(T, B, dtype=torch.bool)
    terminated[11, 1] = True
    module, critic = learner.module(LEARNER), learner.critic
    h, ch = module.initial_hidden(B * N), critic.initial_hidden(B * N).view(B, N, -1)
    keys = ("actions", "logp", "values", "actor_h", "critic_h")
    buf: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    with torch.no_grad():
        for t in range(T):
            keep = (~starts[t]).float()
            h = h * keep.repeat_interleave(N).unsqueeze(-1)
            ch = ch * keep.view(B, 1, 1)
            inp = ActInput(
                obs[t].reshape(B * N, 6),
                torch.zeros(B * N, 0),
                torch.arange(N).repeat(B),
                avail[t].reshape(B * N, A),
                state[t].repeat_interleave(N, 0),
            )
            buf["actor_h"].append(h.view(B, N, -1))
            buf["critic_h"].append(ch)
            logits, h = module.act(inp, h)
            a = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(-1)
            buf["actions"].append(a.view(B, N))
            buf["logp"].append(torch.log_softmax(logits, -1).gather(-1, a.unsqueeze(-1)).squeeze(-1).view(B, N))
            v, ch = critic.step(state[t], ch)
            buf["values"].append(v)
        last_values, _ = critic.step(torch.randn(B, 5, generator=g), ch)
    return Rollout(
        obs=obs,
        extra=torch.zeros(T, B, N, 0),
        state=state,
        avail=avail,
        **{k: torch.stack(v) for k, v in buf.items()},
        final_values=torch.zeros(T, B, N),
        last_values=last_values,
        rewards=torch.randn(T, B, N, generator=g),
        terminated=terminated,
        truncated=torch.zeros(T, B, dtype=torch.bool),
        starts=starts,
        policy=torch.zeros(T, B, N, dtype=torch.long),
        env_steps=T * B,
    )


def test_opre_mixture_is_log_of_weighted_option_probabilities():
    pi = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])
    w = torch.tensor([0.3, 0.7])
    all_avail = torch.ones(3, dtype=torch.bool)
    got = opre.mixture_logits(pi.log() + 2.0, w.log() - 1.0, all_avail)  # shifts: logits, not log-probs
    assert torch.allclose(got, torch.tensor([0.22, 0.215, 0.565]).log(), atol=1e-6)
    # Unavailable action: every option renormalises over the others, the mixture gives it ~0.
    avail = torch.tensor([True, True, False])
    got = opre.mixture_logits(pi.log().masked_fill(~avail, -1e10), w.log(), avail)
    expected = [0.3 * 2 / 3 + 0.7 * 1 / 3, 0.3 * 1 / 3 + 0.7 * 2 / 3]
    assert torch.allclose(got[:2], torch.tensor(expected).log(), atol=1e-6)
    assert got[2] < -1e9 and torch.isfinite(got).all()
    assert torch.allclose(torch.softmax(got, -1), torch.tensor([*expected, 0.0]), atol=1e-6)


def test_opre_acts_in_training_with_q_mixture_by_hand():
    learner = opre_learner()
    assert learner.cfg.n_options == 8 and learner.cfg.off_policy_correction == "vtrace"
    pi, q, p = hand_options()
    set_constant_heads(learner, pi, q, p)
    # The rollout's acting module in training is the evaluated actor itself.
    assert learner.module(LEARNER) is learner.actor and learner.eval_module() is learner.actor
    M = 4
    inp = vector_input(M, 0)  # row 0: action 3 unavailable
    with torch.no_grad():
        logits, _ = learner.module(LEARNER).act(inp, learner.actor.initial_hidden(M))
    # By hand: 0.5 * pi_0 + sum_{z>0} q_z pi_z, pi_{z>1} uniform; row 0 renormalised over 3 actions.
    rest = 0.5 / 7
    full = 0.5 * pi[0] + rest * pi[1] + 6 * rest * torch.full((A,), 0.25)
    assert torch.allclose(full, torch.tensor([0.4642857, 0.1642857, 0.1642857, 0.2071429]), atol=1e-6)
    row0 = 0.5 * torch.tensor([7 / 9, 1 / 9, 1 / 9]) + rest * torch.tensor([1 / 3, 1 / 3, 1 / 3]) + 6 * rest / 3
    probs = torch.softmax(logits, -1)
    assert torch.allclose(probs[1:], full.expand(M - 1, A), atol=1e-6)
    assert torch.allclose(probs[0, :3], row0, atol=1e-6) and probs[0, 3] < 1e-9
    # p (which prefers option 1, i.e. action 3) would give another distribution: acting does not use it.
    p_mix = 0.5 * pi[1] + rest * pi[0] + 6 * rest * torch.full((A,), 0.25)
    assert not torch.allclose(probs[1], p_mix, atol=1e-2)
    # The sequence form (PPO's recomputation) gives the same acting mixture.
    with torch.no_grad():
        out = learner.actor.sequence(
            vector_input(M, 0, (2,)), learner.actor.initial_hidden(M), torch.zeros(2, M, dtype=torch.bool)
        )
    assert torch.allclose(torch.softmax(out["logits"][1, 1:], -1), full.expand(M - 1, A), atol=1e-6)


def test_opre_recorded_behaviour_logp_is_q_mixture_and_the_ratio_is_against_p_mixture():
    learner = opre_learner(ppo_epochs=1)
    with torch.no_grad():  # make p, q and the options clearly non-uniform and different
        learner.critic.p_head.weight.mul_(300.0)
        learner.actor.meta_head.weight.mul_(300.0)
        learner.actor.option_head.weight.mul_(300.0)
    r = opre_rollout(learner)
    L, Tn, B = learner.cfg.data_chunk_length, 20, 2
    idx = torch.arange((Tn // L) * B)
    inp, h0, starts = learner.chunk_input(r, idx)
    with torch.no_grad():
        out = learner.actor.sequence(inp, h0, starts)
        c = learner.critic.sequence_heads(chunked(r.state, L), chunked(r.critic_h, L)[0], chunked(r.starts, L))
    acts = rows(chunked(r.actions, L)).unsqueeze(-1)
    mu = torch.log_softmax(out["logits"], -1).gather(-1, acts).squeeze(-1)
    priv_logits = opre.mixture_logits(out["option_logits"], rows(c["p_logits"]), inp.avail)
    priv = torch.log_softmax(priv_logits, -1).gather(-1, acts).squeeze(-1)
    assert torch.allclose(rows(chunked(r.logp, L)), mu, atol=1e-5)  # behaviour = q's mixture
    assert (priv - mu).abs().max() > 0.1  # ... which p's mixture is not
    assert torch.allclose(rows(chunked(r.values, L)), rows(c["values"]), atol=1e-5)  # rollout values: factorised V
    learner.advantages(r)
    assert torch.allclose(rows(chunked(learner._old_logp, L)), priv, atol=1e-5)
    rho = rows(chunked(learner._rho, L))
    assert torch.allclose(rho, (priv - mu).exp().clamp(max=1.0), atol=1e-5)
    assert rho.min() < 0.9 and rho.max() == pytest.approx(1.0)
    # One epoch, one minibatch: PPO's ratio pi_p_new / pi_p_old is 1 when the loss is taken.
    stats = learner.train_step(r, Episodes.cat([], N), torch.Generator().manual_seed(0))
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-6) and stats["clip_frac"] == 0.0
    assert stats["acting_approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert stats["is_rho_mean"] == pytest.approx(masked_mean(rho, rows(chunked(r.learner_mask, L))).item(), rel=1e-5)


def test_opre_without_correction_is_gae_with_the_ratio_against_mu():
    learner = opre_learner(off_policy_correction="none", use_value_norm=False)
    r = opre_rollout(learner)
    adv, targets = learner.advantages(r)
    want_adv, want_returns = gae(
        r.rewards,
        r.values,
        r.last_values,
        r.terminated.unsqueeze(-1),
        r.truncated.unsqueeze(-1),
        r.final_values,
        0.99,
        0.95,
    )
    assert torch.allclose(adv, want_adv) and torch.allclose(targets, want_returns)
    assert learner._old_logp is r.logp and torch.equal(learner._rho, torch.ones_like(r.logp))
    # With V-trace and no value normalisation the targets are vtrace's with rho = min(1, pi_p / mu).
    vt = opre_learner(use_value_norm=False)
    vt.load_state_dict(learner.state_dict())
    adv, targets = vt.advantages(r)
    rho = (vt._old_logp - r.logp).exp().clamp(max=1.0)
    want_t, want_a = vtrace(
        r.rewards,
        r.values,
        r.last_values,
        r.terminated.unsqueeze(-1),
        r.truncated.unsqueeze(-1),
        r.final_values,
        0.99,
        rho,
        0.95 * rho,
    )
    assert torch.allclose(targets, want_t, atol=1e-5) and torch.allclose(adv, want_a, atol=1e-5)


def test_vtrace_by_hand_with_truncation_termination_and_tail():
    rewards = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    values = torch.tensor([[0.5, 0.5], [1.0, 1.0], [1.5, 1.5]])
    last, final = torch.tensor([2.0, 2.0]), torch.tensor([[0.0, 0.0], [4.0, 4.0], [0.0, 0.0]])
    truncated = torch.tensor([[False, False], [True, False], [False, False]])
    terminated = torch.tensor([[False, False], [False, True], [False, False]])
    rho = torch.tensor([[0.5, 0.5], [1.0, 1.0], [0.8, 0.8]])
    c = torch.tensor([[0.3, 0.3], [0.9, 0.9], [0.6, 0.6]])
    targets, adv = vtrace(rewards, values, last, terminated, truncated, final, 0.9, rho, c)
    # Column 0 (truncated at t=1, bootstrap 4): t=2 delta 3 + 0.9*2 - 1.5 = 3.3, v = 1.5 + 0.8*3.3;
    # t=1 delta 2 + 0.9*4 - 1 = 4.6, v = 5.6; t=0 delta 1 + 0.9*1 - 0.5 = 1.4, v = 0.5 + 0.5*1.4 + 0.9*0.3*4.6.
    assert torch.allclose(targets[:, 0], torch.tensor([2.442, 5.6, 4.14]), atol=1e-5)
    assert torch.allclose(adv[:, 0], torch.tensor([0.5 * (1 + 0.9 * 5.6 - 0.5), 4.6, 0.8 * 3.3]), atol=1e-5)
    # Column 1 (terminated at t=1: nothing bootstrapped): t=1 delta 2 - 1 = 1, v = 2; t=0 v = 0.5 + 0.7 + 0.27.
    assert torch.allclose(targets[:, 1], torch.tensor([0.5 + 0.7 + 0.27 * 1.0, 2.0, 4.14]), atol=1e-5)
    assert torch.allclose(adv[:, 1], torch.tensor([0.5 * (1 + 0.9 * 2.0 - 0.5), 1.0, 2.64]), atol=1e-5)
    # On-policy (rho = 1, c = lambda) the targets are GAE(lambda)'s returns.
    g = torch.Generator().manual_seed(0)
    T, W = 7, 3
    rw, vl = torch.randn(T, W, generator=g), torch.randn(T, W, generator=g)
    lv, fv = torch.randn(W, generator=g), torch.randn(T, W, generator=g)
    te, tr = torch.rand(T, W, generator=g) < 0.2, torch.rand(T, W, generator=g) < 0.2
    tr &= ~te
    ones = torch.ones(T, W)
    targets, _ = vtrace(rw, vl, lv, te, tr, fv, 0.99, ones, 0.95 * ones)
    _, returns = gae(rw, vl, lv, te, tr, fv, 0.99, 0.95)
    assert torch.allclose(targets, returns, atol=1e-5)


def test_opre_factorised_value_by_hand_and_it_grounds_p():
    learner = opre_learner()
    pi, q, _ = hand_options()
    p = torch.tensor([0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    v_z = torch.arange(1.0, 9.0)
    set_constant_heads(learner, pi, q, p, option_values=v_z)
    V = 0.4 * 1 + 0.2 * 2 + 0.1 * 3 + 0.1 * 4 + 0.05 * (5 + 6 + 7 + 8)
    assert V == pytest.approx(2.8)
    B = 3
    critic = learner.critic
    values, _ = critic.step(torch.randn(B, 5), critic.initial_hidden(B * N).view(B, N, -1))
    assert torch.allclose(values, torch.full((B, N), 2.8), atol=1e-5)
    L = 4
    heads = critic.sequence_heads(
        torch.randn(L, B, 5), critic.initial_hidden(B * N).view(B, N, -1), torch.zeros(L, B, dtype=torch.bool)
    )
    assert torch.allclose(heads["values"], torch.full((L, B, N), 2.8), atol=1e-5)
    assert torch.allclose(heads["option_values"], v_z.expand(L, B, N, -1))
    assert torch.allclose(
        critic.sequence(
            torch.randn(L, B, 5), critic.initial_hidden(B * N).view(B, N, -1), torch.zeros(L, B, dtype=torch.bool)
        ),
        heads["values"],
    )
    # The value trains p: dV/d logit_z = p_z (V_z - V), summed over the L*B*N entries.
    heads["values"].sum().backward()
    assert torch.allclose(critic.p_head.bias.grad, L * B * N * p * (v_z - 2.8), atol=1e-4)
    assert torch.allclose(critic.v.bias.grad, L * B * N * p, atol=1e-4)
    frozen = opre_learner(value_trains_p=False)
    set_constant_heads(frozen, pi, q, p, option_values=v_z)
    frozen.critic.sequence(
        torch.randn(L, B, 5), frozen.critic.initial_hidden(B * N).view(B, N, -1), torch.zeros(L, B, dtype=torch.bool)
    ).sum().backward()
    assert frozen.critic.p_head.bias.grad is None


def test_opre_option_entropy_and_kl_terms_by_hand_at_the_default_weights():
    cfg = opre.Config()
    assert cfg.kl_coef == 0.01 and cfg.option_entropy_coef == 0.01 and cfg.option_entropy_on == "p"
    p = torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.1, 0.9]]]).log()  # [L=1, M=3, K=2]
    q = torch.tensor([[[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]]]).log()
    mask = torch.tensor([[True, True, False]])  # the third row is a co-player's: left out
    h = lambda *x: -sum(v * math.log(v) for v in x)  # noqa: E731
    step = (h(0.5, 0.5) + h(0.9, 0.1)) / 2
    marginal = h(0.7, 0.3)  # mean of the two masked-in rows
    kl = (
        0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1) + 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    ) / 2
    got_step, got_marginal = opre.option_entropy_terms(p, mask)
    assert got_step.item() == pytest.approx(step, rel=1e-5) and got_marginal.item() == pytest.approx(marginal, rel=1e-5)
    terms = opre.option_losses(cfg, p, q, mask)
    assert terms["option_kl_loss"].item() == pytest.approx(0.01 * kl, rel=1e-5)
    assert terms["option_entropy_loss"].item() == pytest.approx(0.01 * (step - marginal), rel=1e-5)
    assert terms["option_kl"].item() == pytest.approx(kl, rel=1e-5)


def test_opre_policy_entropy_is_that_of_the_privileged_mixture_by_hand():
    pi, q, p = hand_options()
    p_mix = 0.5 * pi[1] + (0.5 / 7) * pi[0] + 6 * (0.5 / 7) * torch.full((A,), 0.25)
    h = lambda x: -(x * x.log()).sum().item()  # noqa: E731
    uniform, rest = torch.full((A,), 0.25), 0.5 / 7
    expected = {
        "privileged_mixture": h(p_mix),
        "per_option": 0.5 * h(pi[1]) + rest * h(pi[0]) + 6 * rest * h(uniform),
        "acting_mixture": h(0.5 * pi[0] + rest * pi[1] + 6 * rest * uniform),
    }
    assert opre.Config().policy_entropy == "privileged_mixture"
    for choice, value in expected.items():
        learner = opre_learner(ppo_epochs=1, policy_entropy=choice)
        set_constant_heads(learner, pi, q, p)
        r = opre_rollout(learner)
        adv, targets = learner.advantages(r)
        _, _, stats = learner.minibatch_losses(r, torch.arange(4), adv, targets)
        assert stats["entropy"].item() == pytest.approx(value, rel=1e-5), choice
        # Every row has the same p: its marginal is p, its per-step entropy H(p).
        assert stats["option_step_entropy"].item() == pytest.approx(h(p), rel=1e-5)
        assert stats["option_marginal_entropy"].item() == pytest.approx(h(p), rel=1e-5)


def test_opre_kl_gradients_reach_q_and_p_not_the_options():
    for kl_grad in ("both", "q_only"):
        learner = opre_learner(kl_grad=kl_grad)
        with torch.no_grad():  # make p and q disagree so the KL has a gradient
            learner.critic.p_head.weight.mul_(100.0)
        r = opre_rollout(learner)
        L = learner.cfg.data_chunk_length
        inp, h0, starts = learner.chunk_input(r, torch.arange(4))
        out = learner.actor.sequence(inp, h0, starts)
        c = learner.critic.sequence_heads(chunked(r.state, L), chunked(r.critic_h, L)[0], chunked(r.starts, L))
        every = torch.ones(L, 8, dtype=torch.bool)
        terms = opre.option_losses(learner.cfg, rows(c["p_logits"]), out["q_logits"], every)
        terms["option_kl_loss"].backward()
        assert learner.actor.meta_head.weight.grad.abs().sum() > 0
        assert learner.actor.option_head.weight.grad is None
        p_grad = learner.critic.p_head.weight.grad
        assert (p_grad is not None and p_grad.abs().sum() > 0) == (kl_grad == "both")


def test_opre_test_time_actor_ignores_the_state():
    learner = opre_learner()
    actor = learner.eval_module()
    M = 4
    inp = vector_input(M, 3)
    nan_state = ActInput(inp.obs, inp.extra, inp.agent_ids, inp.avail, torch.full_like(inp.state, float("nan")))
    h0 = actor.initial_hidden(M)
    with torch.no_grad():
        base, _ = actor.act(inp, h0)
        assert torch.equal(actor.act(nan_state, h0)[0], base)
        seq_inp = vector_input(M, 4, (3,))
        starts = torch.zeros(3, M, dtype=torch.bool)
        a = actor.sequence(seq_inp, h0, starts)["logits"]
        seq_nan = ActInput(
            seq_inp.obs, seq_inp.extra, seq_inp.agent_ids, seq_inp.avail, torch.full_like(seq_inp.state, float("nan"))
        )
        assert torch.equal(actor.sequence(seq_nan, h0, starts)["logits"], a)


@pytest.mark.parametrize("image", [False, True])
def test_opre_policy_artifact_round_trip(tmp_path, image):
    spec, make_input = (
        (image_spec(), lambda *a: image_input(*a, full=False)) if image else (vector_spec(), vector_input)
    )
    torch.manual_seed(0)
    learner = opre.Learner(build_config(opre.Config, {"rollout_length": 20, "orthogonal_init": not image}), spec)
    with torch.no_grad():
        for p in learner.actor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "policy.pt"
    save_policy(path, "opre", learner.cfg, spec, learner.eval_module())
    loaded = load_policy(path, expect=spec)
    assert loaded.algorithm == "opre" and isinstance(loaded.actor, opre.OptionActor)
    inp = make_input(4, 5)
    with torch.no_grad():
        mine, h1 = learner.eval_module().act(inp, torch.zeros(4, 64))
        theirs, h2 = loaded.actor.act(inp, torch.zeros(4, 64))
    assert torch.equal(mine, theirs) and torch.equal(h1, h2)


def test_opre_rejects_bad_config():
    with pytest.raises(ConfigError, match="n_options"):
        opre_learner(n_options=0)
    with pytest.raises(ConfigError, match="off_policy_correction"):
        opre_learner(off_policy_correction="retrace")
    with pytest.raises(ConfigError, match="rho_bar"):
        opre_learner(rho_bar=0.0)


# RandNet ---------------------------------------------------------------------------------------


def test_randnet_redraws_every_iteration_deterministically_from_the_generator():
    a, b = randnet_learner(), randnet_learner()
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    draws = []
    for _ in range(4):
        a.before_rollout(ga)
        b.before_rollout(gb)
        assert torch.equal(a.draw, b.draw) and a.clean == b.clean
        assert a.draw.shape == (3, 3, 3, 3)
        draws.append(a.draw.clone())
    assert all(not torch.equal(x, y) for i, x in enumerate(draws) for y in draws[i + 1 :])
    # The acting actor (the rollout's) uses the iteration's draw, or the clean image.
    assert a.module(LEARNER) is a.actor
    a.before_rollout(ga)
    assert (a.actor.transform is None) == a.clean
    if not a.clean:
        assert a.actor.transform.weight is a.draw


def test_randnet_clean_probability_and_xavier_normal_scale():
    g = torch.Generator().manual_seed(0)
    never, always = randnet_learner(clean_prob=0.0), randnet_learner(clean_prob=1.0)
    cleans = []
    for _ in range(20):
        never.before_rollout(g)
        always.before_rollout(g)
        cleans.append(never.clean)
        assert always.clean and always.actor.transform is None
    assert not any(cleans)
    half = randnet_learner(clean_prob=0.5)
    flags = []
    for _ in range(400):
        half.before_rollout(g)
        flags.append(half.clean)
    assert 0.4 < sum(flags) / 400 < 0.6
    w = randnet.draw_random_conv(3, g, samples=2000)
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (27 + 27)), rel=0.02)
    assert w.mean().abs().item() < 0.01


def test_random_conv_keeps_the_image_shape_and_per_draw_conv_matches_single_draws():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(5, 3, 5, 5, generator=g)
    w = randnet.draw_random_conv(3, g)
    out = randnet.RandomConv(w)(img)
    assert out.shape == img.shape
    # One output pixel by hand: centre of image 0, output channel 1.
    by_hand = (img[0, :, 1:4, 1:4] * w[1]).sum()
    assert out[0, 1, 2, 2].item() == pytest.approx(by_hand.item(), rel=1e-5)
    draws = randnet.draw_random_conv(3, g, samples=4)
    stacked = torch.cat([img] * 4)  # 4 blocks of 5 rows
    got = randnet.per_draw_conv(stacked, draws)
    expected = torch.cat([randnet.RandomConv(draws[s])(img) for s in range(4)])
    assert torch.allclose(got, expected, atol=1e-6)


def test_feature_matching_loss_by_hand_and_its_weight():
    rand = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]], requires_grad=True)  # [L=1, M=2, F=3]
    clean = torch.tensor([[[0.0, 2.0, 5.0], [9.0, 9.0, 9.0]]], requires_grad=True)
    mask = torch.tensor([[True, False]])
    hand = (1.0**2 + 0.0**2 + 2.0**2) / 3  # row 0 only
    loss = randnet.feature_match_loss(rand, clean, mask)
    assert loss.item() == pytest.approx(hand)
    loss.backward()
    assert clean.grad is None  # the clean side is a fixed target
    assert torch.allclose(rand.grad, torch.tensor([[[2 / 3, 0.0, -4 / 3], [0.0, 0.0, 0.0]]]))
    learner = randnet_learner(feature_match_coef=0.5)
    extras = learner.extra_actor_losses({"randomized_features": rand, "clean_features": clean}, None, mask)
    assert set(extras) == {"feature_match_loss"}
    assert extras["feature_match_loss"].item() == pytest.approx(0.5 * hand)


def _features_by_hand(actor: RecurrentActor, obs: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """The encoder's output for full-resolution uint8 images [M, 3, 40, 40], written out: with a draw
    w, the 3x3 random convolution on the [0, 1] pixels, then 8x8 average pooling; clean, the pooling
    of the stored form (0-255 scale, rounded); then the CNN's one conv + ReLU and the FC + ReLU."""
    if w is None:
        img = F.avg_pool2d(obs.float(), 8).round() / 255.0
    else:
        img = F.avg_pool2d(F.conv2d(obs.float() / 255.0, w, padding=1), 8)
    conv = actor.encoder.cnn[0]
    x = F.relu(F.conv2d(img, conv.weight, conv.bias)).flatten(1)
    return _fc_by_hand(actor, x)


def _fc_by_hand(actor: RecurrentActor, x: torch.Tensor) -> torch.Tensor:
    """The encoder's FC layers (on-policy's two at the defaults), each then ReLU, and for a vector input
    the LayerNorms: on the input and after each layer (unit gains, zero shifts at initialisation)."""
    enc = actor.encoder
    linears = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    vector_norm = not enc.image and any(isinstance(m, torch.nn.LayerNorm) for m in enc.modules())
    if vector_norm:
        x = F.layer_norm(x, x.shape[-1:])
    for lin in linears:
        x = F.relu(F.linear(x, lin.weight, lin.bias))
        if vector_norm:
            x = F.layer_norm(x, x.shape[-1:])
    return x


def _penultimate_by_hand(h: torch.Tensor) -> torch.Tensor:
    """What the policy head reads: on-policy's LayerNorm of the GRU output (unit gain, zero shift at init)."""
    return F.layer_norm(h, h.shape[-1:])


def _gru_by_hand(actor: RecurrentActor, feats: torch.Tensor, h: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    out = []
    for t in range(feats.shape[0]):
        h = actor.gru(feats[t], h * (~starts[t]).unsqueeze(-1).float())
        out.append(h)
    return torch.stack(out)


def test_randnet_random_layer_acts_on_pixels_before_the_pooling():
    learner = randnet_learner(clean_prob=0.0)
    cfg = learner.cfg
    assert cfg.randomize_at == "pixels" and cfg.downsample == 8
    enc = learner.actor.encoder
    # Rollouts store the full-resolution image (downsample 1); the encoder pools it by 8 itself.
    assert (enc.downsample, enc.pool) == (1, 8) and learner.eval_module().encoder is enc
    seen = []
    learner.before_rollout(torch.Generator().manual_seed(3))
    layer = learner.actor.transform
    learner.actor.transform = lambda img: (seen.append(tuple(img.shape)), layer(img))[1]
    inp = image_input(4, 0)
    with torch.no_grad():
        learner.module(LEARNER).act(inp, learner.actor.initial_hidden(4))
    assert seen == [(4, 3, 40, 40)]  # the layer sees pixels, not 5 x 5 grid cells
    learner.actor.transform = layer

    # A texture inside one 8x8 cell that leaves the cell's mean unchanged (so the pooled, stored
    # image of every other learner is identical) moves the randomized features, not the clean ones.
    base = inp.obs.clone()
    base[0, :, 8:16, 8:16] = torch.randint(60, 190, (3, 8, 8), generator=torch.Generator().manual_seed(4))
    pattern = torch.zeros(3, 8, 8, dtype=torch.long)
    pattern[:, :, 0], pattern[:, :, 7] = 40, -40  # zero mean over the cell, per channel
    textured = base.clone()
    textured[0, :, 8:16, 8:16] = (base[0, :, 8:16, 8:16].long() + pattern).to(torch.uint8)
    assert not torch.equal(textured, base)
    assert torch.equal(F.avg_pool2d(textured.float(), 8), F.avg_pool2d(base.float(), 8))
    with torch.no_grad():
        feats = lambda obs, t: randnet.encode(enc, obs, inp.extra, inp.agent_ids, t)  # noqa: E731
        assert torch.equal(feats(textured, None), feats(base, None))
        moved = (feats(textured, layer) - feats(base, layer)).abs()
        assert moved[0].max() > 1e-3 and moved[1:].max() < 1e-6
        # Different draws give different outputs; the clean path is the same whatever the draw.
        other = randnet.RandomConv(randnet.draw_random_conv(3, torch.Generator().manual_seed(11)))
        assert not torch.allclose(feats(base, layer), feats(base, other), atol=1e-3)
        assert not torch.allclose(feats(base, layer), feats(base, None), atol=1e-3)

    # randomize_at "cells" (the earlier reconstruction): the stored image is pooled, so the same
    # texture is invisible to the random layer too.
    cells = randnet_learner(clean_prob=0.0, randomize_at="cells")
    assert (cells.actor.encoder.downsample, cells.actor.encoder.pool) == (8, 1)
    pooled = lambda obs: F.avg_pool2d(obs.float(), 8).round().to(torch.uint8)  # noqa: E731
    with torch.no_grad():
        t = randnet.RandomConv(cells.draw)
        a = randnet.encode(cells.actor.encoder, pooled(textured), inp.extra, inp.agent_ids, t)
        b = randnet.encode(cells.actor.encoder, pooled(base), inp.extra, inp.agent_ids, t)
    assert torch.equal(a, b)


def test_fused_random_layer_and_pooling_equal_the_layer_then_the_pooling():
    g = torch.Generator().manual_seed(8)
    for H, W in ((40, 40), (44, 36)):
        img = torch.rand(5, 3, H, W, generator=g)
        w = randnet.draw_random_conv(3, g)
        layer = randnet.RandomConv(w)
        want = F.avg_pool2d(layer(img), 8)
        assert torch.allclose(layer.pooled(img, 8), want, atol=1e-6)
        assert torch.allclose(layer.pooled(img * 255.0, 8, 1.0 / 255.0), want, atol=1e-5)
        draws = randnet.draw_random_conv(3, g, samples=4)
        stacked = torch.cat([img] * 4)
        want = F.avg_pool2d(randnet.per_draw_conv(stacked, draws), 8)
        assert torch.allclose(randnet.PerDrawConv(draws).pooled(stacked, 8), want, atol=1e-6)
    assert randnet.pooled_kernel(w, 8).shape == (3, 3, 10, 10)
    assert randnet.pooled_kernel(w, 8).sum().item() == pytest.approx(w.sum().item(), rel=1e-5)


def _image_rollout(T: int = 20, B: int = 2, seed: int = 0):
    from marl.policy.runner import Rollout

    g = torch.Generator().manual_seed(seed)
    r = Rollout(
        obs=torch.randint(0, 256, (T, B, N, 3, 40, 40), generator=g, dtype=torch.uint8),
        extra=torch.zeros(T, B, N, 0),
        state=torch.randint(0, 256, (T, B, 3, 6, 6), generator=g, dtype=torch.uint8),
        avail=torch.ones(T, B, N, A, dtype=torch.bool),
        actions=torch.randint(0, A, (T, B, N), generator=g),
        logp=torch.full((T, B, N), -math.log(A)),
        values=torch.randn(T, B, N, generator=g),
        final_values=torch.zeros(T, B, N),
        last_values=torch.zeros(B, N),
        rewards=torch.randn(T, B, N, generator=g),
        terminated=torch.zeros(T, B, dtype=torch.bool),
        truncated=torch.zeros(T, B, dtype=torch.bool),
        starts=torch.zeros(T, B, dtype=torch.bool),
        policy=torch.zeros(T, B, N, dtype=torch.long),
        actor_h=torch.zeros(T, B, N, 64),
        critic_h=torch.zeros(T, B, N, 64),
        env_steps=T * B,
    )
    r.starts[0] = True
    r.starts[7, 1] = True
    return r


@pytest.mark.parametrize("clean_prob", [0.0, 1.0])
def test_randnet_update_with_cached_pooled_images_equals_the_plain_update(clean_prob):
    from marl.policy.runner import Episodes

    r = _image_rollout()
    results = []
    for cache in (True, False):
        learner = randnet_learner(clean_prob=clean_prob, ppo_epochs=2, num_mini_batch=2)
        learner.before_rollout(torch.Generator().manual_seed(3))
        learner.prepool_update = cache
        assert learner.prepools() == cache
        stats = learner.train_step(r, Episodes.cat([], N), torch.Generator().manual_seed(0))
        results.append((stats, learner.actor.state_dict()))
    (sa, pa), (sb, pb) = results
    assert sa["feature_match_loss"] > 0 and sa["feature_match_loss"] == pytest.approx(
        sb["feature_match_loss"], rel=1e-4
    )
    assert sa["policy_loss"] == pytest.approx(sb["policy_loss"], rel=1e-4, abs=1e-6)
    for k in pa:
        assert torch.allclose(pa[k], pb[k], atol=1e-5), k


def test_randnet_clean_path_is_mappos_actor_on_the_pooled_image():
    learner = randnet_learner(clean_prob=1.0)
    learner.before_rollout(torch.Generator().manual_seed(3))
    assert learner.clean and learner.actor.transform is None
    plain = RecurrentActor(image_spec(), learner.cfg)  # MAPPO's actor: stores the pooled image
    plain.load_state_dict(learner.actor.state_dict())
    assert (plain.encoder.downsample, plain.encoder.pool) == (8, 1)
    L, M = 3, 4
    inp = image_input(M, 0, (L,))
    starts = torch.zeros(L, M, dtype=torch.bool)
    starts[0] = True
    stored = preprocess_image(inp.obs.permute(0, 1, 3, 4, 2), 8)  # what MAPPO's rollouts hold
    pooled_inp = ActInput(stored, inp.extra, inp.agent_ids, inp.avail, inp.state)
    with torch.no_grad():
        mine = learner.actor.sequence(inp, learner.actor.initial_hidden(M), starts)
        theirs = plain.sequence(pooled_inp, plain.initial_hidden(M), starts)
    assert torch.equal(mine["features"], theirs["features"]) and torch.equal(mine["logits"], theirs["logits"])


@pytest.mark.parametrize("clean_prob", [0.0, 1.0])
def test_randnet_feature_matching_on_the_penultimate_layer_by_hand(clean_prob):
    learner = randnet_learner(clean_prob=clean_prob)
    learner.before_rollout(torch.Generator().manual_seed(3))
    assert learner.cfg.feature_match_layer == "penultimate" and learner.cfg.feature_match_coef == 0.002
    assert learner.cfg.layer_norm and learner.cfg.actor_fc_layers == 2  # on-policy's networks (the defaults)
    L, M = 3, 4
    inp = image_input(M, 0, (L,))
    starts = torch.zeros(L, M, dtype=torch.bool)
    starts[0], starts[2, 1] = True, True  # an episode start inside the chunk too
    h0 = torch.randn(M, 64, generator=torch.Generator().manual_seed(1))
    flat = lambda x: x.reshape(L * M, *x.shape[2:])  # noqa: E731
    out = learner.actor_sequence(inp, h0, starts)
    with torch.no_grad():
        actor = learner.actor
        rand_gru = _gru_by_hand(actor, _features_by_hand(actor, flat(inp.obs), learner.draw).view(L, M, -1), h0, starts)
        clean_gru = _gru_by_hand(actor, _features_by_hand(actor, flat(inp.obs), None).view(L, M, -1), h0, starts)
        rand_h, clean_h = _penultimate_by_hand(rand_gru), _penultimate_by_hand(clean_gru)
    assert torch.allclose(out["randomized_features"], rand_h, atol=1e-5)
    assert torch.allclose(out["clean_features"], clean_h, atol=1e-5)
    assert not torch.allclose(rand_h, clean_h, atol=1e-3)
    # The iteration's own input drives the policy (and PPO); the other side is the matched target.
    used_gru, used = (clean_gru, clean_h) if learner.clean else (rand_gru, rand_h)
    assert torch.allclose(out["hidden"], used_gru, atol=1e-5)
    assert torch.allclose(out["penultimate"], used, atol=1e-5)
    assert out["randomized_features"].requires_grad and not out["clean_features"].detach().requires_grad
    # The term: beta * mean over units of the squared difference, over the masked rows only.
    mask = torch.ones(L, M, dtype=torch.bool)
    mask[:, 3] = False
    hand = ((rand_h - clean_h) ** 2).mean(-1)[mask].mean()
    extras = learner.extra_actor_losses(out, inp, mask)
    assert extras["feature_match_loss"].item() == pytest.approx(0.002 * hand.item(), rel=1e-4)
    # Its gradient reaches the actor through the randomized side only.
    learner.actor.zero_grad()
    extras["feature_match_loss"].backward()
    assert learner.actor.gru.weight_hh.grad.abs().sum() > 0

    # feature_match_layer "encoder" (the earlier reconstruction): the encoder's outputs are matched.
    enc_learner = randnet_learner(clean_prob=clean_prob, feature_match_layer="encoder")
    enc_learner.before_rollout(torch.Generator().manual_seed(3))
    out = enc_learner.actor_sequence(inp, h0, starts)
    with torch.no_grad():
        a = enc_learner.actor
        by_hand = lambda w: _features_by_hand(a, flat(inp.obs), w).view(L, M, -1)  # noqa: E731
        assert torch.allclose(out["randomized_features"], by_hand(enc_learner.draw), atol=1e-5)
        assert torch.allclose(out["clean_features"], by_hand(None), atol=1e-5)


def test_monte_carlo_actor_is_log_of_mean_probabilities_over_fixed_draws():
    learner = randnet_learner(mc_samples=3)
    with torch.no_grad():
        learner.actor.head.weight.mul_(300.0)  # make the draws' policies visibly different
    mc, actor = learner.eval_module(), learner.actor
    S, H, M = 3, 64, 4
    inp1, inp2 = image_input(M, 1), image_input(M, 2)
    inp1.avail[0, 2] = False
    inp2.avail[0, 2] = False
    with torch.no_grad():
        g1, h = mc.act(inp1, mc.initial_hidden(M))
        g2, _ = mc.act(inp2, h)
        assert h.shape == (M, S * H)
        # By hand: each draw through the plain actor with its own GRU state, then mean of probabilities.
        manual = []
        hs = [actor.initial_hidden(M) for _ in range(S)]
        for step in (inp1, inp2):
            probs = []
            for s in range(S):
                actor.transform = randnet.RandomConv(mc.draws[s])
                logits, hs[s] = RecurrentActor.act(actor, step, hs[s])
                probs.append(torch.softmax(logits, -1))
            manual.append(torch.stack(probs).mean(0))
            assert not torch.allclose(probs[0], probs[1], atol=1e-3)
    for got, want in zip((g1, g2), manual):
        assert torch.allclose(torch.softmax(got, -1), want, atol=1e-6)
        assert torch.allclose(got[:, :2], want[:, :2].log(), atol=1e-5)
        assert got[0, 2] < -1e9 and torch.isfinite(got).all()
    # sequence() equals stepping act()
    L = 2
    seq = ActInput(*(torch.stack([getattr(inp1, f), getattr(inp2, f)]) for f in FIELDS))
    with torch.no_grad():
        out = mc.sequence(seq, mc.initial_hidden(M), torch.zeros(L, M, dtype=torch.bool))
    assert torch.allclose(out["logits"][0], g1, atol=1e-5) and torch.allclose(out["logits"][1], g2, atol=1e-5)


@pytest.mark.parametrize("vector", [False, True])
def test_randnet_artifact_and_checkpoint_round_trip(tmp_path, vector):
    spec, make_input = (vector_spec(), vector_input) if vector else (image_spec(), image_input)
    learner = randnet_learner(vector, mc_samples=4)
    learner.before_rollout(torch.Generator().manual_seed(5))
    path = tmp_path / "policy.pt"
    save_policy(path, "randnet", learner.cfg, spec, learner.eval_module())
    loaded = load_policy(path, expect=spec)
    assert isinstance(loaded.actor, randnet.MonteCarloActor)
    assert loaded.actor.draws.shape == ((4, 6, 6) if vector else (4, 3, 3, 3, 3))
    assert torch.equal(loaded.actor.draws, learner.eval_module().draws) and loaded.actor.draws.abs().sum() > 0
    inp = make_input(4, 9)
    with torch.no_grad():
        mine, _ = learner.eval_module().act(inp, learner.eval_module().initial_hidden(4))
        theirs, _ = loaded.actor.act(inp, loaded.actor.initial_hidden(4))
    assert torch.equal(mine, theirs)

    other = randnet_learner(vector, mc_samples=4, clean_prob=1.0)
    other.before_rollout(torch.Generator().manual_seed(6))
    other.load_state_dict(learner.state_dict())
    assert torch.equal(other.draw, learner.draw) and other.clean == learner.clean
    assert torch.equal(other.eval_module().draws, learner.eval_module().draws)
    assert (other.actor.transform is None) == learner.clean
    if not learner.clean:
        assert isinstance(other.actor.transform, randnet.RandomLinear if vector else randnet.RandomConv)


# RandNet on vector observations (SMAX, Predator-Prey): a random linear map D -> D ------------------


def test_randnet_vector_draws_are_xavier_normal_linear_maps_redrawn_every_iteration():
    a, b = randnet_learner(vector=True, clean_prob=0.0), randnet_learner(vector=True, clean_prob=0.0)
    assert a.draw.shape == (6, 6) and a.eval_module().draws.shape == (10, 6, 6)
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    draws = []
    for _ in range(4):
        a.before_rollout(ga)
        b.before_rollout(gb)
        assert torch.equal(a.draw, b.draw) and not a.clean
        assert isinstance(a.actor.transform, randnet.RandomLinear) and a.actor.transform.weight is a.draw
        draws.append(a.draw.clone())
    assert all(not torch.equal(x, y) for i, x in enumerate(draws) for y in draws[i + 1 :])
    # The test-time draws are fixed at construction and differ from one another.
    mc = a.eval_module().draws
    assert not torch.equal(mc[0], mc[1])
    # Xavier normal, fan_in = fan_out = D: std sqrt(2 / (D + D)) = sqrt(1 / D).
    g = torch.Generator().manual_seed(0)
    w = randnet.draw_random_linear(50, g, samples=100)
    assert w.shape == (100, 50, 50)
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (50 + 50)), rel=0.02)
    assert w.mean().abs().item() < 0.005
    # ... which keeps the squared norm on average: E|Wx|^2 = |x|^2.
    x = torch.randn(50, generator=g)
    assert (w @ x).pow(2).sum(-1).mean().item() == pytest.approx(x.pow(2).sum().item(), rel=0.05)
    always = randnet_learner(vector=True, clean_prob=1.0)
    always.before_rollout(g)
    assert always.clean and always.actor.transform is None and always.draw.shape == (6, 6)


def test_random_linear_and_per_draw_linear_by_hand():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 6, generator=g)
    w = randnet.draw_random_linear(6, g)
    out = randnet.RandomLinear(w)(x)
    assert out.shape == x.shape
    assert out[3, 2].item() == pytest.approx(sum(w[2, j].item() * x[3, j].item() for j in range(6)), rel=1e-5)
    draws = randnet.draw_random_linear(6, g, samples=3)
    got = randnet.per_draw_linear(torch.cat([x] * 3), draws)  # 3 blocks of 5 rows
    expected = torch.cat([x @ draws[s].T for s in range(3)])
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("clean_prob", [0.0, 1.0])
def test_randnet_vector_transform_changes_the_features_and_is_matched(clean_prob):
    learner = randnet_learner(vector=True, clean_prob=clean_prob)
    learner.before_rollout(torch.Generator().manual_seed(3))
    L, M = 3, 4
    inp = vector_input(M, 0, (L,))
    starts = torch.zeros(L, M, dtype=torch.bool)
    starts[0] = True
    fc = learner.actor.encoder.fc  # the first of LN, (FC -> ReLU -> LN) x 2 on [obs] (no extras or id by default)
    with torch.no_grad():
        out = learner.actor_sequence(inp, learner.actor.initial_hidden(M), starts)
        clean = _fc_by_hand(learner.actor, inp.obs)  # by hand
        rand = _fc_by_hand(learner.actor, inp.obs @ learner.draw.T)
        plain = RecurrentActor(vector_spec(), learner.cfg)  # the same weights without any random layer
        plain.load_state_dict(learner.actor.state_dict())
        plain_logits = plain.sequence(inp, plain.initial_hidden(M), starts)["logits"]
        h = learner.actor.initial_hidden(M)
        for t in range(L):  # the rollout's acting module gives the same logits step by step
            logits, h = learner.module(LEARNER).act(step_input(inp, t), h)
            assert torch.allclose(logits, out["logits"][t], atol=1e-5)
        # The matched features are the penultimate layer's: the GRU over each input's features.
        h0 = learner.actor.initial_hidden(M)
        clean_h = _penultimate_by_hand(_gru_by_hand(learner.actor, clean, h0, starts))
        rand_h = _penultimate_by_hand(_gru_by_hand(learner.actor, rand, h0, starts))
    assert torch.allclose(out["clean_features"], clean_h, atol=1e-5)
    assert torch.allclose(out["randomized_features"], rand_h, atol=1e-5)
    assert not torch.allclose(clean, rand, atol=1e-2) and not torch.allclose(clean_h, rand_h, atol=1e-3)
    assert torch.allclose(out["features"], clean if learner.clean else rand, atol=1e-5)
    assert torch.allclose(plain_logits, out["logits"], atol=1e-6) == learner.clean
    # Feature matching: by hand, and it trains the encoder (the draw is no parameter).
    out = learner.actor_sequence(inp, learner.actor.initial_hidden(M), starts)
    mask = torch.ones(L, M, dtype=torch.bool)
    fm = learner.extra_actor_losses(out, inp, mask)["feature_match_loss"]
    assert fm.item() == pytest.approx(
        learner.cfg.feature_match_coef * (rand_h - clean_h).pow(2).mean().item(), rel=1e-4
    )
    fm.backward()
    assert fc.weight.grad.abs().sum() > 0


def test_monte_carlo_actor_on_vectors_is_log_of_mean_probabilities_over_fixed_draws():
    learner = randnet_learner(vector=True, mc_samples=3)
    with torch.no_grad():
        learner.actor.head.weight.mul_(300.0)  # make the draws' policies visibly different
    mc = learner.eval_module()
    plain = RecurrentActor(vector_spec(), learner.cfg)  # by hand: the plain actor on W_s x
    plain.load_state_dict(learner.actor.state_dict())
    S, H, M = 3, 64, 4
    steps = [vector_input(M, 1), vector_input(M, 2)]
    with torch.no_grad():
        got, h = [], mc.initial_hidden(M)
        for step in steps:
            logits, h = mc.act(step, h)
            got.append(logits)
        assert h.shape == (M, S * H)
        hs = [plain.initial_hidden(M) for _ in range(S)]
        for t, step in enumerate(steps):
            probs = []
            for s in range(S):
                moved = ActInput(step.obs @ mc.draws[s].T, step.extra, step.agent_ids, step.avail, step.state)
                logits, hs[s] = plain.act(moved, hs[s])
                probs.append(torch.softmax(logits, -1))
            assert not torch.allclose(probs[0], probs[1], atol=1e-3)
            want = torch.stack(probs).mean(0)
            assert torch.allclose(torch.softmax(got[t], -1), want, atol=1e-6)
            assert torch.allclose(got[t][:, :3], want[:, :3].log(), atol=1e-5)
            assert got[t][0, 3] < -1e9 and torch.isfinite(got[t]).all()  # vector_input's unavailable action
        # The saved per-draw GRU states are the hand-run ones, draw by draw.
        assert torch.allclose(h.view(M, S, H).transpose(0, 1), torch.stack(hs), atol=1e-6)
        seq = ActInput(*(torch.stack([getattr(steps[0], f), getattr(steps[1], f)]) for f in FIELDS))
        out = mc.sequence(seq, mc.initial_hidden(M), torch.zeros(2, M, dtype=torch.bool))
    assert torch.allclose(out["logits"][0], got[0], atol=1e-5) and torch.allclose(out["logits"][1], got[1], atol=1e-5)


# Short training runs ---------------------------------------------------------------------------


def _loaded_acts_like_learner(run_dir, trainer, inp: ActInput) -> None:
    loaded = load_policy(run_dir / "policy.pt", expect=trainer.env.spec)
    mine = trainer.learner.eval_module()
    with torch.no_grad():
        a, _ = mine.act(inp, mine.initial_hidden(inp.obs.shape[0]))
        b, _ = loaded.actor.act(inp, loaded.actor.initial_hidden(inp.obs.shape[0]))
    assert torch.isfinite(b).all() and torch.equal(a, b)


def test_short_opre_run_on_smax(tmp_path):
    from marl.policy.trainer import PolicyTrainer
    from marl.trainer import Budget

    trainer = PolicyTrainer(
        "opre",
        "smax",
        "3m",
        0,
        Budget(env_steps=320, eval_interval=10_000, eval_episodes=2),
        overrides={"num_envs": 4, "rollout_length": 20, "ppo_epochs": 2},
        run_dir=tmp_path,
    )
    rows_ = trainer.run()
    last = rows_[-1]
    assert last["env_steps"] == 320
    for key in (
        "policy_loss",
        "value_loss",
        "option_kl_loss",
        "option_entropy_loss",
        "is_rho_mean",
        "option_marginal_entropy",
        "test_return_mean",
    ):
        assert math.isfinite(last[key]), key
    assert last["option_kl_loss"] >= 0.0 and 0.0 < last["is_rho_mean"] <= 1.0
    # The real collector records the log-probs of q's mixture: the learner's actor recomputes them.
    learner, L = trainer.learner, trainer.learner.cfg.data_chunk_length
    r, _ = trainer.collector.collect(20)
    inp, h0, starts = learner.chunk_input(r, torch.arange((20 // L) * 4))
    with torch.no_grad():
        out = learner.actor.sequence(inp, h0, starts)
    mu = torch.log_softmax(out["logits"], -1).gather(-1, rows(chunked(r.actions, L)).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(rows(chunked(r.logp, L)), mu, atol=1e-4)
    spec = trainer.env.spec
    M = 2 * spec.n_agents
    inp = ActInput(
        torch.randn(M, *spec.obs_shape),
        torch.zeros(M, 0),
        torch.arange(M) % spec.n_agents,
        torch.ones(M, spec.n_actions, dtype=torch.bool),
        torch.full((M, *spec.state_shape), float("nan")),
    )
    _loaded_acts_like_learner(tmp_path, trainer, inp)


def test_short_randnet_run_on_meltingpot(tmp_path):
    pytest.importorskip("meltingpot")
    from marl.policy.trainer import PolicyTrainer
    from marl.trainer import Budget

    trainer = PolicyTrainer(
        "randnet",
        "meltingpot",
        "prisoners_dilemma_in_the_matrix__repeated",
        0,
        Budget(env_steps=240, eval_interval=10_000, eval_episodes=2),
        overrides={"num_envs": 2, "rollout_length": 20, "ppo_epochs": 2, "mc_samples": 4, "eval_num_envs": 1},
        env_options={"max_episode_frames": 40},
        run_dir=tmp_path,
    )
    rows = trainer.run()
    last = rows[-1]
    assert last["env_steps"] == 240
    for key in ("policy_loss", "value_loss", "feature_match_loss", "clean_iteration", "test_return_mean"):
        assert math.isfinite(last[key]), key
    assert last["feature_match_loss"] > 0.0
    spec = trainer.env.spec
    H, W, C = spec.obs_shape
    M = 2 * spec.n_agents
    g = torch.Generator().manual_seed(0)
    extra = sum(math.prod(s) for s in spec.extra_obs_shapes.values())
    inp = ActInput(
        torch.randint(0, 256, (M, C, H, W), generator=g, dtype=torch.uint8),  # full resolution
        torch.rand(M, extra, generator=g),
        torch.arange(M) % spec.n_agents,
        torch.ones(M, spec.n_actions, dtype=torch.bool),
        torch.zeros(M, 0),
    )
    _loaded_acts_like_learner(tmp_path, trainer, inp)


def test_short_randnet_run_on_smax(tmp_path):
    from marl.policy.trainer import PolicyTrainer
    from marl.trainer import Budget

    trainer = PolicyTrainer(
        "randnet",
        "smax",
        "3m",
        0,
        Budget(env_steps=240, eval_interval=10_000, eval_episodes=2),
        overrides={"num_envs": 4, "rollout_length": 20, "ppo_epochs": 1, "mc_samples": 2},
        run_dir=tmp_path,
    )
    rows = trainer.run()
    last = rows[-1]
    assert last["env_steps"] == 240
    spec = trainer.env.spec
    D = spec.obs_shape[0]
    assert trainer.learner.draw.shape == (D, D) and trainer.learner.eval_module().draws.shape == (2, D, D)
    train_rows = [r for r in rows if "policy_loss" in r]
    assert train_rows
    for r in train_rows:
        for key in ("policy_loss", "value_loss", "feature_match_loss", "clean_iteration"):
            assert math.isfinite(r[key]), key
        assert r["feature_match_loss"] > 0.0  # the random map moves the features, clean iteration or not
    assert math.isfinite(last["test_return_mean"])
    M = 2 * spec.n_agents
    g = torch.Generator().manual_seed(0)
    avail = torch.ones(M, spec.n_actions, dtype=torch.bool)
    avail[0, 1] = False
    inp = ActInput(
        torch.randn(M, *spec.obs_shape, generator=g),
        torch.zeros(M, 0),
        torch.arange(M) % spec.n_agents,
        avail,
        torch.zeros(M, 0),
    )
    _loaded_acts_like_learner(tmp_path, trainer, inp)
