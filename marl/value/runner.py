"""Episode collection over B parallel environments (PyMARL's runner, without its per-env loops).

All B copies step together; a copy whose episode ends is reset by the environment (auto-reset,
see envs/base.py) while the others continue, so no copy waits for the slowest one. Complete
episodes are assembled in a preallocated staging area and handed out as tensors in the replay
buffer's layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from envs.base import BatchedEnv, StepOutput
from marl.value.buffer import EpisodeLayout
from marl.value.controller import AgentController


@dataclass
class CollectedEpisodes:
    data: dict[str, torch.Tensor]  # replay layout, [k, ...]
    lengths: torch.Tensor  # [k]
    returns: torch.Tensor  # [k] team return
    won: torch.Tensor  # [k] bool
    env_steps: int = 0  # env steps taken while collecting

    @property
    def count(self) -> int:
        return int(self.lengths.shape[0])


def team_reward(out: StepOutput, shared: bool) -> torch.Tensor:
    """[B] team reward: the shared reward, or the sum of individual rewards."""
    return out.reward[:, 0] if shared else out.reward.sum(-1)


@dataclass
class EpisodeRunner:
    env: BatchedEnv
    controller: AgentController
    generator: torch.Generator
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        spec = self.env.spec
        self.B, self.shared = spec.num_envs, spec.shared_reward
        self.layout = EpisodeLayout.from_spec(spec)
        self.stage = self.layout.allocate(self.B, self.device)
        self.rows = torch.arange(self.B, device=self.device)
        self.out: StepOutput | None = None

    def start(self, seed: int) -> None:
        """Reset every copy with ``seed`` and drop anything staged."""
        self.out = self.env.reset(seed=seed)
        self.t = torch.zeros(self.B, dtype=torch.long, device=self.device)
        self.ep_return = torch.zeros(self.B, device=self.device)
        self.hidden = self.controller.init_hidden(self.B, self.device)
        self.last_actions = torch.full((self.B, self.layout.n_agents), -1, dtype=torch.long, device=self.device)
        self.stage["filled"].zero_()
        self.stage["avail_actions"].fill_(True)
        self._write_obs(self.rows, self.t, self.out.obs, self.out.state, self.out.avail_actions)

    def _write_obs(self, rows, t, obs, state, avail) -> None:
        self.stage["obs"][rows, t] = obs
        self.stage["state"][rows, t] = state
        self.stage["avail_actions"][rows, t] = avail

    def collect(self, min_episodes: int, epsilon: Callable[[int], float], t_env: int) -> CollectedEpisodes:
        """Step all copies until at least ``min_episodes`` episodes have completed.
        ``epsilon(t)`` gives the exploration rate at env step t (counted from ``t_env``)."""
        assert self.out is not None, "call start(seed) first"
        finished: list[CollectedEpisodes] = []
        n_done, steps = 0, 0
        while n_done < min_episodes:
            episodes = self.step(epsilon(t_env + steps))
            steps += self.B
            if episodes is not None:
                finished.append(episodes)
                n_done += episodes.count
        result = _concat(finished)
        result.env_steps = steps
        return result

    def step(self, epsilon: float) -> CollectedEpisodes | None:
        """One joint step of all copies; returns the episodes that ended in it, if any."""
        out, stage, rows, t = self.out, self.stage, self.rows, self.t
        actions, self.hidden = self.controller.act(
            out.obs, out.avail_actions, self.last_actions, self.hidden, epsilon, self.generator, state=out.state
        )
        stage["actions"][rows, t] = actions
        nxt = self.env.step(actions)
        reward = team_reward(nxt, self.shared)
        stage["reward"][rows, t] = reward
        stage["terminated"][rows, t] = nxt.terminated
        stage["filled"][rows, t] = True
        t += 1
        # For copies that just finished, final_* is the last observation of the episode; for the
        # others it equals the current one (envs/base.py).
        self._write_obs(rows, t, nxt.final_obs, nxt.final_state, nxt.final_avail_actions)
        self.ep_return += reward
        self.last_actions = actions
        self.out = nxt
        done = nxt.done
        if not bool(done.any()):
            if bool((t >= self.layout.max_len).any()):
                raise RuntimeError("environment ran past its episode limit without truncating (envs/base.py contract)")
            return None
        idx = done.nonzero().squeeze(1)
        episodes = self._take(idx, won=nxt.won[idx])
        # Start the new episodes in the same rows.
        self._write_obs(idx, torch.zeros_like(idx), nxt.obs[idx], nxt.state[idx], nxt.avail_actions[idx])
        self.hidden.view(self.B, self.layout.n_agents, -1)[idx] = 0.0
        self.last_actions[idx] = -1
        return episodes

    def cut(self) -> CollectedEpisodes:
        """Hand out every in-flight episode prefix as a truncated episode (bootstrapped from its
        latest observation), e.g. before a checkpoint re-seeds the environments."""
        idx = (self.t > 0).nonzero().squeeze(1)
        return self._take(idx, won=torch.zeros(idx.shape[0], dtype=torch.bool, device=self.device))

    def _take(self, idx: torch.Tensor, won: torch.Tensor) -> CollectedEpisodes:
        data = {name: v[idx].clone() for name, v in self.stage.items()}
        episodes = CollectedEpisodes(data, self.t[idx].clone(), self.ep_return[idx].clone(), won.clone())
        self.stage["filled"][idx] = False
        self.stage["avail_actions"][idx] = True
        self.t[idx] = 0
        self.ep_return[idx] = 0.0
        return episodes


def _concat(parts: list[CollectedEpisodes]) -> CollectedEpisodes:
    if len(parts) == 1:
        return parts[0]
    return CollectedEpisodes(
        {k: torch.cat([p.data[k] for p in parts]) for k in parts[0].data},
        torch.cat([p.lengths for p in parts]),
        torch.cat([p.returns for p in parts]),
        torch.cat([p.won for p in parts]),
    )


@dataclass
class EvalResult:
    win_rate: float
    return_mean: float
    return_std: float
    length_mean: float
    episodes: int


@torch.no_grad()
def evaluate_greedy(
    env: BatchedEnv, controller: AgentController, seed: int, device: torch.device | str = "cpu"
) -> EvalResult:
    """Greedy test episodes: one episode per environment copy (so K copies give K episodes, with
    no bias towards short episodes). Win rate = fraction of those episodes won."""
    spec = env.spec
    B, N = spec.num_envs, spec.n_agents
    out = env.reset(seed=seed)
    hidden = controller.init_hidden(B, torch.device(device))
    last_actions = torch.full((B, N), -1, dtype=torch.long, device=device)
    active = torch.ones(B, dtype=torch.bool, device=device)
    returns = torch.zeros(B, device=device)
    lengths = torch.zeros(B, device=device)
    won = torch.zeros(B, dtype=torch.bool, device=device)
    generator = torch.Generator(device=device)
    while bool(active.any()):
        actions, hidden = controller.act(
            out.obs, out.avail_actions, last_actions, hidden, 0.0, generator, state=out.state
        )
        out = env.step(actions)
        returns += team_reward(out, spec.shared_reward) * active
        lengths += active.float()
        won |= out.won & active
        active &= ~out.done
        last_actions = actions
    return EvalResult(
        float(won.float().mean()), float(returns.mean()), float(returns.std(unbiased=False)), float(lengths.mean()), B
    )
