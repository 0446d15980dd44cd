"""The TD machinery shared by every value-decomposition learner (PyMARL's QLearner).

A learner owns its networks, target networks and optimizer, exposes the ``controller`` that acts,
and implements ``train_step(batch, episode)``. QMIX and VDN use ``QLearner`` as is (they differ only
in the mixer); WQMIX and DDN subclass it and override ``compute_loss``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from envs.base import EnvSpec
from marl.config import ConfigError
from marl.value.config import ValueLearnerConfig
from marl.value.controller import AgentController, masked_q
from marl.value.fast_gru import check_active, packed_index
from marl.value.networks import QMixer, RecurrentAgent, VDNMixer, agent_input_dim


def td_lambda_targets(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    mask: torch.Tensor,
    target_q: torch.Tensor,
    gamma: float,
    td_lambda: float,
) -> torch.Tensor:
    """TD(lambda) targets for every step of a batch of padded episodes.

    reward, terminated, mask [C, T]; target_q [C, T+1] = Q_tot^target at each observation (index
    L is the observation after the last step of an episode of length L). Recursion, backwards:

        G_t = r_t + gamma (1 - term_t) [ (1 - lambda) Q_{t+1} + lambda G_{t+1} ]   for real steps,
        G_t = Q_t                                                                for padding,

    so the last real step bootstraps from Q at the final observation (unless terminal), and
    lambda = 0 gives the one-step target r_t + gamma (1 - term_t) Q_{t+1}.
    """
    T = reward.shape[1]
    not_term = 1.0 - terminated.float()
    if td_lambda == 0.0:
        # One-step targets need no recursion: the same expression at every step at once (the
        # loop's (1 - 0) Q + 0 G terms are exact, so the values are bitwise those of the loop).
        one_step = reward + gamma * not_term * target_q[:, 1:]
        return torch.where(mask, one_step, target_q[:, :T])
    returns = torch.empty_like(reward)
    g_next = target_q[:, T]
    for t in range(T - 1, -1, -1):
        g = reward[:, t] + gamma * not_term[:, t] * ((1.0 - td_lambda) * target_q[:, t + 1] + td_lambda * g_next)
        g = torch.where(mask[:, t], g, target_q[:, t])
        returns[:, t] = g
        g_next = g
    return returns


@torch.no_grad()
def td_stats(
    loss: torch.Tensor, td: torch.Tensor, q_tot: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Logged training statistics (PyMARL's names), averaged over real steps."""
    loss, td, q_tot = loss.detach(), td.detach(), q_tot.detach()
    n = mask.sum()
    return {
        "loss": float(loss),
        "td_error_abs": float(td.abs().sum() / n),
        "q_taken_mean": float((q_tot * mask).sum() / n),
        "target_mean": float((y * mask).sum() / n),
    }


def make_mixer(cfg: ValueLearnerConfig, spec: EnvSpec) -> nn.Module:
    state_dim = int(torch.tensor(spec.state_shape).prod())
    if cfg.mixer == "qmix":
        return QMixer(spec.n_agents, state_dim, cfg.mixing_embed_dim, cfg.hypernet_embed, cfg.hypernet_layers)
    if cfg.mixer == "vdn":
        return VDNMixer()
    raise ConfigError(f"unknown mixer {cfg.mixer!r}; valid: qmix, vdn")


def make_optimizer(cfg: ValueLearnerConfig, params: list[nn.Parameter] | list[dict[str, Any]]) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.optim_alpha, eps=cfg.optim_eps)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; valid: rmsprop, adam")


def mix_where(mixer: nn.Module, agent_values: torch.Tensor, states: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """``mixer(agent_values, states)`` at the positions where ``where`` ([C, T] bool) holds, zero
    elsewhere: padding beyond an episode's end never goes through the mixer's hypernetworks.
    agent_values [C, T, N, ...], states [C, T, S]."""
    out = agent_values.new_zeros(where.shape)
    out[where] = mixer(agent_values[where], states[where])
    return out


def observed(filled: torch.Tensor) -> torch.Tensor:
    """[C, T] real steps -> [C, T+1] observation indices inside an episode (t <= length)."""
    return torch.cat([torch.ones_like(filled[:, :1]), filled], dim=1)


def active_rows(filled: torch.Tensor, n_agents: int) -> list[int] | None:
    """Per observation index t (0..T), how many leading agent rows (episode-major, N per episode)
    are still inside their episode, i.e. t <= length. None when episodes are not sorted longest
    first (then every row is computed)."""
    lengths = filled.sum(1)
    if bool((lengths[1:] > lengths[:-1]).any()):
        return None
    steps = torch.arange(filled.shape[1] + 1, device=filled.device)
    return ((lengths.unsqueeze(1) >= steps).sum(0) * n_agents).tolist()


def previous_actions(actions: torch.Tensor) -> torch.Tensor:
    """[C, T, N] actions -> [C, T+1, N] 'last action' inputs (-1 = none at the episode start)."""
    first = torch.full_like(actions[:, :1], -1)
    return torch.cat([first, actions], dim=1)


class QLearner:
    """Q-learning with a mixer over a shared recurrent agent: QMIX (mixer='qmix'), VDN ('vdn')."""

    def __init__(self, cfg: ValueLearnerConfig, spec: EnvSpec, device: torch.device | str = "cpu"):
        self.cfg, self.spec, self.device = cfg, spec, torch.device(device)
        self.n_agents, self.n_actions = spec.n_agents, spec.n_actions
        self.obs_dim = int(torch.tensor(spec.obs_shape).prod())
        self.state_dim = int(torch.tensor(spec.state_shape).prod())
        in_dim = agent_input_dim(self.obs_dim, self.n_agents, self.n_actions, cfg.obs_last_action, cfg.obs_agent_id)
        self.agent = RecurrentAgent(in_dim, self.n_actions, cfg.hidden_dim).to(self.device)
        self.mixer = make_mixer(cfg, spec).to(self.device)
        self.build_extra_networks()
        self.target_agent = copy.deepcopy(self.agent)
        self.target_mixer = copy.deepcopy(self.mixer)
        self.params = [p for m in self.trained_modules() for p in m.parameters()]
        self.optimizer = make_optimizer(cfg, self.optimizer_params())
        # `controller` is the policy that is evaluated (and deployed); `behaviour_controller` the one
        # that collects training data (the same, except for DDN with a teacher acting).
        self.controller = AgentController(
            self.acting_agent(), self.n_agents, self.n_actions, cfg.obs_last_action, cfg.obs_agent_id
        )
        self.behaviour_controller = self.make_behaviour_controller()
        self.last_target_update_episode = 0
        self.updates = 0

    # Hooks for subclasses ---------------------------------------------------------------------

    def build_extra_networks(self) -> None:
        """Create networks beyond the agent and the mixer (WQMIX's central Q, DDN's student ...)."""

    def optimizer_params(self) -> list[nn.Parameter] | list[dict[str, Any]]:
        """What the optimizer trains: ``self.params`` at ``cfg.lr``, or parameter groups with
        their own learning rates (a subclass's choice)."""
        return self.params

    def trained_modules(self) -> list[nn.Module]:
        return [self.agent, self.mixer]

    def acting_agent(self) -> RecurrentAgent:
        """The network that acts (and is evaluated): the agent here, DDN's student there."""
        return self.agent

    def make_behaviour_controller(self) -> AgentController:
        """The controller that collects experience (default: the evaluated one)."""
        return self.controller

    def update_targets(self) -> None:
        self.target_agent.load_state_dict(self.agent.state_dict())
        self.target_mixer.load_state_dict(self.mixer.state_dict())

    # Shared computations ----------------------------------------------------------------------

    def agent_q(self, agent: RecurrentAgent, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run ``agent`` over whole episodes: Q-values [C, T+1, N, A] (a view of time-major
        storage; zeros after an episode's end)."""
        obs = batch["obs"]
        C, T1, N = obs.shape[:3]
        # Build the inputs directly in time-major order: the concatenation is the only copy.
        inputs = self.controller.inputs(
            obs.reshape(C, T1, N, -1).transpose(0, 1), previous_actions(batch["actions"]).transpose(0, 1)
        )
        out = agent(inputs.reshape(T1, C * N, -1), active=active_rows(batch["filled"], N), features=False)
        return out.q.view(T1, C, N, -1).transpose(0, 1)

    def agent_q_pair(
        self, agent: RecurrentAgent, target: RecurrentAgent, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``agent_q`` of the online agent (with gradient) and of its target (without), sharing
        one construction of the inputs: on a batch sorted longest first (as the buffer samples),
        the inputs are built for the rows inside their episodes only, once for both networks."""
        obs, filled = batch["obs"], batch["filled"]
        C, T1, N = obs.shape[:3]
        active = active_rows(filled, N)
        if active is None:  # unsorted batch: the padded path, one network at a time
            q = self.agent_q(agent, batch)
            with torch.no_grad():
                return q, self.agent_q(target, batch)
        R = C * N
        active = check_active(active, T1, R)
        index = packed_index(active, R, obs.device)
        valid = observed(filled).t()  # [T+1, C]; a prefix of the episodes at each step
        packed = self.controller.inputs(
            obs.reshape(C, T1, N, -1).transpose(0, 1)[valid], previous_actions(batch["actions"]).transpose(0, 1)[valid]
        )
        packed = packed.reshape(index.shape[0], -1)

        def q_of(net: RecurrentAgent) -> torch.Tensor:
            return net.forward_packed(packed, active, index, T1, R, features=False).q.view(T1, C, N, -1).transpose(0, 1)

        q = q_of(agent)
        with torch.no_grad():
            return q, q_of(target)

    def greedy_target_values(self, q_online: torch.Tensor, q_target: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        """Per-agent bootstrap values [C, T+1, N]: double-Q (target net evaluates the online net's
        greedy available action) or the plain max of the target net."""
        if self.cfg.double_q:
            greedy = masked_q(q_online.detach(), avail).argmax(-1, keepdim=True)
            return q_target.gather(-1, greedy).squeeze(-1)
        return masked_q(q_target, avail).max(-1).values

    def targets(self, batch: dict[str, torch.Tensor], target_tot: torch.Tensor) -> torch.Tensor:
        return td_lambda_targets(
            batch["reward"], batch["terminated"], batch["filled"], target_tot, self.cfg.gamma, self.cfg.td_lambda
        )

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch["filled"].float()
        q, q_target = self.agent_q_pair(self.agent, self.target_agent, batch)
        chosen = q[:, :-1].gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            target_tot = mix_where(
                self.target_mixer,
                self.greedy_target_values(q, q_target, batch["avail_actions"]),
                batch["state"],
                observed(batch["filled"]),
            )
            y = self.targets(batch, target_tot)
        q_tot = mix_where(self.mixer, chosen, batch["state"][:, :-1], batch["filled"])
        td = (q_tot - y) * mask
        loss = td.pow(2).sum() / mask.sum()
        return loss, td_stats(loss, td, q_tot, y, mask)

    # Update -----------------------------------------------------------------------------------

    def backward(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Gradients of ``compute_loss`` into the parameters' ``.grad``; returns its statistics.
        A learner whose loss splits over disjoint parameters may do it in parts (DDN)."""
        loss, stats = self.compute_loss(batch)
        loss.backward()
        return stats

    def train_step(self, batch: dict[str, torch.Tensor], episode: int) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        stats = self.backward(batch)
        stats.update(self.clip_gradients())
        self.optimizer.step()
        self.updates += 1
        if (episode - self.last_target_update_episode) / self.cfg.target_update_interval >= 1.0:
            self.update_targets()
            self.last_target_update_episode = episode
        return stats

    def clip_gradients(self) -> dict[str, float]:
        """Clip the gradient of every trained parameter by one global norm (PyMARL); returns the
        norm before clipping (``grad_norm``) and any statistics a subclass adds."""
        return {"grad_norm": float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_norm_clip))}

    def diagnostic_controllers(self) -> dict[str, AgentController]:
        """Other policies evaluated greedily beside ``controller`` at each test (same episodes and
        seeds), logged as ``<name>_test_*`` (DDN: its teacher). None by default."""
        return {}

    # Checkpointing ----------------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose weights a checkpoint must hold (online and target)."""
        return {name: m for name, m in vars(self).items() if isinstance(m, nn.Module)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {name: m.state_dict() for name, m in self.modules().items()},
            "optimizer": self.optimizer.state_dict(),
            "last_target_update_episode": self.last_target_update_episode,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, m in self.modules().items():
            m.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.last_target_update_episode = state["last_target_update_episode"]
        self.updates = state["updates"]
