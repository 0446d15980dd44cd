"""MAPPO's learner, the base of every on-policy population method.

:class:`PolicyLearner` owns the shared recurrent actor (theta), the centralised critic, value
normalisation and the two Adam optimisers, and updates them with PPO on a :class:`Rollout`: GAE
over the whole rollout, then ``ppo_epochs`` passes over ``num_mini_batch`` minibatches of
recurrent chunks (``data_chunk_length`` steps of one env copy, all its slots). Only entries played
by the learner (``policy == LEARNER``) enter the losses.

It is also the rollout's :class:`~marl.policy.runner.Players`: plain MAPPO puts the learner in every
slot (self-play on the substrate). Population methods subclass it and override the hooks:

* ``assign`` / ``module``: who plays which slot and with what actor;
* ``before_rollout``: per-iteration changes to the acting policy (RandNet re-draws its layer);
* ``actor_sequence`` / ``extra_actor_losses``: extra outputs and loss terms of special actors
  (RandNet's feature matching);
* ``critic_builder`` / ``advantages`` / ``minibatch_losses``: another critic, other value targets and
  other losses on a minibatch (OPRE: a value factorised over options, V-trace, its option terms);
* ``after_update``: work after each PPO update (BiDist's distillation, snapshot pools);
* ``eval_module``: the actor used at test time (RandNet's Monte Carlo averaging);
* ``trains_all_slots`` / ``train_mask``: which rollout entries train the learner (default: the
  learner's own; RPM: every slot, its memory policies' data included, with their behaviour
  log-probs in PPO's ratio);
* ``set_budget``: the run's total number of PPO updates, for schedules that scale with the budget
  (RPM's episode probability);
* ``extra_state`` / ``load_extra_state``: whatever else a checkpoint must hold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from envs.base import EnvSpec
from marl.policy.config import PolicyLearnerConfig
from marl.policy.networks import ActInput, RecurrentActor, RecurrentCritic
from marl.policy.runner import LEARNER, Episodes, Rollout
from marl.policy.ppo import (
    ValueNorm,
    categorical_entropy,
    gae,
    masked_mean,
    normalize_advantages,
    surrogate_loss,
    value_loss,
)

KIND = "policy"


def build_actor(cfg: PolicyLearnerConfig, spec: EnvSpec) -> nn.Module:
    """The actor of MAPPO (and of self-play, RPM and BiDist): see RecurrentActor."""
    return RecurrentActor(spec, cfg)


def build_critic(cfg: PolicyLearnerConfig, spec: EnvSpec) -> nn.Module:
    """MAPPO's centralised critic: see RecurrentCritic (OPRE's factorises its value over options)."""
    return RecurrentCritic(spec, cfg)


def unchunked(x: torch.Tensor, T: int, B: int) -> torch.Tensor:
    """Inverse of :func:`chunked`: [L, (T // L) * B, ...] -> [T, B, ...]."""
    L = x.shape[0]
    return x.reshape(L, T // L, B, *x.shape[2:]).transpose(0, 1).reshape(T, B, *x.shape[2:])


def chunked(x: torch.Tensor, L: int) -> torch.Tensor:
    """[T, B, ...] -> [L, (T // L) * B, ...]: chunk k = (c, b) holds steps c*L .. c*L+L-1 of copy b."""
    T, B = x.shape[:2]
    return x.reshape(T // L, L, B, *x.shape[2:]).transpose(0, 1).reshape(L, (T // L) * B, *x.shape[2:])


def rows(x: torch.Tensor) -> torch.Tensor:
    """[L, K, N, ...] -> [L, K * N, ...] (one row per slot of each chunk)."""
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


class PolicyLearner:
    actor_builder = staticmethod(build_actor)
    critic_builder = staticmethod(build_critic)
    # True: rollouts record every slot (behaviour log-probs, the learner's hidden state) and every
    # slot trains the learner (see train_mask). Read by the trainer when it builds the collector.
    trains_all_slots = False

    def __init__(self, cfg: PolicyLearnerConfig, spec: EnvSpec, device: torch.device | str = "cpu"):
        if cfg.rollout_length % cfg.data_chunk_length:
            raise ValueError(
                f"rollout_length ({cfg.rollout_length}) must be a multiple of data_chunk_length "
                f"({cfg.data_chunk_length})"
            )
        self.cfg, self.spec, self.device = cfg, spec, torch.device(device)
        self.actor = self.actor_builder(cfg, spec).to(self.device)
        self.critic = self.critic_builder(cfg, spec).to(self.device)
        self.value_norm = ValueNorm(cfg.value_norm_beta).to(self.device) if cfg.use_value_norm else None
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, eps=cfg.adam_eps)
        self.updates = 0

    # Players (plain MAPPO: the learner in every slot) -------------------------------------------

    def assign(self, n_envs: int, n_agents: int, generator: torch.Generator) -> torch.Tensor:
        return torch.full((n_envs, n_agents), LEARNER, dtype=torch.long)

    def module(self, key: int) -> nn.Module:
        if key != LEARNER:
            raise KeyError(f"{type(self).__name__} has no co-player {key}")
        return self.actor

    def eval_module(self) -> nn.Module:
        """The actor evaluated at test time and saved as the run's policy."""
        return self.actor

    # Hooks ---------------------------------------------------------------------------------------

    def before_rollout(self, generator: torch.Generator) -> None:
        pass

    def set_budget(self, total_updates: int) -> None:
        """The run's total number of PPO updates (called by the trainer before training)."""

    def train_mask(self, r: Rollout) -> torch.Tensor:
        """[T, B, N] bool: the entries that enter the losses."""
        if self.trains_all_slots:
            return torch.ones_like(r.learner_mask)
        return r.learner_mask

    def actor_sequence(self, inp: ActInput, h0: torch.Tensor, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.actor.sequence(inp, h0, starts)

    def extra_actor_losses(
        self, out: dict[str, torch.Tensor], inp: ActInput, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Extra terms added to the actor's loss (name -> scalar, already weighted)."""
        return {}

    def after_update(self, rollout: Rollout, episodes: Episodes, generator: torch.Generator) -> dict[str, float]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # PPO -----------------------------------------------------------------------------------------

    def denormalize(self, v: torch.Tensor) -> torch.Tensor:
        return self.value_norm.denormalize(v) if self.value_norm is not None else v

    def advantages(self, r: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages, value targets in the critic's space), both [T, B, N]."""
        adv, returns = self.estimate_returns(r)
        if self.value_norm is not None:
            self.value_norm.update(returns[self.train_mask(r)])
            return adv, self.value_norm.normalize(returns)
        return adv, returns

    def estimate_returns(self, r: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE advantages and lambda-returns in the rewards' scale (OPRE: V-trace)."""
        cfg = self.cfg
        return gae(
            r.rewards,
            self.denormalize(r.values),
            self.denormalize(r.last_values),
            r.terminated.unsqueeze(-1),
            r.truncated.unsqueeze(-1),
            self.denormalize(r.final_values),
            cfg.gamma,
            cfg.gae_lambda,
        )

    def chunk_input(self, r: Rollout, idx: torch.Tensor) -> tuple[ActInput, torch.Tensor, torch.Tensor]:
        """Actor input for chunks ``idx``: ActInput with [L, k*N, ...] fields, h0 [k*N, H], starts [L, k*N]."""
        L, N = self.cfg.data_chunk_length, self.spec.n_agents
        sel = lambda x: chunked(x, L)[:, idx]  # noqa: E731
        starts = sel(r.starts).unsqueeze(-1).expand(-1, -1, N)
        state = sel(r.state).unsqueeze(2).expand(-1, -1, N, *r.state.shape[2:])
        ids = torch.arange(N, device=self.device).expand(L, len(idx), N)
        inp = ActInput(rows(sel(r.obs)), rows(sel(r.extra)), rows(ids), rows(sel(r.avail)), rows(state))
        h0 = chunked(r.actor_h, L)[0, idx].reshape(len(idx) * N, -1)
        return inp, h0, rows(starts)

    def minibatch_losses(
        self, r: Rollout, idx: torch.Tensor, adv: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """MAPPO's losses on the chunks ``idx`` of rollout ``r``: (actor loss, value loss, stats).
        ``adv`` (normalised) and ``targets`` are [T, B, N]. OPRE overrides this (its surrogate is on
        another mixture than the acting one, its value is factorised over the options)."""
        cfg, L = self.cfg, self.cfg.data_chunk_length
        inp, h0, starts = self.chunk_input(r, idx)
        c_mask = chunked(self.train_mask(r), L)[:, idx]
        mask = rows(c_mask)
        out = self.actor_sequence(inp, h0, starts)
        logp_all = torch.log_softmax(out["logits"], -1)
        actions = rows(chunked(r.actions, L)[:, idx])
        logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        old_logp = rows(chunked(r.logp, L)[:, idx])
        values = self.critic.sequence(
            chunked(r.state, L)[:, idx], chunked(r.critic_h, L)[0, idx], chunked(r.starts, L)[:, idx]
        )
        stats = self.ppo_terms(r, idx, c_mask, adv, targets, logp, old_logp, values)
        entropy = stats["entropy"] = masked_mean(categorical_entropy(out["logits"]), mask)
        extras = self.extra_actor_losses(out, inp, mask)
        actor_loss = (
            stats["policy_loss"]
            - cfg.entropy_coef * entropy
            + sum(extras.values(), torch.zeros((), device=self.device))
        )
        return actor_loss, stats["value_loss"], {**stats, **extras}

    def ppo_terms(
        self,
        r: Rollout,
        idx: torch.Tensor,
        c_mask: torch.Tensor,
        adv: torch.Tensor,
        targets: torch.Tensor,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        values: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """PPO's clipped surrogate (``logp`` against ``old_logp``, rows of chunks ``idx``) and clipped
        value loss (``values`` [L, k, N] against ``targets``) over the training entries ``c_mask``
        ([L, k, N], the chunks' train mask), with their statistics: what MAPPO and OPRE share (they
        differ in which policy's log-probs and which value enter)."""
        cfg, L = self.cfg, self.cfg.data_chunk_length
        mask = rows(c_mask)
        pol_loss, clip_frac = surrogate_loss(logp, old_logp, rows(chunked(adv, L)[:, idx]), mask, cfg.clip_param)
        v_loss = value_loss(
            values,
            chunked(r.values, L)[:, idx],
            chunked(targets, L)[:, idx],
            c_mask,
            cfg.clip_param,
            cfg.use_clipped_value_loss,
            cfg.use_huber_loss,
            cfg.huber_delta,
        )
        with torch.no_grad():
            approx_kl = masked_mean(old_logp - logp, mask)
        return {"policy_loss": pol_loss, "value_loss": v_loss, "clip_frac": clip_frac, "approx_kl": approx_kl}

    def train_step(self, r: Rollout, episodes: Episodes, generator: torch.Generator) -> dict[str, float]:
        """One PPO update on rollout ``r`` (then the subclass's ``after_update``)."""
        cfg, L = self.cfg, self.cfg.data_chunk_length
        mask_all = self.train_mask(r)
        if not bool(mask_all.any()):  # every slot was played by co-players: nothing trains theta
            return {**self.after_update(r, episodes, generator), "learner_fraction": 0.0}
        adv, targets = self.advantages(r)
        adv = normalize_advantages(adv, mask_all)
        K = (r.rewards.shape[0] // L) * r.rewards.shape[1]
        sums: dict[str, float] = {}
        n = 0
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(K, generator=generator, device=self.device)
            for idx in perm.chunk(cfg.num_mini_batch):
                actor_loss, v_loss, loss_stats = self.minibatch_losses(r, idx, adv, targets)

                self.actor_opt.zero_grad(set_to_none=True)
                self.critic_opt.zero_grad(set_to_none=True)
                (actor_loss + cfg.value_loss_coef * v_loss).backward()
                a_norm = nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.max_grad_norm)
                c_norm = nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                self.actor_opt.step()
                self.critic_opt.step()
                step_stats = {**loss_stats, "actor_grad_norm": a_norm, "critic_grad_norm": c_norm}
                for k, v in step_stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
                n += 1
        self.updates += 1
        stats = {k: v / n for k, v in sums.items()}
        stats["learner_fraction"] = float(r.learner_mask.float().mean())
        if self.trains_all_slots:
            stats["trained_fraction"] = float(mask_all.float().mean())
        stats.update(self.after_update(r, episodes, generator))
        return stats

    # Checkpoints -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "value_norm": self.value_norm.state_dict() if self.value_norm is not None else None,
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "updates": self.updates,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        if self.value_norm is not None:
            self.value_norm.load_state_dict(state["value_norm"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.updates = int(state["updates"])
        self.load_extra_state(state["extra"])
