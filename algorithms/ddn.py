"""DDN: Double Distillation Network (arXiv 2502.03125), reconstructed from the seed description.

No code or full text of the paper is available; every choice not fixed by the seed is a named
field of :class:`Config` with a comment (see shared reference/methods.md, section DDN).

Networks
--------
* **Personalization Fusion Block** (:class:`PersonalizationFusion`): for agent i at step t, a small
  hypernetwork reads the agent's local inputs x = (o_t^i, u_{t-1}^i, one-hot i), computes a hidden
  code h = ReLU(G x + g) of size e (``fusion_hyper_hidden``) and from it W = reshape(H h + c)
  (state_dim x d) and B = K h + k (d); the personalized state is Ŝ_t^i = S_t W + B (d = ``fusion_dim``).
  W is never materialized: S W = sum_j P[:, j] h_j + S C, where P = S contracted with H is computed
  once per (episode, step) and shared by the N agents, so the cost is O(S d e) per step instead of
  O(N S d e) memory traffic for explicit matrices.
* **Global Guiding Network** (teacher): [Ŝ_t^i ++ o_t^i] ++ last action ++ id -> FC -> ReLU -> GRU
  -> Q per action (a :class:`RecurrentAgent`), mixed by QMIX into Q_tot; TD-trained (double-Q,
  target networks, optional TD(lambda)) on r + r_I. It is ``self.agent`` of the QLearner, so the
  base class's target copies and updates cover it; the fusion block has its own target copy.
* **Local Policy Network** (student, ``self.student``): the usual RecurrentAgent on local inputs;
  it acts and is evaluated. Trained only by distillation from the teacher (outputs detached):
  L_B = MSE(embeddings after FC+ReLU), L_Q = MSE(Q-values, all actions), L_F = MSE(GRU hiddens),
  averaged over real steps, agents and features.
* **Internal Distillation Module** (RND on the global state): fixed random target f and trained
  predictor f^; r_I(t) = idm_scale * mean_k (f^(s_{t+1}) - f(s_{t+1}))_k^2, i.e. the novelty of the
  state the transition reaches (as in RND; s_{t+1} is in the buffer for every real step, the final
  one included). The predictor is trained on the same quantity, each real sample entering the loss
  with probability mu = ``idm_mask_prob`` (RND's masked update; seed: mu = 0.75 best).

Teacher, student and predictor are updated jointly from the same replay batch by one optimizer;
their losses touch disjoint parameters (the distillation targets are detached, r_I is computed
without gradient).
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from marl.config import ConfigError, Mixer, ValueLearnerConfig
from marl.controller import AgentController
from marl.networks import AgentOutput, RecurrentAgent, agent_input_dim
from marl.value_learner import QLearner, active_rows, mix_where, observed, previous_actions, td_stats

KIND = "value"

DistillLoss = Literal["B", "Q", "F"]
Acting = Literal["student", "teacher"]
QLoss = Literal["mse", "kl"]
DISTILL_LOSSES = typing.get_args(DistillLoss)
ACTING = typing.get_args(Acting)
Q_LOSSES = typing.get_args(QLoss)


@dataclass
class Config(ValueLearnerConfig):
    mixer: Mixer = "qmix"  # the teacher's mixer (seed: QMIX mixing network)
    # "student": the decentralised student collects the data, so the teacher's Q-learning is
    # off-policy on another network's behaviour. "teacher": the teacher acts on the personalized
    # global state (as PTDE's first stage). Test episodes always use the student.
    acting: Acting = "student"  # which network collects training data (choice; the seed does not say)
    # Personalization Fusion Block
    personalize: bool = True  # False: the teacher reads the raw global state (seed Table 3 ablation)
    fusion_dim: int = 64  # d: width of the personalized state Ŝ (choice)
    fusion_hyper_hidden: int = 8  # e: hidden code of the W/B hypernetwork (choice; cost O(S d e) per step)
    teacher_local_obs: bool = True  # teacher input = Ŝ ++ own observation (choice), plus last action/id
    # External distillation (teacher -> student)
    distill_losses: list[DistillLoss] = field(default_factory=lambda: ["B", "Q", "F"])  # subset of B, Q, F
    distill_weight_b: float = 1.0  # L_B feature alignment (choice: MSE, weight 1)
    distill_weight_q: float = 1.0  # L_Q Q-value alignment
    distill_weight_f: float = 1.0  # L_F GRU hidden alignment
    # L_Q as a regression ("mse") or as matching the teacher's Boltzmann policy over available
    # actions ("kl": KL(softmax(Q_T / tau) || softmax(Q_S / tau))), which weighs the action
    # ranking that greedy execution depends on rather than absolute values.
    distill_q_loss: QLoss = "mse"  # form of L_Q (choice: MSE)
    distill_temperature: float = 0.1  # tau of the "kl" form (choice)
    # Internal Distillation Module (random network distillation on the global state)
    idm: bool = True  # False: no intrinsic reward (seed Table 5 ablation)
    idm_mask_prob: float = 0.75  # mu: probability a sample enters the predictor loss (seed: 0.75 best)
    idm_scale: float = 0.1  # r_I = idm_scale * MSE(pred(s'), target(s')) (choice)
    idm_hidden: int = 64  # width of the target and predictor MLPs (choice)
    idm_embed: int = 64  # output size of the target and predictor (choice)

    def validate(self) -> None:
        """Rules beyond the field types (build_config calls this, so a manifest is checked up front)."""
        bad = sorted(set(self.distill_losses) - set(DISTILL_LOSSES))
        if bad:
            raise ConfigError(f"unknown distill_losses {bad}; valid: {', '.join(DISTILL_LOSSES)}")
        if self.distill_q_loss not in Q_LOSSES:
            raise ConfigError(f"unknown distill_q_loss {self.distill_q_loss!r}; valid: {', '.join(Q_LOSSES)}")
        if self.distill_temperature <= 0:
            raise ConfigError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.acting not in ACTING:
            raise ConfigError(f"unknown acting {self.acting!r}; valid: {', '.join(ACTING)}")
        if not 0.0 <= self.idm_mask_prob <= 1.0:
            raise ConfigError(f"idm_mask_prob must be in [0, 1], got {self.idm_mask_prob}")


def configs() -> dict[str, type]:
    return {"ddn": Config}


class PersonalizationFusion(nn.Module):
    """Ŝ_i = S W_i + B_i with W_i = reshape(H h_i + c) [S, d], B_i = K h_i + k, h_i = ReLU(G x_i + g)."""

    def __init__(self, local_dim: int, state_dim: int, out_dim: int = 64, hyper_hidden: int = 8):
        super().__init__()
        self.state_dim, self.out_dim, self.hyper_hidden = state_dim, out_dim, hyper_hidden
        self.hyper = nn.Linear(local_dim, hyper_hidden)
        # Row s * d + k of weight_head produces W[s, k].
        self.weight_head = nn.Linear(hyper_hidden, state_dim * out_dim)
        self.bias_head = nn.Linear(hyper_hidden, out_dim)

    def code(self, local: torch.Tensor) -> torch.Tensor:
        return F.relu(self.hyper(local))

    def matrices(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Explicit W [..., S, d] and B [..., d] (for inspection and tests; forward avoids W)."""
        h = self.code(local)
        return self.weight_head(h).view(*h.shape[:-1], self.state_dim, self.out_dim), self.bias_head(h)

    def forward(self, local: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """local [..., N, L], state [..., S] -> Ŝ [..., N, d]."""
        S, d, e = self.state_dim, self.out_dim, self.hyper_hidden
        h = self.code(local)  # [..., N, e]
        P = (state @ self.weight_head.weight.view(S, d * e)).view(*state.shape[:-1], d, e)  # shared by agents
        shared = state @ self.weight_head.bias.view(S, d)  # S C: [..., d]
        return h @ P.transpose(-1, -2) + shared.unsqueeze(-2) + self.bias_head(h)


class RandomNetworkDistillation(nn.Module):
    """Fixed random target f and trained predictor f^ over the global state."""

    def __init__(self, state_dim: int, hidden: int = 128, embed: int = 64):
        super().__init__()
        self.target = nn.Sequential(nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed))
        self.predictor = nn.Sequential(nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                       nn.ReLU(), nn.Linear(hidden, embed))
        self.target.requires_grad_(False)

    def error(self, state: torch.Tensor) -> torch.Tensor:
        """Per-sample prediction error MSE(f^(s), f(s)) [...]; gradient flows into the predictor."""
        return (self.predictor(state) - self.target(state)).pow(2).mean(-1)


def intrinsic_reward(error: torch.Tensor, scale: float) -> torch.Tensor:
    """r_I = scale * prediction error (no gradient)."""
    return scale * error.detach()


def idm_sample_mask(mask: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Real samples (mask [C, T] bool) kept for the predictor loss, each with probability ``prob``."""
    draws = torch.rand(mask.shape, generator=generator, device=mask.device)
    return mask & (draws < prob)


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over real steps (mask [C, T]), agents and features; the teacher side
    is detached so distillation never changes the teacher."""
    sq = (student - teacher.detach()).pow(2).mean(-1)  # [C, T, N]
    return (sq * mask.unsqueeze(-1)).sum() / (mask.sum() * sq.shape[-1])


def masked_policy_kl(student_q: torch.Tensor, teacher_q: torch.Tensor, avail: torch.Tensor, mask: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """KL(softmax(Q_T / tau) || softmax(Q_S / tau)) over available actions (avail [C, T, N, A]),
    averaged over real steps (mask [C, T]) and agents; the teacher side is detached."""
    def log_policy(q: torch.Tensor) -> torch.Tensor:
        return (q / temperature).masked_fill(~avail, -1e9).log_softmax(-1)

    log_t, log_s = log_policy(teacher_q.detach()), log_policy(student_q)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # [C, T, N]; unavailable actions weigh 0
    return (kl * mask.unsqueeze(-1)).sum() / (mask.sum() * kl.shape[-1])


class Learner(QLearner):
    """Teacher (fusion + ``self.agent`` + ``self.mixer``), student (``self.student``) and IDM."""

    cfg: Config

    def build_extra_networks(self) -> None:
        cfg = self.cfg
        cfg.validate()  # again, for configs built by hand rather than by build_config
        local_dim = agent_input_dim(self.obs_dim, self.n_agents, self.n_actions, cfg.obs_last_action, cfg.obs_agent_id)
        # The base class built a local-input agent: that is the student. The teacher replaces it
        # as self.agent so the base class's target-network handling covers the teacher.
        self.student = self.agent
        fused_dim = cfg.fusion_dim if cfg.personalize else self.state_dim
        teacher_obs_dim = fused_dim + (self.obs_dim if cfg.teacher_local_obs else 0)
        teacher_in = agent_input_dim(teacher_obs_dim, self.n_agents, self.n_actions, cfg.obs_last_action,
                                     cfg.obs_agent_id)
        self.agent = RecurrentAgent(teacher_in, self.n_actions, cfg.hidden_dim).to(self.device)
        self.fusion = (PersonalizationFusion(local_dim, self.state_dim, cfg.fusion_dim, cfg.fusion_hyper_hidden)
                       .to(self.device) if cfg.personalize else None)
        self.target_fusion = copy.deepcopy(self.fusion)
        self.rnd = RandomNetworkDistillation(self.state_dim, cfg.idm_hidden, cfg.idm_embed).to(self.device) \
            if cfg.idm else None

    def trained_modules(self) -> list[nn.Module]:
        extra = [m for m in (self.fusion, self.rnd) if m is not None]
        return [self.agent, self.mixer, self.student, *extra]

    def acting_agent(self) -> RecurrentAgent:
        return self.student

    def make_behaviour_controller(self) -> AgentController:
        if self.cfg.acting == "teacher":
            return TeacherController(self)
        return self.controller

    def update_targets(self) -> None:
        super().update_targets()
        if self.fusion is not None:
            self.target_fusion.load_state_dict(self.fusion.state_dict())

    def run_agent(self, agent: RecurrentAgent, inputs: torch.Tensor, active: list[int] | None) -> AgentOutput:
        """``agent`` over whole episodes: time-major inputs [T+1, C, N, D] -> outputs [C, T+1, N, *]
        (views of the agent's time-major storage, as ``QLearner.agent_q`` returns)."""
        T1, C, N = inputs.shape[:3]
        out = agent(inputs.reshape(T1, C * N, -1), active=active)
        return AgentOutput(*(x.view(T1, C, N, -1).transpose(0, 1) for x in out))

    def teacher_inputs(self, fusion: PersonalizationFusion | None, local: torch.Tensor, state: torch.Tensor,
                       valid: torch.Tensor) -> torch.Tensor:
        """The teacher's time-major inputs [T+1, C, N, *]: Ŝ (or the raw state) ++ local inputs
        (own obs, last action, id; the obs left out when ``teacher_local_obs`` is off).
        local [T+1, C, N, L], state [T+1, C, S], valid [T+1, C] (t <= episode length)."""
        T1, C, N = local.shape[:3]
        if fusion is not None:
            # Only observations inside an episode are fused: padding is ~40% of a batch of short
            # episodes, and the recurrent networks skip it anyway.
            fused = local.new_zeros(T1, C, N, fusion.out_dim)
            fused[valid] = fusion(local[valid], state[valid])
        else:
            fused = state.unsqueeze(2).expand(T1, C, N, state.shape[-1])
        own = local if self.cfg.teacher_local_obs else local[..., self.obs_dim:]
        return torch.cat([fused, own], dim=-1)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        filled = batch["filled"]
        mask = filled.float()
        state = batch["state"]
        C, T1, N = batch["obs"].shape[:3]
        # Time-major [T+1, C, ...] inputs, built once for teacher, target teacher and student.
        local = self.controller.inputs(batch["obs"].reshape(C, T1, N, -1).transpose(0, 1),
                                       previous_actions(batch["actions"]).transpose(0, 1))
        state_tm = state.reshape(C, T1, -1).transpose(0, 1)
        valid = observed(filled).t()  # [T+1, C]: t <= length
        active = active_rows(filled, N)

        # Internal distillation: r_I from the novelty of s_{t+1}; masked predictor update.
        reward = batch["reward"]
        stats: dict[str, float] = {}
        idm_loss = torch.zeros((), device=self.device)
        if self.rnd is not None:
            error = torch.zeros_like(reward)  # [C, T]; computed on real steps only
            error[filled] = self.rnd.error(state[:, 1:].flatten(2)[filled])
            r_i = intrinsic_reward(error, cfg.idm_scale) * mask
            reward = reward + r_i
            keep = idm_sample_mask(filled, cfg.idm_mask_prob).float()
            idm_loss = (error * keep).sum() / keep.sum().clamp(min=1.0)
            stats.update(idm_loss=float(idm_loss.detach()), intrinsic_reward_mean=float(r_i.sum() / mask.sum()))

        # Teacher TD loss on r + r_I.
        teacher = self.run_agent(self.agent, self.teacher_inputs(self.fusion, local, state_tm, valid), active)
        chosen = teacher.q[:, :-1].gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            q_target = self.run_agent(self.target_agent, self.teacher_inputs(self.target_fusion, local, state_tm, valid),
                                      active).q
            target_tot = mix_where(self.target_mixer,
                                   self.greedy_target_values(teacher.q, q_target, batch["avail_actions"]), state,
                                   valid.t())
            y = self.targets({**batch, "reward": reward}, target_tot)
        q_tot = mix_where(self.mixer, chosen, state[:, :-1], filled)
        td = (q_tot - y) * mask
        td_loss = td.pow(2).sum() / mask.sum()

        # External distillation into the student (teacher outputs detached).
        student = self.run_agent(self.student, local, active)
        pairs = {"B": (student.embedding, teacher.embedding, cfg.distill_weight_b),
                 "Q": (student.q, teacher.q, cfg.distill_weight_q),
                 "F": (student.hidden, teacher.hidden, cfg.distill_weight_f)}
        distill = torch.zeros((), device=self.device)
        for name in cfg.distill_losses:
            s, t, w = pairs[name]
            if name == "Q" and cfg.distill_q_loss == "kl":
                term = masked_policy_kl(s[:, :-1], t[:, :-1], batch["avail_actions"][:, :-1], mask,
                                        cfg.distill_temperature)
            else:
                term = masked_mse(s[:, :-1], t[:, :-1], mask)
            distill = distill + w * term
            stats[f"distill_{name}"] = float(term.detach())

        loss = td_loss + distill + idm_loss
        stats.update(td_stats(td_loss.detach(), td.detach(), q_tot.detach(), y, mask))
        stats["loss"] = float(loss.detach())
        return loss, stats


class TeacherController(AgentController):
    """The teacher acting (``acting: teacher``): each agent's input is its personalized global
    state (online fusion block) with its local inputs, exactly as in training."""

    def __init__(self, learner: Learner):
        super().__init__(learner.agent, learner.n_agents, learner.n_actions, learner.cfg.obs_last_action,
                         learner.cfg.obs_agent_id)
        self.learner = learner

    def step_inputs(self, obs: torch.Tensor, last_actions: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        if state is None:
            raise ValueError("the DDN teacher acts on the global state: pass state=")
        local = self.inputs(obs, last_actions).unsqueeze(0)  # [1, B, N, L]
        valid = torch.ones(local.shape[:2], dtype=torch.bool, device=local.device)
        return self.learner.teacher_inputs(self.learner.fusion, local, state.flatten(1).unsqueeze(0), valid)[0]
