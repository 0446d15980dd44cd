"""BiDist: Bidirectional Distillation (arXiv 2505.11100), a mixed-play framework on top of MAPPO.

Two policies with the same architecture:

* the learner theta, trained by MAPPO (marl/policy/learner.py) on its own slots only;
* the distilled policy phi, never trained by RL. Every ``distill_interval`` (k_d) learner updates it
  takes one distillation round on the observation sequences of the latest rollout (all slots), in
  one of two phases (docs/bidist.md has the derivations and the measured sizes of both):

  - forward (``forward_steps`` Adam steps, rate eta_f = ``forward_lr`` decayed linearly to 0 over the
    round so that the last steps settle on the target): minimise KL(target || pi_phi)
    with target = w * pi_phi_before + (1 - w) * pi_theta, w = ``forward_history_weight``, phi_before
    frozen at the start of the round. Round after round phi is the exponentially weighted average
    of the learner's past policies (weight (1 - w) w^j for the theta of j forward rounds ago): the
    seed's "mimics historical policies ... without explicit storage of past policies". w = 0 makes
    phi a copy of the latest theta;
  - reverse (eta_r = ``reverse_lr``, at most ``reverse_steps`` Adam steps): maximise
    KL(pi_phi || pi_theta), each observation's term clipped at ``reverse_kl_bound`` nats, and stop
    as soon as the mean KL has risen ``reverse_kl_push`` nats above its value at the start of the
    round: a bounded push of phi out of the learner's distribution. Where phi is (nearly) theta the
    exact gradient of any divergence vanishes, so while the mean KL is below ``reverse_start_kl`` a
    step ascends the single-sample score-function estimate of the same gradient instead
    (``reverse_start: sampled_score``): with a ~ pi_phi drawn per observation,
    grad KL = E[grad log pi_phi(a) (log pi_phi(a) - log pi_theta(a) + 1)], whose sample is non-zero
    at phi = theta although its mean is zero there.

  Each round runs a fresh Adam (a round is a short optimisation of its own objective; the two
  objectives' gradients differ by orders of magnitude, so shared moment estimates would mis-scale
  the steps), gradients clipped at the learner's ``max_grad_norm``. ``schedule`` alternates the
  phases every ``phase_length`` rounds, forward first; ``forward`` / ``reverse`` are the
  single-phase ablations.

Mixed play: at the start of every episode each agent slot is given to phi with probability
``fictitious_prob`` (p) by an independent Bernoulli draw, else to theta, so theta plays a share 1 - p
of the slots. ``min_learner_slots`` > 0 forces that many theta slots per copy (then theta's share is
larger than 1 - p: 0.625 for p = 0.5 with 2 players and 1 forced slot). ``use_mask: false`` is the
ablation without the fictitious population (plain MAPPO self-play; phi still distilled, never played).

Distillation runs phi and theta over whole rollout sequences from a zero hidden state (phi did not
play most of these steps, so no stored state of its own exists); the first ``distill_burn_in``
steps of a copy are left out of the loss unless its episode started inside the rollout (*choice*).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from envs.base import EnvSpec
from marl.config import ConfigError
from marl.policy.config import PolicyLearnerConfig
from marl.policy.learner import KIND, PolicyLearner, build_actor
from marl.policy.networks import ActInput
from marl.policy.runner import LEARNER, Episodes, Rollout
from marl.policy.ppo import kl_categorical, masked_mean

__all__ = ["KIND", "Config", "Learner", "build_actor", "DISTILLED"]

DISTILLED = 1  # player key of phi in rollouts


@dataclass
class Config(PolicyLearnerConfig):
    # Mixed play (the fictitious population)
    use_mask: bool = True  # ablation: false = no fictitious population (all slots theta)
    fictitious_prob: float = (
        0.5  # p, P(slot played by phi) per episode (*choice*: the seed names p, gives no value; an even split)
    )
    min_learner_slots: int = (
        0  # theta slots forced per copy (*choice*: 0 = the seed's plain Bernoulli mask, theta's share exactly 1 - p)
    )
    # Distillation schedule
    schedule: Literal["alternate", "forward", "reverse"] = (
        "alternate"  # *choice*: the seed alternates the phases; forward / reverse = its single-phase ablations
    )
    distill_interval: int = (
        5  # k_d, learner updates per distillation round (*choice*: the seed names k_d, gives no value)
    )
    phase_length: int = 1  # rounds per phase before switching direction (*choice*: strict alternation)
    # Forward phase: phi <- mixture of its own past and the latest theta
    forward_lr: float = 2e-3  # eta_f, decayed linearly to 0 over a round (*choice*: closest to the target in a probe of 1e-3..3e-3, docs/bidist.md)
    forward_steps: int = (
        20  # Adam steps per forward round (*choice*: 10 cannot follow a large move of theta's weights, docs/bidist.md)
    )
    forward_history_weight: float = 0.5  # w, weight of phi's own past in the forward target (*choice*: phi averages theta over ~2 forward rounds; 0 = latest theta)
    # Reverse phase: a bounded push of phi away from theta
    reverse_lr: float = 1e-2  # eta_r (*choice*: the push, not the rate, bounds a round; 1e-2 reaches it in 1-6 steps, an overshoot is cut back)
    reverse_steps: int = (
        10  # most Adam steps per reverse round (*choice*: "few steps"; the round stops earlier at the push)
    )
    reverse_kl_push: float = 0.25  # nats the mean KL(phi || theta) may rise per reverse round (*choice*: the order of theta's own movement over k_d updates, 0.01-0.5 nats; docs/bidist.md)
    reverse_kl_bound: float = 1.0  # per-observation clip of the maximised KL(phi || theta), in nats (*choice*: no push beyond it, no degenerate phi)
    reverse_start: Literal["sampled_score", "exact"] = (
        "sampled_score"  # *choice*: below reverse_start_kl ascend the sampled score-function gradient (exact vanishes at phi = theta)
    )
    reverse_start_kl: float = (
        1e-3  # mean KL below which the sampled start is used (*choice*: far below any push, above float noise)
    )
    distill_burn_in: int = 10  # first steps of a copy replayed from a zero state left out of the loss unless its episode starts inside (*choice*)
    init_from_learner: bool = True  # phi starts as a copy of theta (*choice*)

    def validate(self) -> None:
        """Rules beyond the field types (build_config calls this, so a manifest is checked up front)."""
        if not 0.0 <= self.fictitious_prob <= 1.0:
            raise ConfigError(f"bidist: fictitious_prob must be in [0, 1], got {self.fictitious_prob}")
        if not 0.0 <= self.forward_history_weight < 1.0:
            raise ConfigError(
                "bidist: forward_history_weight must be in [0, 1) (1 would never move phi towards theta), "
                f"got {self.forward_history_weight}"
            )
        for name in ("distill_interval", "phase_length", "forward_steps", "reverse_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"bidist: {name} must be at least 1, got {getattr(self, name)}")
        for name in ("reverse_kl_push", "reverse_kl_bound", "forward_lr", "reverse_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"bidist: {name} must be positive, got {getattr(self, name)}")
        if self.min_learner_slots < 0:
            raise ConfigError(f"bidist: min_learner_slots must be >= 0, got {self.min_learner_slots}")


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


def sample_actions(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One action per row drawn from softmax(logits) ([..., A] -> [...] long)."""
    probs = F.softmax(logits.detach(), -1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return flat.view(probs.shape[:-1])


def sampled_score_objective(
    logits_phi: torch.Tensor, logits_theta: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """Per-row surrogate whose gradient is the score-function estimate of grad KL(pi_phi || pi_theta)
    at the sampled ``actions`` (a ~ pi_phi): log pi_phi(a) * sg(log pi_phi(a) - log pi_theta(a) + 1).
    Its expectation over a is the exact gradient; a sample is non-zero even at phi = theta."""
    a = actions.unsqueeze(-1)
    lp = F.log_softmax(logits_phi, -1).gather(-1, a).squeeze(-1)
    lq = F.log_softmax(logits_theta, -1).gather(-1, a).squeeze(-1)
    return lp * (lp.detach() - lq + 1.0)


def forward_target(logits_theta: torch.Tensor, logits_phi_before: torch.Tensor, history_weight: float) -> torch.Tensor:
    """Log-probabilities of the forward target w * pi_phi_before + (1 - w) * pi_theta (w = 0: theta's)."""
    logp_theta = F.log_softmax(logits_theta, -1)
    if history_weight == 0.0:
        return logp_theta
    return torch.logaddexp(
        logp_theta + math.log1p(-history_weight), F.log_softmax(logits_phi_before, -1) + math.log(history_weight)
    )


class Learner(PolicyLearner):
    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu"):
        cfg.validate()  # again, for configs built by hand rather than by build_config
        super().__init__(cfg, spec, device)
        self.phi = copy.deepcopy(self.actor) if cfg.init_from_learner else build_actor(cfg, spec).to(self.device)
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
        if self.cfg.schedule != "alternate":
            return self.cfg.schedule
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

    def _phi_logits(self, inp: ActInput, starts: torch.Tensor) -> torch.Tensor:
        return self.phi.sequence(inp, self.phi.initial_hidden(starts.shape[1], self.device), starts)["logits"]

    def distill(self, r: Rollout, phase: str, generator: torch.Generator | None = None) -> dict[str, float]:
        """One distillation round of ``phase`` on rollout ``r``; returns the KLs before and after, the
        steps taken and (reverse) whether the push was reached. ``generator`` draws the sampled start."""
        cfg = self.cfg
        inp, starts, mask = self.sequence_input(r)
        h0 = self.actor.initial_hidden(starts.shape[1], self.device)
        with torch.no_grad():
            theta_logits = self.actor.sequence(inp, h0, starts)["logits"]
        forward = phase == "forward"
        opt = torch.optim.Adam(
            self.phi.parameters(), lr=cfg.forward_lr if forward else cfg.reverse_lr, eps=cfg.adam_eps
        )
        max_steps = cfg.forward_steps if forward else cfg.reverse_steps
        target = actions = previous = None
        before: tuple[float, float] = (0.0, 0.0)
        steps, reached, sampled = 0, 0.0, 0
        for i in range(max_steps + (0 if forward else 1)):  # reverse: one more pass checks the last step
            phi_logits = self._phi_logits(inp, starts)
            if i == 0:
                before = self._kls(theta_logits, phi_logits.detach(), mask)
                if forward:
                    target = forward_target(theta_logits, phi_logits.detach(), cfg.forward_history_weight)
            if forward:
                loss = masked_mean(kl_categorical(target, phi_logits), mask)
            else:
                kl_now = float(masked_mean(kl_categorical(phi_logits.detach(), theta_logits), mask))
                goal = before[1] + cfg.reverse_kl_push
                if kl_now >= goal:  # the push is done; a step that overshot is cut back to the goal
                    reached = 1.0
                    if previous is not None:
                        self._cut_back(previous, inp, starts, theta_logits, mask, goal)
                    break
                if i == max_steps:
                    break
                if cfg.reverse_start == "sampled_score" and kl_now < cfg.reverse_start_kl:
                    if actions is None:  # drawn once per round: every sampled step pushes the same way
                        actions = sample_actions(phi_logits, generator)
                    loss = -masked_mean(sampled_score_objective(phi_logits, theta_logits, actions), mask)
                    sampled += 1
                else:
                    loss = -masked_mean(reverse_objective(phi_logits, theta_logits, cfg.reverse_kl_bound), mask)
                previous = [p.detach().clone() for p in self.phi.parameters()]
            if forward:  # linear decay to zero over the round: the last steps settle on the target
                opt.param_groups[0]["lr"] = cfg.forward_lr * (1.0 - i / max_steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.phi.parameters(), cfg.max_grad_norm)
            opt.step()
            steps += 1
        with torch.no_grad():
            after = self._kls(theta_logits, self._phi_logits(inp, starts), mask)
        out = {
            "kl_theta_phi_before": before[0],
            "kl_phi_theta_before": before[1],
            "kl_theta_phi_after": after[0],
            "kl_phi_theta_after": after[1],
            "steps": float(steps),
        }
        if not forward:
            out.update({"push_reached": reached, "sampled_steps": float(sampled)})
        return out

    @torch.no_grad()
    def _cut_back(
        self,
        previous: list[torch.Tensor],
        inp: ActInput,
        starts: torch.Tensor,
        theta_logits: torch.Tensor,
        mask: torch.Tensor,
        goal: float,
        halvings: int = 8,
    ) -> None:
        """phi's last step overshot ``goal`` (mean KL(phi || theta)): move phi back along the segment
        from ``previous`` (below the goal) to the largest tried fraction of the step that stays at or
        below it (bisection, ``halvings`` forward passes)."""
        params = list(self.phi.parameters())
        stepped = [p.detach().clone() for p in params]
        lo, hi = 0.0, 1.0
        for _ in range(halvings):
            mid = 0.5 * (lo + hi)
            for p, a, b in zip(params, previous, stepped):
                p.copy_(a + mid * (b - a))
            kl = float(masked_mean(kl_categorical(self._phi_logits(inp, starts), theta_logits), mask))
            lo, hi = (mid, hi) if kl <= goal else (lo, mid)
        for p, a, b in zip(params, previous, stepped):
            p.copy_(a + lo * (b - a))

    @staticmethod
    def _kls(theta_logits: torch.Tensor, phi_logits: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
        return (
            float(masked_mean(kl_categorical(theta_logits, phi_logits), mask)),
            float(masked_mean(kl_categorical(phi_logits, theta_logits), mask)),
        )

    def after_update(self, rollout: Rollout, episodes: Episodes, generator: torch.Generator) -> dict[str, float]:
        stats: dict[str, float] = {"fictitious_fraction": float((rollout.policy == DISTILLED).float().mean())}
        if self.updates == 0 or self.updates % self.cfg.distill_interval:
            return stats
        phase = self.phase()
        kls = self.distill(rollout, phase, generator)
        self.distill_rounds += 1
        stats.update({f"{phase}_{k}": v for k, v in kls.items()})  # e.g. forward_kl_theta_phi_after
        stats["distill_phase_reverse"] = float(phase == "reverse")
        return stats

    # Checkpoints ------------------------------------------------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        return {"phi": self.phi.state_dict(), "distill_rounds": self.distill_rounds}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        # Checkpoints of earlier versions also hold per-phase optimiser states; rounds now start a fresh Adam.
        self.phi.load_state_dict(state["phi"])
        self.distill_rounds = int(state["distill_rounds"])
