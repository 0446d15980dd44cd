"""Networks shared by the value-decomposition learners (PyMARL's agent and mixers)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from marl.value.fast_gru import check_active, gru_packed, gru_sequence, packed_index


class AgentOutput(NamedTuple):
    q: torch.Tensor  # [T, R, A] Q-value per action
    hidden: torch.Tensor | None  # [T, R, H] GRU hidden state after each step
    embedding: torch.Tensor | None  # [T, R, H] first-layer features (input to the GRU)


class SplitInput(NamedTuple):
    """A first layer's packed input [P, k + m] as its two column blocks, of which only the first
    can need a gradient (DDN's teacher: the personalized state, then observations, last actions
    and ids). Its layer skips the m columns' input gradient, which nothing reads."""

    learned: torch.Tensor  # [P, k]
    fixed: torch.Tensor  # [P, m], no gradient


class _LinearOnSplitInput(torch.autograd.Function):
    """``F.linear(cat(learned, fixed), weight, bias)`` whose backward computes the input gradient
    of ``learned``'s columns only. Forward and gradients are the ops autograd runs for the
    concatenated input (addmm; grad.mm(weight) cut to k columns, grad.t().mm(x), grad.sum(0)),
    so the values are the same bit for bit (tests/learners/test_value_machinery.py)."""

    @staticmethod
    def forward(ctx, learned, fixed, weight, bias):  # type: ignore[override]
        x = torch.cat([learned, fixed], dim=-1)
        ctx.save_for_backward(x, weight)
        ctx.k = learned.shape[-1]
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_learned = grad.mm(weight[:, : ctx.k]) if ctx.needs_input_grad[0] else None
        grad_weight = grad.t().mm(x) if ctx.needs_input_grad[2] else None
        grad_bias = grad.sum(0) if ctx.needs_input_grad[3] else None
        return grad_learned, None, grad_weight, grad_bias


class RecurrentAgent(nn.Module):
    """PyMARL's RNNAgent: input -> FC -> ReLU -> GRU -> FC -> Q per action, shared by all agents.

    A single-layer ``nn.GRU`` is the same function as PyMARL's ``GRUCell`` (same gates and
    parameters). Acting runs it one step at a time; training runs whole episodes through
    ``marl.value.fast_gru`` (hand-written BPTT over packed rows: finished episodes cost nothing).
    Tensors are time-major, [T, R, ...] with R = rows (episodes x agents), so that each time
    step is one contiguous block.
    """

    def __init__(self, input_dim: int, n_actions: int, hidden_dim: int = 64):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.rnn = nn.GRU(hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, n_actions)

    def forward(
        self,
        inputs: torch.Tensor,
        h0: torch.Tensor | None = None,
        active: list[int] | None = None,
        features: bool = True,
    ) -> AgentOutput:
        """inputs [T, R, input_dim]; h0 [R, H] or None (zeros); ``active[t]`` = number of leading
        rows still inside their episode at step t (rows sorted by length, longest first), or None.
        Outputs at inactive positions are zeros (mask them). With ``active`` and ``features=False``
        only q is returned (hidden and embedding None): the TD loss needs nothing else, and
        scattering the packed features back into [T, R, H] is not free."""
        if active is None:
            embedding = F.relu(self.fc1(inputs))
            if inputs.shape[0] == 1:  # acting: one step
                hidden, _ = self.rnn(embedding, None if h0 is None else h0.unsqueeze(0).contiguous())
            else:
                h0 = embedding.new_zeros(embedding.shape[1], self.hidden_dim) if h0 is None else h0
                hidden = gru_sequence(embedding, h0, self.rnn)
            return AgentOutput(self.fc2(hidden), hidden, embedding)
        # Training on padded episodes: every layer sees only the positions inside an episode (a
        # prefix of the rows at each time step, rows being sorted), often half of T x R.
        T, R = inputs.shape[:2]
        active = check_active(active, T, R)
        index = packed_index(active, R, inputs.device)
        return self.forward_packed(inputs.reshape(T * R, -1).index_select(0, index), active, index, T, R, h0, features)

    def forward_packed(
        self,
        packed: torch.Tensor | SplitInput,
        active: list[int],
        index: torch.Tensor,
        T: int,
        R: int,
        h0: torch.Tensor | None = None,
        features: bool = True,
        pad_features: bool = True,
    ) -> AgentOutput:
        """The same on inputs already packed ([P, input_dim], the rows inside their episode step
        after step, ``index`` = ``packed_index(active, R)``, ``active`` from ``check_active``):
        learners that build their inputs once for several networks skip the gather. With
        ``pad_features=False`` hidden and embedding stay packed ([P, H]), for statistics that need
        no layout: a padded copy of each is [T, R, H] of memory through the update. ``packed`` as
        a :class:`SplitInput` spares the input gradient of its fixed columns."""
        if isinstance(packed, SplitInput):
            embedding = F.relu(_LinearOnSplitInput.apply(*packed, self.fc1.weight, self.fc1.bias))
        else:
            embedding = F.relu(self.fc1(packed))
        h0 = embedding.new_zeros(R, self.hidden_dim) if h0 is None else h0
        hidden = gru_packed(F.linear(embedding, self.rnn.weight_ih_l0, self.rnn.bias_ih_l0), h0, self.rnn, active)
        q = self.fc2(hidden)

        def padded(x: torch.Tensor) -> torch.Tensor:  # packed [P, D] -> [T, R, D], zeros elsewhere
            return x.new_zeros(T * R, x.shape[1]).index_copy(0, index, x).view(T, R, -1)

        if not features:
            return AgentOutput(padded(q), None, None)
        if not pad_features:
            return AgentOutput(padded(q), hidden, embedding)
        return AgentOutput(padded(q), padded(hidden), padded(embedding))


class QMixer(nn.Module):
    """QMIX's monotonic mixer: Q_tot = f(Q_1..Q_N; s), with non-negative weights produced from the
    global state by hypernetworks (abs), so dQ_tot/dQ_i >= 0 (IGM holds)."""

    def __init__(
        self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_embed: int = 64, hypernet_layers: int = 2
    ):
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim

        def hyper(out_dim: int) -> nn.Module:
            if hypernet_layers == 1:
                return nn.Linear(state_dim, out_dim)
            if hypernet_layers == 2:
                return nn.Sequential(
                    nn.Linear(state_dim, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, out_dim)
                )
            raise ValueError(f"hypernet_layers must be 1 or 2, got {hypernet_layers}")

        self.hyper_w1 = hyper(embed_dim * n_agents)
        self.hyper_w_final = hyper(embed_dim)
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.hyper_v = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """agent_qs [..., N], states [..., S] -> Q_tot [...]."""
        lead = agent_qs.shape[:-1]
        qs = agent_qs.reshape(-1, 1, self.n_agents)
        s = states.reshape(qs.shape[0], -1)
        w1 = self.hyper_w1(s).abs().view(-1, self.n_agents, self.embed_dim)
        b1 = self.hyper_b1(s).view(-1, 1, self.embed_dim)
        hidden = F.elu(torch.bmm(qs, w1) + b1)  # [M, 1, E]
        w_final = self.hyper_w_final(s).abs().view(-1, self.embed_dim, 1)
        q_tot = torch.bmm(hidden, w_final).view(-1) + self.hyper_v(s).view(-1)
        return q_tot.view(lead)


class VDNMixer(nn.Module):
    """VDN: Q_tot = sum_i Q_i (the state is ignored)."""

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        return agent_qs.sum(-1)


def build_agent_inputs(
    obs: torch.Tensor, last_actions: torch.Tensor, n_actions: int, last_action: bool = True, agent_id: bool = True
) -> torch.Tensor:
    """PyMARL agent inputs: own observation ++ one-hot last action ++ one-hot agent id.

    obs [..., N, O] float; last_actions [..., N] long, where -1 means "no previous action"
    (episode start) and encodes as all zeros. Returns [..., N, O (+A) (+N)].
    """
    parts = [obs]
    if last_action:
        onehot = F.one_hot(last_actions.clamp(min=0), n_actions).to(obs.dtype)
        parts.append(onehot * (last_actions >= 0).unsqueeze(-1).to(obs.dtype))
    if agent_id:
        n_agents = obs.shape[-2]
        eye = torch.eye(n_agents, dtype=obs.dtype, device=obs.device)
        parts.append(eye.expand(*obs.shape[:-2], n_agents, n_agents))
    return torch.cat(parts, dim=-1)


def agent_input_dim(
    obs_dim: int, n_agents: int, n_actions: int, last_action: bool = True, agent_id: bool = True
) -> int:
    return obs_dim + (n_actions if last_action else 0) + (n_agents if agent_id else 0)
