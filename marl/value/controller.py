"""Acting: the multi-agent controller (PyMARL's MAC) and epsilon-greedy selection."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from marl.value.networks import RecurrentAgent, build_agent_inputs


@dataclass
class LinearSchedule:
    """Linear interpolation from ``start`` to ``finish`` over ``duration`` env steps, then flat."""

    start: float
    finish: float
    duration: int

    def __call__(self, t: int) -> float:
        if t >= self.duration:
            return self.finish
        return self.start + max(t, 0) / self.duration * (self.finish - self.start)


def masked_q(q: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Q-values with unavailable actions set to -inf (never chosen by argmax/max)."""
    return q.masked_fill(~avail, float("-inf"))


def uniform_available_actions(avail: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random *available* action per row: avail [..., A] -> actions [...] (the argmax
    of uniform noise restricted to the available actions)."""
    noise = torch.rand(avail.shape, generator=generator, device=avail.device)
    return noise.masked_fill(~avail, -1.0).argmax(-1)


def epsilon_greedy(q: torch.Tensor, avail: torch.Tensor, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """Greedy over available actions; with probability epsilon (per agent) a uniformly random
    *available* action instead. q, avail [..., A] -> actions [...]."""
    greedy = masked_q(q, avail).argmax(-1)
    if epsilon <= 0.0:
        return greedy
    random_actions = uniform_available_actions(avail, generator)
    explore = torch.rand(greedy.shape, generator=generator, device=avail.device) < epsilon
    return torch.where(explore, random_actions, greedy)


class AgentController:
    """Runs the shared recurrent agent for B environments x N agents in one batched call."""

    def __init__(
        self, agent: RecurrentAgent, n_agents: int, n_actions: int, last_action: bool = True, agent_id: bool = True
    ):
        self.agent, self.n_agents, self.n_actions = agent, n_agents, n_actions
        self.last_action, self.agent_id = last_action, agent_id

    def inputs(self, obs: torch.Tensor, last_actions: torch.Tensor) -> torch.Tensor:
        return build_agent_inputs(obs, last_actions, self.n_actions, self.last_action, self.agent_id)

    def init_hidden(self, num_envs: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(num_envs * self.n_agents, self.agent.hidden_dim, device=device)

    def step_inputs(self, obs: torch.Tensor, last_actions: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """The agent's inputs for one step, [B, N, D]. Decentralised: the global state is unused."""
        return self.inputs(obs, last_actions)

    @torch.no_grad()
    def act(
        self,
        obs: torch.Tensor,
        avail: torch.Tensor,
        last_actions: torch.Tensor,
        hidden: torch.Tensor,
        epsilon: float,
        generator: torch.Generator,
        state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [B,N,O], avail [B,N,A], last_actions [B,N] (-1 at episode start), hidden [B*N,H],
        state [B,S] (read only by centralised controllers) -> (actions [B,N], new hidden [B*N,H])."""
        q, hidden = self.q_step(obs, last_actions, hidden, state)
        return epsilon_greedy(q, avail, epsilon, generator), hidden

    @torch.no_grad()
    def q_step(
        self, obs: torch.Tensor, last_actions: torch.Tensor, hidden: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the agent: (Q-values [B, N, A], new hidden [B*N, H])."""
        B = obs.shape[0]
        x = self.step_inputs(obs, last_actions, state).reshape(1, B * self.n_agents, -1)  # time-major, T = 1
        out = self.agent(x, hidden)
        return out.q.view(B, self.n_agents, -1), out.hidden[-1]
