"""BiDist: Bidirectional Distillation (arXiv 2505.11100), a mixed-play framework on top of MAPPO.

Two policies with the same architecture:

* the learner theta, trained by MAPPO (marl/policy_learner.py) on its own slots only;
* the distilled policy phi, never trained by RL. Every ``distill_interval`` learner updates it takes
  a distillation round on observation sequences of the latest rollout, in one of two phases:

  - forward: minimise KL(pi_theta || pi_phi), learning rate ``forward_lr`` (eta_f): phi mimics the
    learner's history, an implicit self-play population without a store of past policies;
  - reverse: maximise a bounded divergence, learning rate ``reverse_lr`` (eta_r): phi is pushed out
    of the learner's distribution. *Choice* (methods.md): the maximised quantity is
    KL(pi_phi || pi_theta) clipped per observation at ``reverse_kl_bound``, so once phi is far
    enough from theta on an observation that observation stops pushing (no blow-up to a
    deterministic, degenerate phi).

  Phases alternate every ``phase_length`` rounds; the ablations ``forward`` / ``reverse`` switch
  either off.

Mixed play: at the start of every episode each agent slot is given to phi with probability
``fictitious_prob`` (p) by a Bernoulli mask, else to theta (at least ``min_learner_slots`` theta
slots per episode, *choice*, so every episode trains theta); ``use_mask: false`` is the ablation
without the fictitious population (plain MAPPO self-play, phi still distilled but never played).

Distillation runs phi and theta over whole rollout sequences from a zero hidden state (phi did not
play most of these steps, so no stored state of its own exists); the first ``distill_burn_in``
steps of a copy are left out of the loss unless its episode started inside the rollout (*choice*).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from envs.base import EnvSpec
from marl.config import ConfigError
from marl.policy_config import PolicyLearnerConfig
from marl.policy_learner import KIND, PolicyLearner, build_actor
from marl.policy_networks import ActInput
from marl.policy_runner import LEARNER, Episodes, Rollout
from marl.ppo import kl_categorical, masked_mean

__all__ = ["KIND", "Config", "Learner", "build_actor", "DISTILLED"]

DISTILLED = 1  # player key of phi in rollouts


@dataclass
class Config(PolicyLearnerConfig):
    # Mixed play (the fictitious population)
    use_mask: bool = True  # ablation: false = no fictitious population (all slots theta)
    fictitious_prob: float = 0.5  # p: probability that a slot is played by phi in an episode (*choice*)
    min_learner_slots: int = 1  # theta keeps at least this many slots per episode (*choice*)
    # Distillation
    forward: bool = True  # ablation switch: forward phase (minimise KL(theta || phi))
    reverse: bool = True  # ablation switch: reverse phase (maximise bounded KL(phi || theta))
    distill_interval: int = 5  # k_d: one distillation round every k_d learner updates (*choice*)
    phase_length: int = 1  # rounds per phase before switching direction (*choice*: strict alternation)
    forward_lr: float = 5e-4  # eta_f (*choice*: the learner's rate)
    reverse_lr: float = 1e-4  # eta_r (*choice*: smaller than eta_f; reverse steps are a perturbation)
    forward_steps: int = 5  # gradient steps per forward round (*choice*)
    reverse_steps: int = 1  # gradient steps per reverse round ("few steps", *choice*)
    reverse_kl_bound: float = 1.0  # per-observation clip of the maximised KL, in nats (*choice*)
    distill_burn_in: int = 10
    init_from_learner: bool = True  # phi starts as a copy of theta (*choice*)

    def validate(self) -> None:
        """Rules beyond the field types (build_config calls this, so a manifest is checked up front)."""
        if not (self.forward or self.reverse):
            raise ConfigError("bidist: at least one of 'forward' and 'reverse' must be true "
                              "(with neither, phi is never trained); for MAPPO use the 'mappo' algorithm")
        if not 0.0 <= self.fictitious_prob <= 1.0:
            raise ConfigError(f"bidist: fictitious_prob must be in [0, 1], got {self.fictitious_prob}")


def bernoulli_slots(n_envs: int, n_agents: int, p: float, min_learner: int, generator: torch.Generator) -> torch.Tensor:
    """Player keys [n_envs, n_agents]: DISTILLED with probability p per slot, else LEARNER; then, in
    copies with fewer than ``min_learner`` learner slots, randomly chosen phi slots go back to theta."""
    keys = torch.where(torch.rand(n_envs, n_agents, generator=generator) < p, DISTILLED, LEARNER)
    need = min(min_learner, n_agents)
    if need > 0:
        # Rank slots randomly; the ``need`` lowest-ranked slots are forced to the learner where short.
        rank = torch.rand(n_envs, n_agents, generator=generator).argsort(-1).argsort(-1)
        short = ((keys == LEARNER).sum(-1) < need).unsqueeze(-1)
        keys = torch.where(short & (rank < need), LEARNER, keys)
    return keys.long()


def burn_in_mask(starts: torch.Tensor, burn_in: int) -> torch.Tensor:
    """[T, B] bool: positions whose recurrent state is trustworthy when sequences are replayed from
    a zero state at t = 0: t >= burn_in, or an episode started at or before t inside the rollout."""
    T = starts.shape[0]
    seen_start = starts.long().cumsum(0) > 0
    late = (torch.arange(T, device=starts.device) >= burn_in).unsqueeze(-1)
    return seen_start | late


def reverse_objective(logits_phi: torch.Tensor, logits_theta: torch.Tensor, bound: float) -> torch.Tensor:
    """Per-row KL(pi_phi || pi_theta) clipped at ``bound`` (the quantity the reverse phase maximises)."""
    return kl_categorical(logits_phi, logits_theta).clamp(max=bound)


class Learner(PolicyLearner):
    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu"):
        cfg.validate()  # again, for configs built by hand rather than by build_config
        super().__init__(cfg, spec, device)
        self.phi = copy.deepcopy(self.actor) if cfg.init_from_learner else build_actor(cfg, spec).to(self.device)
        self.forward_opt = torch.optim.Adam(self.phi.parameters(), lr=cfg.forward_lr, eps=cfg.adam_eps)
        self.reverse_opt = torch.optim.Adam(self.phi.parameters(), lr=cfg.reverse_lr, eps=cfg.adam_eps)
        self.distill_rounds = 0

    # Players: theta and phi, by the Bernoulli mask ---------------------------------------------------

    def assign(self, n_envs: int, n_agents: int, generator: torch.Generator) -> torch.Tensor:
        if not self.cfg.use_mask:
            return super().assign(n_envs, n_agents, generator)
        return bernoulli_slots(n_envs, n_agents, self.cfg.fictitious_prob, self.cfg.min_learner_slots, generator)

    def module(self, key: int) -> nn.Module:
        return self.phi if key == DISTILLED else super().module(key)

    # Distillation -----------------------------------------------------------------------------------

    def phase(self) -> str:
        if not self.cfg.reverse:
            return "forward"
        if not self.cfg.forward:
            return "reverse"
        return "forward" if (self.distill_rounds // self.cfg.phase_length) % 2 == 0 else "reverse"

    def sequence_input(self, r: Rollout) -> tuple[ActInput, torch.Tensor, torch.Tensor]:
        """The whole rollout as [T, B*N] sequences (all slots), zero initial state, and the loss mask."""
        T, B, N = r.actions.shape
        ids = torch.arange(N, device=self.device).expand(T, B, N)
        state = r.state.unsqueeze(2).expand(T, B, N, *r.state.shape[2:])
        flat = lambda x: x.reshape(T, B * N, *x.shape[3:])  # noqa: E731
        inp = ActInput(flat(r.obs), flat(r.extra), flat(ids), flat(r.avail), flat(state))
        starts = r.starts.unsqueeze(-1).expand(T, B, N).reshape(T, B * N)
        mask = burn_in_mask(r.starts, self.cfg.distill_burn_in).unsqueeze(-1).expand(T, B, N).reshape(T, B * N)
        return inp, starts, mask

    def distill(self, r: Rollout, phase: str) -> dict[str, float]:
        """One distillation round of ``phase`` on rollout ``r``; returns the KLs before and after."""
        cfg = self.cfg
        inp, starts, mask = self.sequence_input(r)
        h0 = self.actor.initial_hidden(starts.shape[1], self.device)
        with torch.no_grad():
            theta_logits = self.actor.sequence(inp, h0, starts)["logits"]
        opt, steps = (self.forward_opt, cfg.forward_steps) if phase == "forward" else (self.reverse_opt, cfg.reverse_steps)
        before = None
        for _ in range(steps):
            phi_logits = self.phi.sequence(inp, self.phi.initial_hidden(starts.shape[1], self.device), starts)["logits"]
            if phase == "forward":
                loss = masked_mean(kl_categorical(theta_logits, phi_logits), mask)
            else:
                loss = -masked_mean(reverse_objective(phi_logits, theta_logits, cfg.reverse_kl_bound), mask)
            if before is None:
                before = self._kls(theta_logits, phi_logits.detach(), mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.phi.parameters(), cfg.max_grad_norm)
            opt.step()
        with torch.no_grad():
            phi_logits = self.phi.sequence(inp, self.phi.initial_hidden(starts.shape[1], self.device), starts)["logits"]
            after = self._kls(theta_logits, phi_logits, mask)
        return {"kl_theta_phi_before": before[0], "kl_phi_theta_before": before[1],
                "kl_theta_phi_after": after[0], "kl_phi_theta_after": after[1]}

    @staticmethod
    def _kls(theta_logits: torch.Tensor, phi_logits: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
        return (float(masked_mean(kl_categorical(theta_logits, phi_logits), mask)),
                float(masked_mean(kl_categorical(phi_logits, theta_logits), mask)))

    def after_update(self, rollout: Rollout, episodes: Episodes, generator: torch.Generator) -> dict[str, float]:
        stats: dict[str, float] = {"fictitious_fraction": float((rollout.policy == DISTILLED).float().mean())}
        if self.updates == 0 or self.updates % self.cfg.distill_interval:
            return stats
        phase = self.phase()
        kls = self.distill(rollout, phase)
        self.distill_rounds += 1
        stats.update({f"{phase}_{k}": v for k, v in kls.items()})  # e.g. forward_kl_theta_phi_after
        stats["distill_phase_reverse"] = float(phase == "reverse")
        return stats

    # Checkpoints ------------------------------------------------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        return {"phi": self.phi.state_dict(), "forward_opt": self.forward_opt.state_dict(),
                "reverse_opt": self.reverse_opt.state_dict(), "distill_rounds": self.distill_rounds}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.phi.load_state_dict(state["phi"])
        self.forward_opt.load_state_dict(state["forward_opt"])
        self.reverse_opt.load_state_dict(state["reverse_opt"])
        self.distill_rounds = int(state["distill_rounds"])
