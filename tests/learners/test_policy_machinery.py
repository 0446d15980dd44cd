"""The shared policy-gradient machinery (issue #5) against hand-computed values and direct
re-computations: GAE, value normalisation, PPO's losses, the encoders and recurrent actor, rollouts
with a player per slot, the PPO update, the trainer's exact resume and cross-play evaluation."""

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import envs
from envs.base import EnvSpec
from marl.policy.crossplay import PopulationPlayers, evaluate_crossplay
from marl.policy.config import PolicyLearnerConfig
from marl.policy.learner import PolicyLearner, chunked, rows
from marl.policy.networks import NEG_INF, ActInput, ObsEncoder, RecurrentActor, masked_logits, preprocess_image, run_gru
from marl.policy.runner import LEARNER, RolloutCollector
from marl.policy.trainer import PolicyTrainer
from marl.trainer import train_run
from marl.policy.population import POLICY_FILE, load_policy, save_policy
from marl.policy.ppo import (ValueNorm, categorical_entropy, gae, kl_categorical, masked_mean, normalize_advantages,
                      surrogate_loss, value_loss)
from marl.trainer import CHECKPOINT, METRICS, Budget


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
    adv, ret = gae(rewards, values, last_values, terminated.unsqueeze(-1), truncated.unsqueeze(-1), final_values,
                   gamma, lam)
    for b in range(B):
        for n in range(N):
            a, r = gae(rewards[:, b, n], values[:, b, n], last_values[b, n], terminated[:, b], truncated[:, b],
                       final_values[:, b, n], gamma, lam)
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
        0.75 * math.log(0.75 * 3) + 0.25 * math.log(0.25 * 1.5), abs=1e-6)
    assert torch.isfinite(kl_categorical(p_logits, q_logits)).all()

    assert categorical_entropy(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    uniform_of_two = masked_logits(torch.zeros(1, 4), torch.tensor([[True, False, True, False]]))
    assert categorical_entropy(uniform_of_two).item() == pytest.approx(math.log(2))
    assert categorical_entropy(p_logits).item() == pytest.approx(-(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3))


# Encoders and the recurrent actor ----------------------------------------------------------------


def test_preprocess_image_block_means_rounded_channels_first():
    x = torch.zeros(2, 16, 8, 3, dtype=torch.uint8)  # two images, 2 x 1 blocks of 8 x 8
    x[0, :8, :, 0] = 10  # block (0, 0), channel 0: constant
    x[0, :2, :, 1] = 255  # 16 of 64 pixels at 255: mean 63.75 -> 64
    x[0, 8:, :, 2] = 100
    x[0, 8, 0, 2] = 120  # one pixel +20: mean 100.3125 -> 100
    x[1, 8:, :4, 0] = 1  # half the pixels at 1 ... and 3 at 2: mean (32 + 3) / 64 = 0.547 -> 1
    x[1, 8, :3, 0] = 2
    out = preprocess_image(x, 8)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 2, 1)
    expected = torch.zeros(2, 3, 2, 1, dtype=torch.uint8)
    expected[0, 0, 0, 0], expected[0, 1, 0, 0], expected[0, 2, 1, 0] = 10, 64, 100
    expected[1, 0, 1, 0] = 1
    assert torch.equal(out, expected)

    g = torch.Generator().manual_seed(0)
    big = torch.randint(0, 256, (3, 4, 16, 24, 3), dtype=torch.uint8, generator=g)
    out = preprocess_image(big, 8)
    assert out.shape == (3, 4, 3, 2, 3)
    blocks = big.double().reshape(3, 4, 2, 8, 3, 8, 3).mean(dim=(3, 5))  # [.., 2, 3, C]
    assert torch.equal(out, blocks.round().to(torch.uint8).permute(0, 1, 4, 2, 3))
    assert torch.equal(preprocess_image(big, 1), big.permute(0, 1, 4, 2, 3))


def test_obs_encoder_shapes_for_images_with_extras_and_ids_and_for_vectors():
    torch.manual_seed(0)
    enc = ObsEncoder((40, 48, 3), extra_dim=2, id_dim=3, hidden_dim=8, downsample=8, channels=(4, 5), kernel=3)
    # stored 5 x 6 cells; two unpadded 3x3 convolutions: 3 x 4, then 1 x 2
    assert enc.stored_shape == (3, 5, 6) and enc.fc.in_features == 5 * 1 * 2 + 2 + 3
    raw = torch.randint(0, 256, (5, 40, 48, 3), dtype=torch.uint8)
    stored = enc.preprocess(raw)
    assert stored.shape == (5, 3, 5, 6) and stored.dtype == torch.uint8
    ids = torch.tensor([0, 1, 2, 0, 1])
    out = enc(stored, torch.randn(5, 2), ids)
    assert out.shape == (5, 8) and (out >= 0).all()
    # the one-hot id reaches the output
    with torch.no_grad():
        enc.fc.bias.fill_(10.0)  # all units active, so any input change shows
    extra = torch.randn(5, 2)
    assert not torch.allclose(enc(stored, extra, ids), enc(stored, extra, (ids + 1) % 3))
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        ObsEncoder((16, 24, 3), extra_dim=0, id_dim=0, hidden_dim=8, downsample=8, channels=(4,), kernel=3)

    vec = ObsEncoder((7,), extra_dim=0, id_dim=0, hidden_dim=6)
    assert vec.cnn is None and vec.stored_shape == (7,) and vec.fc.in_features == 7
    assert vec(vec.preprocess(torch.randn(4, 7)), None, None).shape == (4, 6)


def test_run_gru_resets_exactly_at_episode_starts():
    torch.manual_seed(0)
    cell = nn.GRUCell(3, 4)
    L, M = 6, 3
    feats, h0 = torch.randn(L, M, 3), torch.randn(M, 4)
    starts = torch.tensor([[False, True, False], [False, False, False], [True, False, False],
                           [False, False, True], [True, True, False], [False, False, False]])
    got = run_gru(cell, feats, h0, starts)
    for m in range(M):
        h = h0[m : m + 1]
        for t in range(L):
            if starts[t, m]:
                h = torch.zeros_like(h)
            h = cell(feats[t, m : m + 1], h)
            assert torch.allclose(got[t, m], h[0], atol=1e-6), (t, m)


def _vector_spec(n_agents=2, n_actions=4, obs_dim=6, state_dim=5) -> EnvSpec:
    return EnvSpec(family="test", scenario="vec", num_envs=1, n_agents=n_agents, n_actions=n_actions,
                   obs_shape=(obs_dim,), state_shape=(state_dim,), episode_limit=10)


def test_actor_sequence_equals_stepping_act_with_resets():
    torch.manual_seed(0)
    spec = _vector_spec()
    cfg = PolicyLearnerConfig(hidden_dim=8, actor_agent_id=True)
    actor = RecurrentActor(spec, cfg)
    with torch.no_grad():  # a visible policy head (MAPPO's initial gain 0.01 makes logits ~0)
        actor.head.weight.mul_(100.0)
    L, M = 7, 3
    obs, state = torch.randn(L, M, 6), torch.randn(L, M, 5)
    ids = torch.tensor([0, 1, 0]).expand(L, M)
    avail = torch.rand(L, M, 4) < 0.7
    avail[..., 0] = True
    starts = torch.rand(L, M) < 0.3
    starts[0] = True
    inp = ActInput(obs, torch.zeros(L, M, 0), ids, avail, state)
    seq = actor.sequence(inp, torch.randn(M, 8), starts)  # h0 is ignored where starts[0] is true
    h = actor.initial_hidden(M)
    for t in range(L):
        h = h * (~starts[t]).unsqueeze(-1).float()
        logits, h = actor.act(ActInput(obs[t], torch.zeros(M, 0), ids[t], avail[t], state[t]), h)
        assert torch.allclose(seq["logits"][t], logits, atol=1e-5)
        assert torch.allclose(seq["hidden"][t], h, atol=1e-6)
        assert (logits[~avail[t]] == NEG_INF).all()
    assert seq["logits"][avail].std() > 0.1  # not near-uniform: the comparison has teeth


# Rollouts with a player per slot -----------------------------------------------------------------

OTHER = 7


class CountingActor(nn.Module):
    """A frozen co-player: always the first available action; its 1-d hidden state counts the steps
    it has acted since its last reset; records what it was given."""

    hidden_dim = 1

    def __init__(self, n_actions: int):
        super().__init__()
        self.preference = -100.0 * torch.arange(n_actions, dtype=torch.float32)
        self.calls: list[dict[str, torch.Tensor]] = []

    def initial_hidden(self, rows: int, device="cpu") -> torch.Tensor:
        return torch.zeros(rows, 1, device=device)

    def act(self, inp: ActInput, h: torch.Tensor):
        self.calls.append({"h": h.clone(), "ids": inp.agent_ids.clone(), "obs": inp.obs.clone()})
        return masked_logits(self.preference.expand(inp.avail.shape[0], -1), inp.avail), h + 1.0


class MixedPlayers:
    """Per episode, each slot independently: the learner (key 0) or the counting actor (key 7)."""

    def __init__(self, learner_actor: nn.Module, other: nn.Module):
        self.learner_actor, self.other = learner_actor, other

    def assign(self, n_envs, n_agents, generator):
        return torch.where(torch.rand(n_envs, n_agents, generator=generator) < 0.5, LEARNER, OTHER)

    def module(self, key):
        return {LEARNER: self.learner_actor, OTHER: self.other}[key]


class RecordingEnv:
    """A real env that also records the final state of every step (for bootstrap checks)."""

    def __init__(self, env):
        self.env, self.spec, self.device = env, env.spec, env.device
        self.steps: list = []

    def reset(self, seed=None):
        self.steps = []
        self.last = self.env.reset(seed=seed)
        return self.last

    def step(self, actions):
        self.last = self.env.step(actions)
        self.steps.append(self.last)
        return self.last


def _sharpened(learner: PolicyLearner) -> PolicyLearner:
    with torch.no_grad():  # a non-uniform policy, so that log-prob checks mean something
        learner.actor.head.weight.mul_(100.0)
    return learner


def test_rollout_with_mixed_players_on_smax():
    torch.manual_seed(0)
    env = RecordingEnv(envs.make_env("smax", "3m", num_envs=4, seed=0))
    spec = env.spec
    T, B, N, L = 40, 4, spec.n_agents, 10
    cfg = PolicyLearnerConfig(num_envs=B, rollout_length=T, data_chunk_length=L, hidden_dim=16)
    learner = _sharpened(PolicyLearner(cfg, spec))
    other = CountingActor(spec.n_actions)
    collector = RolloutCollector(env, MixedPlayers(learner.actor, other), learner.actor, learner.critic,
                                 torch.Generator().manual_seed(1))
    collector.start(seed=3)
    r, episodes = collector.collect(T)
    assert r.env_steps == T * B and r.actions.shape == (T, B, N)

    # Episode starts: the first step, and exactly the steps after an episode ended.
    done = torch.stack([s.done for s in env.steps])
    assert torch.equal(done, r.terminated | r.truncated)
    assert r.starts[0].all() and torch.equal(r.starts[1:], done[:-1])
    assert 3 <= int(done.sum()) and episodes.count == int(done.sum())
    # Players are drawn per episode: they change only at episode starts, and both kinds occur.
    assert torch.equal(r.policy[1:][~r.starts[1:]], r.policy[:-1][~r.starts[1:]])
    assert r.learner_mask.any() and (r.policy == OTHER).any() and set(r.policy.unique().tolist()) <= {LEARNER, OTHER}
    assert torch.equal(episodes.policy, torch.stack([r.policy[t, b] for t, b in done.nonzero().tolist()]))

    # The co-player acted on exactly its rows (in row order), with its recurrent state reset at
    # its episodes' starts, and its (deterministic) actions are the ones taken.
    first_avail = r.avail.float().argmax(-1)  # the first available action
    calls = iter(other.calls)
    since_start = torch.zeros(B)
    for t in range(T):
        since_start = torch.where(r.starts[t], torch.zeros(B), since_start + 1)
        mine = (r.policy[t] == OTHER).reshape(-1)
        if not mine.any():
            continue
        call = next(calls)
        rows_ = mine.nonzero().squeeze(-1)
        assert torch.equal(call["ids"], rows_ % N)
        assert torch.equal(call["obs"], r.obs[t].reshape(B * N, -1)[rows_])
        assert torch.equal(call["h"].squeeze(-1), since_start[rows_ // N])
    assert next(calls, None) is None
    other_rows = r.policy == OTHER
    assert torch.equal(r.actions[other_rows], first_avail[other_rows])
    assert (r.logp[other_rows] == 0).all() and (r.actor_h[other_rows] == 0).all()  # nothing recorded
    assert r.avail.gather(-1, r.actions.unsqueeze(-1)).all()  # every action taken was available

    # Key consistency of recurrent PPO: re-running the actor over the stored chunks (from the stored
    # hidden states, with the stored starts) gives the rollout-time log-probs of the learner's rows.
    inp, h0, starts = learner.chunk_input(r, torch.arange((T // L) * B))
    seq = learner.actor.sequence(inp, h0, starts)
    logp = torch.log_softmax(seq["logits"], -1).gather(-1, rows(chunked(r.actions, L)).unsqueeze(-1)).squeeze(-1)
    mask = rows(chunked(r.learner_mask, L))
    assert torch.allclose(logp[mask], rows(chunked(r.logp, L))[mask], atol=1e-5)
    assert logp[mask].std() > 0.1  # not a near-uniform policy, so the check has teeth
    # ... and the stored hidden state is the one the actor had before each step
    h_prev = torch.cat([h0.unsqueeze(0), seq["hidden"][:-1]]) * (~starts).unsqueeze(-1).float()
    assert torch.allclose(h_prev[mask], rows(chunked(r.actor_h, L))[mask], atol=1e-5)
    # The critic's chunked recomputation gives the rollout-time values.
    values = learner.critic.sequence(chunked(r.state, L), chunked(r.critic_h, L)[0], chunked(r.starts, L))
    assert torch.allclose(values, chunked(r.values, L), atol=1e-5)
    env.env.close()


def test_rollout_bootstraps_truncated_and_unfinished_episodes_from_the_critic():
    torch.manual_seed(0)
    env = RecordingEnv(envs.make_env("predator_prey", "stag_hunt_small", num_envs=3, seed=0, episode_limit=4))
    spec = env.spec
    T, B, N = 8, 3, spec.n_agents  # the rollout ends with the copies' second time limit
    cfg = PolicyLearnerConfig(num_envs=B, rollout_length=T, data_chunk_length=4, hidden_dim=8)
    learner = PolicyLearner(cfg, spec)
    with torch.no_grad():
        learner.critic.v.weight.mul_(10.0)  # values well away from zero
    collector = RolloutCollector(env, learner, learner.actor, learner.critic, torch.Generator().manual_seed(0))
    collector.start(seed=1)
    r, _ = collector.collect(T)
    assert r.truncated.any() and r.truncated[-1].any() and r.learner_mask.all()
    # Replay the critic step by step.
    h = learner.critic.initial_hidden(B * N).view(B, N, -1)
    for t in range(T):
        h = h * (~r.starts[t]).view(B, 1, 1).float()
        assert torch.allclose(r.critic_h[t], h)
        v, h = learner.critic.step(r.state[t], h)
        assert torch.allclose(r.values[t], v, atol=1e-6)
        v_final, _ = learner.critic.step(env.steps[t].final_state.float(), h)
        expect = torch.where(r.truncated[t].unsqueeze(-1), v_final, torch.zeros_like(v_final))
        assert torch.allclose(r.final_values[t], expect, atol=1e-6)
    h = h * (~(r.terminated[-1] | r.truncated[-1])).view(B, 1, 1).float()  # new episodes start afresh
    v_last, _ = learner.critic.step(env.last.state.float(), h)
    assert torch.allclose(r.last_values, v_last, atol=1e-6)
    assert (r.final_values[r.truncated].abs() > 0).all()


def test_rollout_on_melting_pot_images_recomputes_consistently():
    """Image observations (stored downsampled, uint8), per-agent extras and an image state go
    through the same rollout -> chunked re-computation path as vectors."""
    pytest.importorskip("meltingpot")
    T, B, L = 30, 2, 10
    env = envs.make_env("meltingpot", "stag_hunt_in_the_matrix__repeated", num_envs=B, seed=0,
                        max_episode_frames=12, envs_per_worker=2)
    try:
        spec = env.spec
        torch.manual_seed(0)
        cfg = PolicyLearnerConfig(num_envs=B, rollout_length=T, data_chunk_length=L, hidden_dim=16)
        learner = _sharpened(PolicyLearner(cfg, spec))
        collector = RolloutCollector(env, learner, learner.actor, learner.critic, torch.Generator().manual_seed(0))
        collector.start(seed=0)
        r, episodes = collector.collect(T)
    finally:
        env.close()
    H, W, C = spec.obs_shape
    SH, SW, _ = spec.state_shape
    assert r.obs.dtype == torch.uint8 and r.obs.shape == (T, B, 2, C, H // 8, W // 8)
    assert r.state.dtype == torch.uint8 and r.state.shape == (T, B, C, SH // 8, SW // 8)
    assert r.extra.shape == (T, B, 2, 3)  # INVENTORY (2) + READY_TO_SHOOT (1)
    # Episodes are cut by the 12-frame limit (the substrate's own random end starts at frame 1000).
    assert r.truncated[[11, 23]].all() and int(r.truncated.sum()) == 2 * B and not r.terminated.any()
    assert episodes.count == 2 * B and (episodes.lengths == 12).all()
    assert (r.final_values[r.truncated].abs() > 0).all()

    inp, h0, starts = learner.chunk_input(r, torch.arange((T // L) * B))
    logits = learner.actor.sequence(inp, h0, starts)["logits"]
    logp = torch.log_softmax(logits, -1).gather(-1, rows(chunked(r.actions, L)).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logp, rows(chunked(r.logp, L)), atol=1e-5)
    values = learner.critic.sequence(chunked(r.state, L), chunked(r.critic_h, L)[0], chunked(r.starts, L))
    assert torch.allclose(values, chunked(r.values, L), atol=1e-5)


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
    cfg = PolicyLearnerConfig(num_envs=4, rollout_length=20, data_chunk_length=10, hidden_dim=16, ppo_epochs=1,
                              clip_param=1e9, entropy_coef=0.0, lr=5e-3)
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
    return {**{f"actor.{k}": v for k, v in learner.actor.state_dict().items()},
            **{f"critic.{k}": v for k, v in learner.critic.state_dict().items()},
            **{f"vn.{k}": v for k, v in learner.value_norm.state_dict().items()}}


def test_entries_of_other_players_do_not_affect_the_update():
    cfg = PolicyLearnerConfig(num_envs=4, rollout_length=20, data_chunk_length=10, hidden_dim=16, ppo_epochs=2,
                              num_mini_batch=2)
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


# The trainer: exact resume, the policy artifact ----------------------------------------------------

SMALL = {"num_envs": 4, "rollout_length": 20, "data_chunk_length": 10, "hidden_dim": 16, "ppo_epochs": 2,
         "num_mini_batch": 2}


def _comparable(rows_):
    return [{k: (None if v != v else v) for k, v in r.items() if k not in ("wall_time", "env_steps_per_s")}
            for r in rows_]


def test_interrupted_policy_run_resumes_to_exactly_the_uninterrupted_result(tmp_path: Path):
    budget = Budget(env_steps=480, eval_interval=160, eval_episodes=4, checkpoint_interval=240)
    args = ("mappo", "smax", "3m", 5, budget)
    reference = train_run(*args, overrides=SMALL, run_dir=tmp_path / "a")

    class Killed(Exception):
        pass

    def kill_after_first_checkpoint(t_env, total, row):
        if t_env > 240:
            raise Killed

    with pytest.raises(Killed):
        train_run(*args, overrides=SMALL, run_dir=tmp_path / "b", progress=kill_after_first_checkpoint)
    resumed_trainer = PolicyTrainer(*args, overrides=SMALL, run_dir=tmp_path / "b")
    assert resumed_trainer.resumed and resumed_trainer.t_env == 240
    resumed = resumed_trainer.run()

    assert [r["env_steps"] for r in reference] == [0, 160, 320, 480]
    assert _comparable(resumed) == _comparable(reference)
    assert reference[-1]["updates"] == 6
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=False)["learner"]
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["learner"]
    for part in ("actor", "critic", "value_norm"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert (tmp_path / "b" / METRICS).read_text().count("\n") == len(reference) + 1

    loaded = load_policy(tmp_path / "a" / POLICY_FILE)
    assert loaded.algorithm == "mappo" and loaded.info["env_steps"] == 480 and loaded.info["seed"] == 5
    for key, value in loaded.actor.state_dict().items():
        assert torch.equal(value, a["actor"][key]), key
    assert not any(p.requires_grad for p in loaded.actor.parameters())


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
