"""Weighted QMIX (Rashid et al., 2020): OW-QMIX and CW-QMIX.

Besides QMIX's monotonic Q_tot, an unrestricted central value Q* is learned: a central recurrent
agent network (same inputs as the QMIX agent) gives per-agent, per-action embeddings, and a
feed-forward mixer over (the chosen actions' embeddings, state) gives Q*. Both are trained towards
the same target, computed by the *target* Q* at the joint action that is greedy for the QMIX agents
(double-Q style: QMIX's argmax is cheap and decentralised, Q* evaluates it):

    y = r + gamma * Q*_target(s', argmax_u' Q_agents(s', u'))        (TD(lambda) when configured)
    loss = central_loss * mean (Q*(s,u) - y)^2 + qmix_loss * mean w(s,u) (Q_tot(s,u) - y)^2

with w = 1 where the weighting condition holds and w = alpha (config ``w``) elsewhere:

* OW-QMIX (optimistic, ``hysteretic_qmix=True``): Q_tot(s,u) < y;
* CW-QMIX (central, ``hysteretic_qmix=False``): u is the current greedy joint action u_hat, or
  y > Q*_target(s, u_hat) (paper eq. and reference code). ``cw_compare="qtot"`` uses y > Q_tot(s,u)
  instead (a looser reading of the paper's text); the default follows the paper.

Field names and defaults follow the reference configs (oxwhirl/wqmix ``cw_qmix.yaml``/``ow_qmix``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from marl.config import ConfigError
from marl.value.config import Mixer, ValueLearnerConfig
from marl.value.controller import masked_q
from marl.value.networks import RecurrentAgent, agent_input_dim
from marl.value.learner import QLearner, mix_where, observed

KIND = "value"


@dataclass
class WQMixConfig(ValueLearnerConfig):
    mixer: Mixer = "qmix"  # the restricted (monotonic) Q_tot; "vdn" gives the WQMIX-VDN variant
    w: float = 0.1  # alpha in the paper: weight of transitions failing the condition
    hysteretic_qmix: bool = True  # True -> OW-QMIX, False -> CW-QMIX (reference name)
    # CW's "target above the best joint action's value" test: "central" = y > Q*_target(s, u_hat)
    # (paper, reference); "qtot" = y > Q_tot(s, u) (the looser reading).
    cw_compare: Literal["central", "qtot"] = "central"
    central_loss: float = 1.0  # coefficient of the Q* TD loss (reference: always 1)
    qmix_loss: float = 1.0  # coefficient of the weighted Q_tot loss (reference: always 1)
    central_mixing_embed_dim: int = 256  # width of the feed-forward central mixer
    central_action_embed: int = 1  # per-agent per-action output size of the central agent
    central_rnn_hidden_dim: int = 64  # GRU width of the central agent network


@dataclass
class OWQMixConfig(WQMixConfig):
    hysteretic_qmix: bool = True


@dataclass
class CWQMixConfig(WQMixConfig):
    hysteretic_qmix: bool = False


def configs() -> dict[str, type]:
    return {"ow_wqmix": OWQMixConfig, "cw_wqmix": CWQMixConfig}


class CentralFFMixer(nn.Module):
    """Unrestricted Q*(s, u): a 3-hidden-layer ReLU MLP over [state, agents' chosen embeddings]
    plus a state value V(s) in place of the last bias (reference ``QMixerCentralFF``)."""

    def __init__(self, n_agents: int, state_dim: int, action_embed: int = 1, embed_dim: int = 256):
        super().__init__()
        in_dim = n_agents * action_embed + state_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, embed_dim),
            nn.ReLU(),
            nn.Linear(embed_dim, embed_dim),
            nn.ReLU(),
            nn.Linear(embed_dim, embed_dim),
            nn.ReLU(),
            nn.Linear(embed_dim, 1),
        )
        self.value = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """agent_qs [..., N, E] (or [..., N] when E = 1), states [..., S] -> Q* [...]."""
        lead = states.shape[:-1]
        flat_qs = agent_qs.reshape(*lead, -1)
        return (self.net(torch.cat([states, flat_qs], dim=-1)) + self.value(states)).squeeze(-1)


def cw_weights(
    actions: torch.Tensor, greedy: torch.Tensor, y: torch.Tensor, reference_value: torch.Tensor, alpha: float
) -> torch.Tensor:
    """CW-QMIX weights [C, T]: 1 where the taken joint action (actions [C,T,N]) equals the greedy
    one (greedy [C,T,N]) or the target y exceeds ``reference_value``; alpha elsewhere."""
    is_greedy = (actions == greedy).all(-1)
    return torch.where(is_greedy | (y > reference_value), 1.0, alpha)


def ow_weights(q_tot: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """OW-QMIX weights: 1 where Q_tot underestimates the target (Q_tot < y), alpha elsewhere."""
    return torch.where(q_tot < y, 1.0, alpha)


class Learner(QLearner):
    cfg: WQMixConfig

    def build_extra_networks(self) -> None:
        cfg, spec = self.cfg, self.spec
        if cfg.cw_compare not in ("central", "qtot"):
            raise ConfigError(f"cw_compare must be 'central' or 'qtot', got {cfg.cw_compare!r}")
        in_dim = agent_input_dim(self.obs_dim, self.n_agents, self.n_actions, cfg.obs_last_action, cfg.obs_agent_id)
        self.central_agent = RecurrentAgent(
            in_dim, self.n_actions * cfg.central_action_embed, cfg.central_rnn_hidden_dim
        ).to(self.device)
        self.central_mixer = CentralFFMixer(
            spec.n_agents, self.state_dim, cfg.central_action_embed, cfg.central_mixing_embed_dim
        ).to(self.device)
        self.target_central_agent = copy.deepcopy(self.central_agent)
        self.target_central_mixer = copy.deepcopy(self.central_mixer)

    def trained_modules(self) -> list[nn.Module]:
        return [self.agent, self.mixer, self.central_agent, self.central_mixer]

    def update_targets(self) -> None:
        super().update_targets()
        self.target_central_agent.load_state_dict(self.central_agent.state_dict())
        self.target_central_mixer.load_state_dict(self.central_mixer.state_dict())

    def central_values(self, agent: RecurrentAgent, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Central agent outputs [C, T+1, N, A, E]."""
        q = self.agent_q(agent, batch)
        return q.view(*q.shape[:-1], self.n_actions, self.cfg.central_action_embed)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        mask = batch["filled"].float()
        actions, avail, state = batch["actions"], batch["avail_actions"], batch["state"]
        E = cfg.central_action_embed

        q = self.agent_q(self.agent, batch)  # [C, T+1, N, A]
        chosen = q[:, :-1].gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        central = self.central_values(self.central_agent, batch)
        central_chosen = central[:, :-1].gather(3, actions[..., None, None].expand(-1, -1, -1, 1, E)).squeeze(3)

        with torch.no_grad():
            greedy = masked_q(q.detach(), avail).argmax(-1)  # QMIX agents' greedy joint action [C, T+1, N]
            central_target = self.central_values(self.target_central_agent, batch)
            central_greedy = central_target.gather(3, greedy[..., None, None].expand(-1, -1, -1, 1, E)).squeeze(3)
            # Q*_target(s_t, u_hat_t) [C, T+1]
            target_star = mix_where(self.target_central_mixer, central_greedy, state, observed(batch["filled"]))
            y = self.targets(batch, target_star)

        q_tot = mix_where(self.mixer, chosen, state[:, :-1], batch["filled"])
        q_star = mix_where(self.central_mixer, central_chosen, state[:, :-1], batch["filled"])
        n = mask.sum()
        central_loss = ((q_star - y) * mask).pow(2).sum() / n

        with torch.no_grad():
            if cfg.hysteretic_qmix:
                weights = ow_weights(q_tot, y, cfg.w)
            else:
                reference = target_star[:, :-1] if cfg.cw_compare == "central" else q_tot
                weights = cw_weights(actions, greedy[:, :-1], y, reference, cfg.w)
        td = (q_tot - y) * mask
        qmix_loss = (weights * td.pow(2)).sum() / n
        loss = cfg.qmix_loss * qmix_loss + cfg.central_loss * central_loss
        return loss, {
            "loss": float(loss.detach()),
            "qmix_loss": float(qmix_loss.detach()),
            "central_loss": float(central_loss.detach()),
            "td_error_abs": float(td.detach().abs().sum() / n),
            "q_taken_mean": float((q_tot.detach() * mask).sum() / n),
            "target_mean": float((y * mask).sum() / n),
            "w_mean": float((weights * mask).sum() / n),
        }
