"""OPRE: Options as Responses (Vezhnevets et al., ICML 2020; arXiv 1906.01470), on MAPPO.

Sources. The paper's abstract (the full text was not retrievable here) and the one public
reimplementation, kinalmehta/marl-jax ``marl/agents/opre/`` (read for facts, no code taken). That
reimplementation names the own-observation distribution p and the privileged one q; this suite
keeps its own letters: **q(z | o)** is the agent's own meta-policy, **p(z | x)** the privileged one.

Networks (parameter sharing across agents, as MAPPO):

* the actor (:class:`OptionActor`): encoder -> GRU over the agent's own observations -> K option
  policies pi_z(a | o) and the meta-policy q(z | o). It acts with the mixture
  mu(a | o) = sum_z q(z|o) pi_z(a|o) **in training rollouts and at test time alike** (evaluation, the
  saved ``policy.pt``, cross-play): the evaluated policy is the one that collected the data;
* the critic (:class:`FactorisedCritic`): MAPPO's centralised recurrent critic over the global state
  x and the slot id, with K per-option value heads V_z(x) and the privileged option distribution
  p(z | x) on its GRU state. Its value is factorised over the options (the paper: "we factorise the
  value function over a latent representation of the concealed information"):
  V(x) = sum_z p(z|x) V_z(x).

Losses, per PPO minibatch (only the learner's agent steps):

* policy: the privileged mixture pi_p(a | o, x) = sum_z sg(p(z|x)) pi_z(a|o) is the policy the
  options are trained as ("low-level policies are trained to respond to particular states of other
  agents grouped by the latent representation"). The data were collected by mu, so the update is
  off-policy: with ``off_policy_correction = "vtrace"`` the value targets are V-trace's and the
  advantage is rho_t (r_t + gamma v_{t+1} - V(x_t)) with rho_t = min(rho_bar, pi_p / mu) at the
  rollout's parameters (IMPALA; marl-jax uses V-trace), inside PPO's clipped surrogate on
  pi_p_new / pi_p_old (the proximal policy is pi_p at collection);
* value: MAPPO's (clipped Huber) loss on the factorised V against those targets; it trains the V_z
  heads and, through the weights, p: this is what groups hidden states x into options;
* KL(p || q) * ``kl_coef``: trains q to infer from the agent's own history the option p picks;
* entropies: the policy entropy bonus (``entropy_coef``) on the mixture chosen by ``policy_entropy``,
  and the option-distribution term ``option_entropy_coef`` * (H_step - H_marginal) on p (or q):
  low entropy at each step (commit to an option), high entropy of the option marginal over the
  minibatch (use all K options).

Actor outputs are log-probabilities of the mixture, log sum_z w_z pi(a|o,z), computed with
logsumexp; unavailable actions keep the usual -1e10, so sampling, argmax and log_softmax treat them
as any actor's logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from envs.base import EnvSpec
from marl.config import ConfigError
from marl.policy.config import PolicyLearnerConfig
from marl.policy.learner import KIND, PolicyLearner, chunked, rows, unchunked
from marl.policy.networks import (
    ActInput,
    ObsEncoder,
    RecurrentCritic,
    extra_dim,
    flat_input,
    init_gru,
    init_layer,
    masked_logits,
    output_norm,
    run_gru,
)
from marl.policy.runner import Rollout
from marl.policy.ppo import categorical_entropy, kl_categorical, masked_mean, vtrace

__all__ = [
    "KIND",
    "Config",
    "Learner",
    "build_actor",
    "build_critic",
    "OptionActor",
    "FactorisedCritic",
    "mixture_logits",
    "option_entropy_terms",
    "option_losses",
]


@dataclass
class Config(PolicyLearnerConfig):
    # K options. *Choice*: 8, marl-jax's OPRE configs for Melting Pot (num_options = 8; its network's
    # default is 16); the paper's value could not be read here.
    n_options: int = 8  # *choice*: marl-jax Melting Pot configs (paper value not read)
    # Weight of KL(p || q). *Choice*: 0.01, marl-jax's options_kl_cost (both its Melting Pot configs).
    kl_coef: float = 0.01  # weight of KL(p || q); *choice*: marl-jax options_kl_cost
    # Which side the KL trains: "both" (marl-jax: no stop-gradient, p is also pulled towards what the
    # agent can infer) or "q_only" (p fixed as the target; p then learns from the value alone).
    kl_grad: Literal["both", "q_only"] = "both"  # which side the KL trains; marl-jax: both
    # Correction for acting with mu = sum_z q pi_z while training pi_p = sum_z p pi_z. "vtrace":
    # V-trace targets and rho-weighted advantages (IMPALA; marl-jax uses V-trace) in PPO's surrogate
    # on pi_p_new / pi_p_old; "none": MAPPO's GAE on mu's data and PPO's ratio pi_p_new / mu (an
    # ablation: the clip then acts on the off-policy ratio).
    off_policy_correction: Literal["vtrace", "none"] = "vtrace"  # acting mu, training pi_p: IMPALA V-trace
    rho_bar: float = 1.0  # V-trace's truncation of rho (IMPALA / rlax default 1)
    c_bar: float = 1.0  # V-trace's truncation of the traces c (IMPALA / rlax default 1), times gae_lambda
    # The factorised value V = sum_z p V_z also trains p (marl-jax: the critic's weights are p, not
    # stopped). False: V = sum_z sg(p) V_z, p then learns from the KL (and option entropy) only.
    value_trains_p: bool = True  # V = sum_z p V_z trains p (grounding); marl-jax
    # The policy gradient trains the options through sum_z sg(p) pi_z (marl-jax stops p's gradient
    # there); True lets the surrogate move p too.
    pg_trains_p: bool = False  # surrogate uses sg(p); marl-jax
    # Which policy's entropy gets MAPPO's bonus entropy_coef: "privileged_mixture" (pi_p, the policy
    # trained; marl-jax's entropy term), "per_option" (sum_z sg(p) H(pi_z)) or "acting_mixture" (mu).
    policy_entropy: Literal["privileged_mixture", "per_option", "acting_mixture"] = "privileged_mixture"  # marl-jax
    # Option-distribution entropy: coef * (mean per-step entropy - entropy of the minibatch marginal).
    # *Choice*: 0.01, marl-jax's options_entropy_cost (Melting Pot v1 config; v2 0.04); 0 turns it off.
    option_entropy_coef: float = 0.01  # H_step - H_marginal of p; *choice*: marl-jax (v1 config)
    # On which option distribution: "p" (marl-jax: the privileged one) or "q".
    option_entropy_on: Literal["p", "q"] = "p"  # marl-jax: the privileged distribution

    def validate(self) -> None:
        """Rules beyond the field types (build_config calls this, so a manifest is checked up front)."""
        if self.n_options < 1:
            raise ConfigError(f"opre: n_options must be >= 1, got {self.n_options}")
        for name in ("kl_coef", "option_entropy_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"opre: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("rho_bar", "c_bar"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"opre: {name} must be > 0, got {getattr(self, name)}")


def mixture_logits(option_logits: torch.Tensor, weight_logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """log sum_z w_z pi_z(a): option_logits [..., K, A] (masked), weight_logits [..., K], avail [..., A]
    -> masked log-probabilities [..., A]."""
    log_w = F.log_softmax(weight_logits, -1).unsqueeze(-1)
    log_pi = F.log_softmax(option_logits, -1)
    return masked_logits(torch.logsumexp(log_w + log_pi, -2), avail)


def option_entropy_terms(weight_logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean per-step entropy, entropy of the marginal) of the option distributions [..., K] over the
    masked entries [...]."""
    probs = F.softmax(weight_logits, -1)
    step = masked_mean(categorical_entropy(weight_logits), mask)
    m = mask.to(probs.dtype).unsqueeze(-1)
    marginal = (probs * m).flatten(0, -2).sum(0) / m.sum().clamp(min=1.0)
    return step, -(marginal * marginal.clamp(min=1e-12).log()).sum()


def option_losses(
    cfg: Config, p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """OPRE's option terms (already weighted) and their raw parts: KL(p || q) and the option entropies."""
    kl = masked_mean(kl_categorical(p_logits.detach() if cfg.kl_grad == "q_only" else p_logits, q_logits), mask)
    step, marginal = option_entropy_terms(p_logits if cfg.option_entropy_on == "p" else q_logits, mask)
    return {
        "option_kl_loss": cfg.kl_coef * kl,
        "option_entropy_loss": cfg.option_entropy_coef * (step - marginal),
        "option_kl": kl.detach(),
        "option_step_entropy": step.detach(),
        "option_marginal_entropy": marginal.detach(),
    }


class OptionActor(nn.Module):
    """Encoder -> GRU -> K option policies and the meta-policy q; acts with sum_z q(z|o) pi_z(a|o).
    The acting interface is RecurrentActor's; the state is never read."""

    def __init__(self, spec: EnvSpec, cfg: Config):
        super().__init__()
        H, orth = cfg.hidden_dim, cfg.orthogonal_init
        self.hidden_dim, self.n_actions, self.n_options = H, spec.n_actions, cfg.n_options
        self.encoder = ObsEncoder(
            spec.obs_shape,
            extra_dim(spec),
            spec.n_agents if cfg.actor_agent_id else 0,
            H,
            downsample=cfg.downsample,
            channels=cfg.cnn_channels,
            kernel=cfg.cnn_kernel,
            orthogonal=orth,
            fc_layers=cfg.actor_fc_layers,
            layer_norm=cfg.layer_norm,
        )
        self.gru = init_gru(nn.GRUCell(H, H), orth)
        self.out_norm = output_norm(H, cfg.layer_norm)  # MAPPO's (on-policy's) LayerNorm under the heads
        # Small gains (MAPPO's policy-head 0.01): options and q start near uniform.
        self.option_head = init_layer(nn.Linear(H, cfg.n_options * spec.n_actions), 0.01, orth)
        self.meta_head = init_layer(nn.Linear(H, cfg.n_options), 0.01, orth)  # q(z | o)

    def initial_hidden(self, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(rows, self.hidden_dim, device=device)

    def option_logits(self, y: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        """normalised GRU output y [..., H] -> masked per-option logits [..., K, A]."""
        raw = self.option_head(y).view(*y.shape[:-1], self.n_options, self.n_actions)
        return masked_logits(raw, avail.unsqueeze(-2))

    def act(self, inp: ActInput, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mixture log-probs [M, A], new hidden [M, H])."""
        h = self.gru(self.encoder(inp.obs, inp.extra, inp.agent_ids), h)
        y = self.out_norm(h)
        return mixture_logits(self.option_logits(y, inp.avail), self.meta_head(y), inp.avail), h

    def sequence(self, inp: ActInput, h0: torch.Tensor, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        """inp fields [L, M, ...]; h0 [M, H]; starts [L, M]. Returns the acting mixture "logits"
        [L, M, A], "q_logits" [L, M, K], "option_logits" [L, M, K, A], "hidden", "features"."""
        L, M = starts.shape
        flat = flat_input(inp, L * M)
        feats = self.encoder(flat.obs, flat.extra, flat.agent_ids).view(L, M, -1)
        hidden = run_gru(self.gru, feats, h0, starts)
        y = self.out_norm(hidden)
        options = self.option_logits(y, inp.avail)
        q_logits = self.meta_head(y)
        return {
            "hidden": hidden,
            "penultimate": y,
            "features": feats,
            "option_logits": options,
            "q_logits": q_logits,
            "logits": mixture_logits(options, q_logits, inp.avail),
        }


class FactorisedCritic(RecurrentCritic):
    """MAPPO's centralised critic with K value heads V_z and the privileged p(z | x) on its GRU state;
    its value is sum_z p(z|x) V_z(x) (in value-normalised space when value normalisation is on)."""

    def __init__(self, spec: EnvSpec, cfg: Config):
        super().__init__(spec, cfg)
        self.value_trains_p = cfg.value_trains_p
        self.v = init_layer(nn.Linear(cfg.hidden_dim, cfg.n_options), 1.0, cfg.orthogonal_init)  # V_z
        self.p_head = init_layer(nn.Linear(cfg.hidden_dim, cfg.n_options), 0.01, cfg.orthogonal_init)  # p(z|x)

    def heads(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """GRU output h [..., H] -> "values" [...] = sum_z p V_z, "p_logits" and "option_values" [..., K]."""
        y = self.out_norm(h)
        p_logits, option_values = self.p_head(y), self.v(y)
        p = F.softmax(p_logits if self.value_trains_p else p_logits.detach(), -1)
        return {"values": (p * option_values).sum(-1), "p_logits": p_logits, "option_values": option_values}

    def step(self, state_p: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = state_p.shape[0]
        x = self._inputs(state_p).reshape(B * self.n_agents, -1)
        h = self.gru(x, h.reshape(B * self.n_agents, -1))
        return self.heads(h)["values"].view(B, self.n_agents), h.view(B, self.n_agents, -1)

    def sequence_heads(self, state_p: torch.Tensor, h0: torch.Tensor, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        """As ``sequence``, with every head: "values" [L, K, N], "p_logits" / "option_values" [L, K, N, Z]."""
        L, K = starts.shape
        x = self._inputs(state_p.reshape(L * K, *state_p.shape[2:])).view(L, K * self.n_agents, -1)
        s = starts.unsqueeze(-1).expand(L, K, self.n_agents).reshape(L, K * self.n_agents)
        hidden = run_gru(self.gru, x, h0.reshape(K * self.n_agents, -1), s).view(L, K, self.n_agents, -1)
        return self.heads(hidden)

    def sequence(self, state_p: torch.Tensor, h0: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        return self.sequence_heads(state_p, h0, starts)["values"]


def build_actor(cfg: Config, spec: EnvSpec) -> nn.Module:
    """OPRE's actor: acts with q(z|o)'s mixture, in training and at test time."""
    return OptionActor(spec, cfg)


def build_critic(cfg: Config, spec: EnvSpec) -> nn.Module:
    return FactorisedCritic(spec, cfg)


class Learner(PolicyLearner):
    actor_builder = staticmethod(build_actor)
    critic_builder = staticmethod(build_critic)

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu"):
        cfg.validate()  # again, for configs built by hand rather than by build_config
        super().__init__(cfg, spec, device)
        self._old_logp: torch.Tensor | None = None  # pi_p's log-prob of the taken actions at collection
        self._rho: torch.Tensor | None = None

    def privileged_logits(
        self, actor_out: dict[str, torch.Tensor], p_logits: torch.Tensor, avail: torch.Tensor
    ) -> torch.Tensor:
        """pi_p = sum_z p pi_z as masked log-probs; p's gradient stopped unless ``pg_trains_p``."""
        return mixture_logits(
            actor_out["option_logits"], p_logits if self.cfg.pg_trains_p else p_logits.detach(), avail
        )

    def _forward(self, r: Rollout, idx: torch.Tensor):
        L = self.cfg.data_chunk_length
        inp, h0, starts = self.chunk_input(r, idx)
        out = self.actor_sequence(inp, h0, starts)
        c_out = self.critic.sequence_heads(
            chunked(r.state, L)[:, idx], chunked(r.critic_h, L)[0, idx], chunked(r.starts, L)[:, idx]
        )
        actions = rows(chunked(r.actions, L)[:, idx])
        priv = self.privileged_logits(out, rows(c_out["p_logits"]), inp.avail)
        logp = torch.log_softmax(priv, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return inp, out, c_out, priv, logp

    @torch.no_grad()
    def privileged_logp(self, r: Rollout) -> torch.Tensor:
        """log pi_p(a_t) of the rollout's actions at the current parameters, [T, B, N]."""
        L, (T, B, N) = self.cfg.data_chunk_length, r.actions.shape
        _, _, _, _, logp = self._forward(r, torch.arange((T // L) * B, device=self.device))
        return unchunked(logp.view(L, -1, N), T, B)

    def estimate_returns(self, r: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """V-trace (or, without the correction, GAE) advantages and value targets for pi_p from mu's
        data; also records the proximal log-probs the surrogate's ratio is taken against and the
        truncated ratios rho."""
        cfg = self.cfg
        if cfg.off_policy_correction == "none":
            self._old_logp = r.logp  # the ratio pi_p_new / mu
            self._rho = torch.ones_like(r.logp)
            return super().estimate_returns(r)
        dn = self.denormalize
        self._old_logp = self.privileged_logp(r)
        ratio = (self._old_logp - r.logp).clamp(max=30.0).exp()
        self._rho = ratio.clamp(max=cfg.rho_bar)
        c = cfg.gae_lambda * ratio.clamp(max=cfg.c_bar)
        returns, adv = vtrace(
            r.rewards,
            dn(r.values),
            dn(r.last_values),
            r.terminated.unsqueeze(-1),
            r.truncated.unsqueeze(-1),
            dn(r.final_values),
            cfg.gamma,
            self._rho,
            c,
        )
        return adv, returns

    def minibatch_losses(
        self, r: Rollout, idx: torch.Tensor, adv: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        cfg, L = self.cfg, self.cfg.data_chunk_length
        inp, out, c_out, priv, logp = self._forward(r, idx)
        c_mask = chunked(self.train_mask(r), L)[:, idx]
        mask = rows(c_mask)
        old_logp = rows(chunked(self._old_logp, L)[:, idx])
        stats = self.ppo_terms(r, idx, c_mask, adv, targets, logp, old_logp, c_out["values"])
        p_logits = rows(c_out["p_logits"])
        if cfg.policy_entropy == "privileged_mixture":
            entropy = masked_mean(categorical_entropy(priv), mask)
        elif cfg.policy_entropy == "acting_mixture":
            entropy = masked_mean(categorical_entropy(out["logits"]), mask)
        else:
            per_option = categorical_entropy(out["option_logits"])  # [L, M, K]
            entropy = masked_mean((F.softmax(p_logits.detach(), -1) * per_option).sum(-1), mask)
        terms = option_losses(cfg, p_logits, out["q_logits"], mask)
        actor_loss = (
            stats["policy_loss"] - cfg.entropy_coef * entropy + terms["option_kl_loss"] + terms["option_entropy_loss"]
        )
        with torch.no_grad():
            acting_logp = (
                torch.log_softmax(out["logits"], -1)
                .gather(-1, rows(chunked(r.actions, L)[:, idx]).unsqueeze(-1))
                .squeeze(-1)
            )
            acting_approx_kl = masked_mean(rows(chunked(r.logp, L)[:, idx]) - acting_logp, mask)
            rho = masked_mean(rows(chunked(self._rho, L)[:, idx]), mask)
        stats.update(entropy=entropy, acting_approx_kl=acting_approx_kl, is_rho_mean=rho, **terms)
        return actor_loss, stats["value_loss"], stats
