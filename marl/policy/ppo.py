"""PPO's pieces as MAPPO uses them: GAE over auto-reset rollouts, value normalisation, the clipped
surrogate, the clipped Huber value loss, and masked means (only the learner's own slots train it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    last_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    final_values: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a rollout of T steps with auto-reset.

    rewards, values, final_values: [T, ...]; last_values: [...] (the value of the observation after
    the rollout's last step); terminated, truncated: [T, ...] broadcastable to rewards (step t ended
    its episode). At a terminated step nothing is bootstrapped; at a truncated step the bootstrap is
    ``final_values[t]``, the value of the episode's last observation (the next entry of ``values``
    belongs to the next episode). Returns (advantages, returns), both [T, ...].
    """
    T = rewards.shape[0]
    terminated = terminated.to(rewards.dtype).expand_as(rewards)
    truncated = truncated.to(rewards.dtype).expand_as(rewards)
    ended = (terminated + truncated).clamp(max=1.0)
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(last_values)
    next_value = last_values
    for t in reversed(range(T)):
        bootstrap = torch.where(ended[t] > 0, final_values[t] * truncated[t], next_value)
        delta = rewards[t] + gamma * bootstrap - values[t]
        next_adv = delta + gamma * lam * (1.0 - ended[t]) * next_adv
        advantages[t] = next_adv
        next_value = values[t]
    return advantages, advantages + values


def vtrace(
    rewards: torch.Tensor,
    values: torch.Tensor,
    last_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    final_values: torch.Tensor,
    gamma: float,
    rho: torch.Tensor,
    c: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace (Espeholt et al., IMPALA 2018) over an auto-reset rollout, with :func:`gae`'s
    conventions for termination, truncation and the tail.

    ``rho`` and ``c`` [T, ...] are the truncated importance ratios of the target policy over the
    behaviour policy (``c`` already scaled by lambda, if any). Returns (targets v_s, policy-gradient
    advantages rho_s (r_s + gamma v_{s+1} - V(x_s))), both [T, ...], where
    v_s = V(x_s) + rho_s delta_s + gamma c_s (v_{s+1} - V(x_{s+1})), v after an episode's end is the
    bootstrap of :func:`gae` (0 when terminated, ``final_values`` when truncated) and v_T = ``last_values``.
    With rho = 1 and c = lambda the targets are GAE(lambda)'s returns.
    """
    T = rewards.shape[0]
    terminated = terminated.to(rewards.dtype).expand_as(rewards)
    truncated = truncated.to(rewards.dtype).expand_as(rewards)
    ended = (terminated + truncated).clamp(max=1.0)
    targets = torch.zeros_like(rewards)
    pg_adv = torch.zeros_like(rewards)
    acc = torch.zeros_like(last_values)
    next_value, next_target = last_values, last_values
    for t in reversed(range(T)):
        end_value = final_values[t] * truncated[t]
        bootstrap = torch.where(ended[t] > 0, end_value, next_value)
        bootstrap_target = torch.where(ended[t] > 0, end_value, next_target)
        delta = rewards[t] + gamma * bootstrap - values[t]
        acc = rho[t] * delta + gamma * c[t] * (1.0 - ended[t]) * acc
        targets[t] = values[t] + acc
        pg_adv[t] = rho[t] * (rewards[t] + gamma * bootstrap_target - values[t])
        next_value, next_target = values[t], targets[t]
    return targets, pg_adv


class ValueNorm(nn.Module):
    """MAPPO's ValueNorm: running, debiased mean and mean-of-squares of the value targets (decay
    ``beta``); the critic predicts normalised values."""

    def __init__(self, beta: float = 0.99999, epsilon: float = 1e-5, var_floor: float = 1e-2):
        super().__init__()
        self.beta, self.epsilon, self.var_floor = beta, epsilon, var_floor
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_mean_sq", torch.zeros(()))
        self.register_buffer("debiasing_term", torch.zeros(()))

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        debias = self.debiasing_term.clamp(min=self.epsilon)
        mean = self.running_mean / debias
        mean_sq = self.running_mean_sq / debias
        return mean, (mean_sq - mean**2).clamp(min=self.var_floor)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double() if x.dtype == torch.float64 else x.detach()
        b = self.beta
        self.running_mean.mul_(b).add_(x.mean().to(self.running_mean.dtype) * (1 - b))
        self.running_mean_sq.mul_(b).add_((x**2).mean().to(self.running_mean.dtype) * (1 - b))
        self.debiasing_term.mul_(b).add_(1 - b)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return (x - mean) / var.sqrt()

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return x * var.sqrt() + mean


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(adv - mean) / (std + eps) over the masked entries (MAPPO normalises over the batch)."""
    m = mask.to(adv.dtype)
    n = m.sum().clamp(min=1.0)
    mean = (adv * m).sum() / n
    var = (((adv - mean) ** 2) * m).sum() / n
    return (adv - mean) / (var.sqrt() + eps)


def surrogate_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, negated for minimisation. Returns (loss, clip fraction)."""
    ratio = torch.exp(logp - old_logp)
    surr = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    clipped = ((ratio - 1.0).abs() > clip).to(adv.dtype)
    return -masked_mean(surr, mask), masked_mean(clipped, mask)


def huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    a = x.abs()
    return torch.where(a <= delta, 0.5 * x**2, delta * (a - 0.5 * delta))


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    use_clipped: bool = True,
    use_huber: bool = True,
    delta: float = 10.0,
) -> torch.Tensor:
    """MAPPO's value loss (all in normalised space when value normalisation is on): Huber (or
    squared) error, and with ``use_clipped`` the max of the clipped and unclipped errors."""

    def err(v: torch.Tensor) -> torch.Tensor:
        return huber(targets - v, delta) if use_huber else 0.5 * (targets - v) ** 2

    loss = err(values)
    if use_clipped:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, err(clipped))
    return masked_mean(loss, mask)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def kl_categorical(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row for categorical distributions given by logits (masked entries of -1e10 in
    both contribute 0)."""
    logp = F.log_softmax(logits_p, -1)
    logq = F.log_softmax(logits_q, -1)
    return (logp.exp() * (logp - logq)).sum(-1)
