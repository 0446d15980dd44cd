"""Rollouts with a player per slot (marl/policy/runner.py): mixed players on SMAX, bootstrapping of
truncated and unfinished episodes from the critic, Melting Pot images recomputed consistently."""

import pytest
import torch
from torch import nn

import envs
from marl.policy.config import PolicyLearnerConfig
from marl.policy.learner import PolicyLearner, chunked, rows
from marl.policy.networks import ActInput, masked_logits
from marl.policy.runner import LEARNER, RolloutCollector

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
    collector = RolloutCollector(
        env, MixedPlayers(learner.actor, other), learner.actor, learner.critic, torch.Generator().manual_seed(1)
    )
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
    env = envs.make_env(
        "meltingpot", "stag_hunt_in_the_matrix__repeated", num_envs=B, seed=0, max_episode_frames=12, envs_per_worker=2
    )
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
