"""OPRE: Options as Responses (Vezhnevets et al., ICML 2020; arXiv 1906.01470), on MAPPO.

The actor is a mixture of K option policies pi(a | o, z), z = 1..K: K heads on the recurrent actor's
GRU state (one shared torso, parameter sharing across agents as MAPPO). Two distributions choose
among the options:

* q(z | o), the meta-policy, from the same GRU state, i.e. from the agent's own observation history.
  It is all the agent has at test time;
* p(z | x), privileged, from the global state x (the stored, downsampled state the centralised critic
  sees, encoded by its own encoder) and the agent's one-hot slot id. Training only.

Training acts with sum_z p(z|x) pi(a|o,z) (``act_with_privileged``): p learns from reward which
option is the best *response* to what the other players do (visible in x), and PPO's ratio uses the
log-probability of that mixture. The actor loss adds ``kl_coef`` * KL(p || q), averaged over the
learner's agent steps. It trains q to predict p's choice from the agent's own history; its gradient
also reaches p, keeping p's choice inferable from what the agent can see (the KL-regularised,
information-asymmetric reading of OPRE, *choice*: no stop-gradient on p).

Test time (evaluation, the saved ``policy.pt``, cross-play) acts with sum_z q(z|o) pi(a|o,z) and
never reads the state: :class:`OptionActor` acts with q unless ``privileged=True`` is passed, and only
the learner's rollout view (:class:`PrivilegedActing`) passes it.

Actor outputs are log-probabilities of the mixture, log sum_z w_z pi(a|o,z), computed with
logsumexp; unavailable actions keep the usual -1e10, so sampling, argmax and log_softmax treat them
as any actor's logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from envs.base import EnvSpec
from marl.config import ConfigError
from marl.policy_config import PolicyLearnerConfig
from marl.policy_learner import KIND, PolicyLearner
from marl.policy_networks import ActInput, ObsEncoder, extra_dim, flat_input, init_layer, masked_logits, run_gru
from marl.policy_runner import LEARNER
from marl.ppo import kl_categorical, masked_mean

__all__ = ["KIND", "Config", "Learner", "build_actor", "OptionActor", "PrivilegedActing", "mixture_logits"]


@dataclass
class Config(PolicyLearnerConfig):
    # K option heads. *Choice*: 16, the count we recall from OPRE's use as a Melting Pot baseline; the
    # original text was not retrievable here, so it is a reconstruction.
    n_options: int = 16
    # Weight of KL(p || q) in the actor loss. *Choice*: 0.1, the middle (log scale) of the 1e-2 .. 1
    # range of KL-regularised RL. q's own head is trained by this term alone, and Adam's per-parameter
    # scaling makes its learning speed largely insensitive to the weight; the weight sets how strongly the
    # KL shapes the shared torso and holds p back towards q.
    kl_coef: float = 0.1
    # Training rollouts act (and PPO's ratio is taken) with the privileged mixture sum_z p(z|x) pi(a|o,z),
    # as OPRE trains its option policies as responses to the hidden information. *Choice*, as
    # methods.md leaves it open; false is an ablation that acts with q in training too, where p then
    # learns only through the KL (OPRE reduces to a K-head mixture policy).
    act_with_privileged: bool = True

    def validate(self) -> None:
        """Rules beyond the field types (build_config calls this, so a manifest is checked up front)."""
        if self.n_options < 1:
            raise ConfigError(f"opre: n_options must be >= 1, got {self.n_options}")
        if self.kl_coef < 0:
            raise ConfigError(f"opre: kl_coef must be >= 0, got {self.kl_coef}")


def mixture_logits(option_logits: torch.Tensor, weight_logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """log sum_z w_z pi_z(a): option_logits [..., K, A] (masked), weight_logits [..., K], avail [..., A]
    -> masked log-probabilities [..., A]."""
    log_w = F.log_softmax(weight_logits, -1).unsqueeze(-1)
    log_pi = F.log_softmax(option_logits, -1)
    return masked_logits(torch.logsumexp(log_w + log_pi, -2), avail)


class OptionActor(nn.Module):
    """Encoder -> GRU -> K option policies and the meta-policy q; a separate state encoder -> p.

    The acting interface is RecurrentActor's; ``privileged=True`` (training rollouts and PPO updates)
    weights the options by p(z|x) from ``inp.state``, the default by q(z|o) (the state is not read)."""

    def __init__(self, spec: EnvSpec, cfg: Config):
        super().__init__()
        H, orth = cfg.hidden_dim, cfg.orthogonal_init
        self.hidden_dim, self.n_actions, self.n_options = H, spec.n_actions, cfg.n_options
        self.encoder = ObsEncoder(spec.obs_shape, extra_dim(spec), spec.n_agents if cfg.actor_agent_id else 0, H,
                                  downsample=cfg.downsample, channels=cfg.cnn_channels, kernel=cfg.cnn_kernel,
                                  orthogonal=orth)
        self.gru = nn.GRUCell(H, H)
        # Small gains (MAPPO's policy-head 0.01): options and both option distributions start near uniform.
        self.option_head = init_layer(nn.Linear(H, cfg.n_options * spec.n_actions), 0.01, orth)
        self.meta_head = init_layer(nn.Linear(H, cfg.n_options), 0.01, orth)  # q(z | o)
        # p reads the global state as the centralised critic does (same CNN settings; its own weights).
        self.state_encoder = ObsEncoder(spec.state_shape, 0, spec.n_agents, H, downsample=cfg.downsample,
                                        channels=cfg.critic_cnn_channels, kernel=cfg.cnn_kernel,
                                        stride=cfg.critic_cnn_stride, orthogonal=orth)
        self.privileged_head = init_layer(nn.Linear(H, cfg.n_options), 0.01, orth)  # p(z | x)

    def initial_hidden(self, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(rows, self.hidden_dim, device=device)

    def option_logits(self, h: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        """h [..., H] -> masked per-option logits [..., K, A]."""
        raw = self.option_head(h).view(*h.shape[:-1], self.n_options, self.n_actions)
        return masked_logits(raw, avail.unsqueeze(-2))

    def privileged_logits(self, inp: ActInput) -> torch.Tensor:
        """p's logits [M, K] from the global state and the slot id (flat ActInput)."""
        return self.privileged_head(self.state_encoder(inp.state, None, inp.agent_ids))

    def act(self, inp: ActInput, h: torch.Tensor, privileged: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mixture log-probs [M, A], new hidden [M, H])."""
        h = self.gru(self.encoder(inp.obs, inp.extra, inp.agent_ids), h)
        weights = self.privileged_logits(inp) if privileged else self.meta_head(h)
        return mixture_logits(self.option_logits(h, inp.avail), weights, inp.avail), h

    def sequence(self, inp: ActInput, h0: torch.Tensor, starts: torch.Tensor,
                 privileged: bool = False) -> dict[str, torch.Tensor]:
        """inp fields [L, M, ...]; h0 [M, H]; starts [L, M]. Returns the mixture "logits" [L, M, A]
        (weighted by p if ``privileged`` else q), "q_logits" [L, M, K], with ``privileged`` also
        "p_logits", and "option_logits" [L, M, K, A], "hidden", "features"."""
        L, M = starts.shape
        flat = flat_input(inp, L * M)
        feats = self.encoder(flat.obs, flat.extra, flat.agent_ids).view(L, M, -1)
        hidden = run_gru(self.gru, feats, h0, starts)
        options = self.option_logits(hidden, inp.avail)
        out = {"hidden": hidden, "features": feats, "option_logits": options, "q_logits": self.meta_head(hidden)}
        if privileged:
            out["p_logits"] = self.privileged_logits(flat).view(L, M, -1)
        out["logits"] = mixture_logits(options, out["p_logits"] if privileged else out["q_logits"], inp.avail)
        return out


class PrivilegedActing(nn.Module):
    """The learner's acting module in training rollouts: the same OptionActor (shared parameters,
    never saved on its own), acting with p(z|x)."""

    def __init__(self, actor: OptionActor):
        super().__init__()
        self.actor = actor
        self.hidden_dim = actor.hidden_dim

    @property
    def encoder(self) -> ObsEncoder:  # the runner reads its downsampling factor
        return self.actor.encoder

    def initial_hidden(self, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.actor.initial_hidden(rows, device)

    def act(self, inp: ActInput, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor.act(inp, h, privileged=True)

    def sequence(self, inp: ActInput, h0: torch.Tensor, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.actor.sequence(inp, h0, starts, privileged=True)


def build_actor(cfg: Config, spec: EnvSpec) -> nn.Module:
    """OPRE's actor; as built (and as loaded from a policy artifact) it acts with q(z|o)."""
    return OptionActor(spec, cfg)


class Learner(PolicyLearner):
    actor_builder = staticmethod(build_actor)

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu"):
        cfg.validate()  # again, for configs built by hand rather than by build_config
        super().__init__(cfg, spec, device)
        self.acting: nn.Module = PrivilegedActing(self.actor) if cfg.act_with_privileged else self.actor

    def module(self, key: int) -> nn.Module:
        if key != LEARNER:
            raise KeyError(f"{type(self).__name__} has no co-player {key}")
        return self.acting

    def eval_module(self) -> nn.Module:
        return self.actor  # acts with q(z|o): the state is never read

    def actor_sequence(self, inp: ActInput, h0: torch.Tensor, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.actor.sequence(inp, h0, starts, privileged=self.cfg.act_with_privileged)
        if "p_logits" not in out:  # acting with q: p is still needed for the KL
            L, M = starts.shape
            out["p_logits"] = self.actor.privileged_logits(flat_input(inp, L * M)).view(L, M, -1)
        return out

    def extra_actor_losses(self, out: dict[str, torch.Tensor], inp: ActInput, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        kl = masked_mean(kl_categorical(out["p_logits"], out["q_logits"]), mask)
        return {"option_kl_loss": self.cfg.kl_coef * kl}
