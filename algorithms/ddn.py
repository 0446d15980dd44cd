"""DDN: Double Distillation Network (arXiv 2502.03125), reconstructed from the seed description.

No code or full text of the paper is available; every choice not fixed by the seed is a named
field of :class:`Config` with a comment (docs/methods.md, section DDN, lists them with their sources).

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
  it is the network evaluated (and deployed). Trained only by distillation from the teacher
  (outputs detached): L_B = MSE(embeddings after FC+ReLU), L_Q, L_F = MSE(GRU hiddens). The seed's
  plain form averages all three over real steps, agents and features, L_Q an MSE over all actions,
  from the online teacher, with the student collecting the data. The defaults, chosen on tuning
  seeds (``reports/choice_evidence.yaml``), differ: teacher and student each collect half of the
  episodes (``acting`` "mixed", drawn per episode), L_Q is the KL between the teacher's and the
  student's Boltzmann policies over available actions (``distill_q_loss``), only live agents count
  (``distill_mask``), and the targets come from the target teacher (``distill_from``).
* **Internal Distillation Module** (RND on the global state): fixed random target f and trained
  predictor f^; r_I(t) = idm_scale * mean_k (f^(s_{t+1}) - f(s_{t+1}))_k^2, i.e. the novelty of the
  state the transition reaches (as in RND; s_{t+1} is in the buffer for every real step, the final
  one included). The predictor is trained on the same quantity, each real sample entering the loss
  with probability mu = ``idm_mask_prob`` (RND's masked update; seed: mu = 0.75 best).

Teacher, student and predictor are updated jointly from the same replay batch by one optimizer;
their losses touch disjoint parameters (the distillation targets are detached, r_I is computed
without gradient), so the update takes the teacher's gradients first and frees that graph before
the student's pass is built (``Learner.backward``): the same gradients, one network's activations at a time.
"""

from __future__ import annotations

import copy
import math
import typing
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from marl.config import ConfigError
from marl.value.config import Mixer, ValueLearnerConfig
from marl.value.controller import AgentController, epsilon_greedy, masked_q
from marl.value.fast_gru import check_active, packed_index
from marl.value.networks import AgentOutput, RecurrentAgent, SplitInput, agent_input_dim
from marl.value.learner import QLearner, active_rows, mix_where, observed, previous_actions, td_lambda_targets, td_stats

KIND = "value"

DistillLoss = Literal["B", "Q", "F"]
Acting = Literal["student", "teacher", "mixed"]
QLoss = Literal["mse", "centred_mse", "kl"]
DistillMask = Literal["all", "live"]
DistillFrom = Literal["online", "target"]
GradClip = Literal["joint", "per_group"]
DISTILL_LOSSES = typing.get_args(DistillLoss)
ACTING = typing.get_args(Acting)
Q_LOSSES = typing.get_args(QLoss)


@dataclass
class Config(ValueLearnerConfig):
    mixer: Mixer = "qmix"  # the teacher's mixer (seed: QMIX mixing network)
    # "student": the decentralised student collects the data, so the teacher's Q-learning is
    # off-policy on another network's behaviour. "teacher": the teacher acts on the personalized
    # global state (as PTDE's first stage). Test episodes always use the student.
    # "mixed": per episode (each environment copy), the teacher acts with probability
    # ``acting_teacher_prob``, the student otherwise, for the whole episode (DAgger-like).
    # Default "mixed": chosen on the tuning seeds (reports/choice_evidence.yaml). The student alone
    # acting (the teacher a passive learner) collapsed after its peak; the teacher alone acting
    # left the student tested on states the replay never holds (its dips while the teacher held).
    acting: Acting = "mixed"  # which network collects training data (choice; the seed does not say)
    acting_teacher_prob: float = 0.5  # share of teacher-acted episodes under acting "mixed" (choice)
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
    distill_q_loss: QLoss = "kl"  # form of L_Q (choice; the seed: MSE; chosen on the tuning seeds)
    # "centred_mse": MSE between action-centred Q-values (each minus its mean over the available
    # actions), over available actions only: the action gaps greedy acting needs, not the level.
    distill_temperature: float = 0.1  # tau of the "kl" form (choice)
    # "all": every agent-step of the batch and every action is a distillation target (the seed's
    # plain losses). "live": only live agents (more than one available action; SMAC's dead units
    # have only no-op) and, for L_Q, only available actions, whose teacher values are trained.
    distill_mask: DistillMask = "live"  # which entries the distillation losses average over (choice; the seed: all)
    # "online": the student matches the teacher being trained; "target": the target teacher
    # (hard-copied every target_update_interval episodes), a slower-moving target as in PTDE.
    distill_from: DistillFrom = "target"  # which teacher the student is distilled from (choice; the seed: online)
    # Weight of an optional TD term on the student's own Q: its chosen Q-values mixed by the
    # teacher's mixer (mixer weights frozen for this term) regressed on the teacher's target y.
    student_td_weight: float = 0.0  # 0 = the student learns by distillation only (choice)
    # "joint": one norm clip over teacher, mixer, student and IDM (PyMARL); "per_group": each
    # network group clipped by its own norm, so a spike in one does not scale the others' steps.
    grad_clip: GradClip = "joint"  # gradient-norm clipping scope (choice)
    # The student's learning rate as a fraction of ``lr`` (its own Adam parameter group). Adam's
    # steps are about lr in size whatever the gradient's scale, so a student near its teacher's
    # policy keeps stepping by lr in the directions of the batch's noise; a smaller rate damps that
    # jitter at the cost of tracking the teacher more slowly.
    student_lr_scale: float = 1.0  # 1 = one learning rate for every network, as PyMARL (choice)
    log_teacher_eval: bool = True  # also test the teacher greedily (on the state) at each evaluation
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
        if not 0.0 <= self.acting_teacher_prob <= 1.0:
            raise ConfigError(f"acting_teacher_prob must be in [0, 1], got {self.acting_teacher_prob}")
        if self.student_td_weight < 0:
            raise ConfigError(f"student_td_weight must be >= 0, got {self.student_td_weight}")
        if self.student_lr_scale <= 0:
            raise ConfigError(f"student_lr_scale must be > 0, got {self.student_lr_scale}")
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
        self.predictor = nn.Sequential(
            nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, embed)
        )
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


def live_agents(avail: torch.Tensor) -> torch.Tensor:
    """[..., N, A] available actions -> [..., N] bool: the agent can do more than one thing (a dead
    SMAC/SMAX unit has only the no-op; a frozen Predator-Prey agent only stay)."""
    return avail.sum(-1) > 1


def weighted_mse(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over features of the squared difference, averaged with ``weight`` [C, T, N] over
    agent-steps (weight = real-step mask x live agents); the teacher side is detached."""
    sq = (student - teacher.detach()).pow(2).mean(-1)  # [C, T, N]
    return (sq * weight).sum() / weight.sum().clamp(min=1.0)


def q_distill_mse(
    student_q: torch.Tensor,
    teacher_q: torch.Tensor,
    avail: torch.Tensor | None,
    weight: torch.Tensor,
    centred: bool = False,
) -> torch.Tensor:
    """L_Q as a regression. ``avail`` [C, T, N, A] restricts the mean over actions to available
    ones (None: all actions); ``centred`` subtracts each Q-vector's mean over those actions first,
    so only the action gaps are matched. Averaged over agent-steps with ``weight`` [C, T, N]."""
    teacher_q = teacher_q.detach()
    on = torch.ones_like(student_q) if avail is None else avail.to(student_q.dtype)
    count = on.sum(-1, keepdim=True).clamp(min=1.0)
    if centred:
        student_q = student_q - (student_q * on).sum(-1, keepdim=True) / count
        teacher_q = teacher_q - (teacher_q * on).sum(-1, keepdim=True) / count
    sq = ((student_q - teacher_q).pow(2) * on).sum(-1) / count.squeeze(-1)  # [C, T, N]
    return (sq * weight).sum() / weight.sum().clamp(min=1.0)


def discounted_returns(
    reward: torch.Tensor, terminated: torch.Tensor, filled: torch.Tensor, bootstrap: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Realised discounted return from every real step to the episode's end, G_t = r_t +
    gamma (1 - term_t) G_{t+1}; an episode cut by the time limit is closed with ``bootstrap``
    [C, T+1] at its final observation (TD(1)). reward, terminated, filled [C, T]."""
    return td_lambda_targets(reward, terminated, filled, bootstrap, gamma, 1.0)


def masked_policy_kl(
    student_q: torch.Tensor, teacher_q: torch.Tensor, avail: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(softmax(Q_T / tau) || softmax(Q_S / tau)) over available actions (avail [C, T, N, A]),
    averaged over real steps (mask [C, T]) and agents; the teacher side is detached."""

    def log_policy(q: torch.Tensor) -> torch.Tensor:
        return (q / temperature).masked_fill(~avail, -1e9).log_softmax(-1)

    log_t, log_s = log_policy(teacher_q.detach()), log_policy(student_q)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # [C, T, N]; unavailable actions weigh 0
    weight = mask.unsqueeze(-1) if mask.dim() == kl.dim() - 1 else mask  # [C, T] or [C, T, N]
    return (kl * weight).sum() / (weight.expand_as(kl).sum()).clamp(min=1.0)


class TeacherStudentStats:
    """Instruments of the teacher-student pair, computed without gradient on a replay batch."""

    @staticmethod
    @torch.no_grad()
    def greedy_agreement(
        student_q: torch.Tensor, teacher_q: torch.Tensor, avail: torch.Tensor, mask: torch.Tensor
    ) -> float:
        """Fraction of live agents' real steps where the student's and the teacher's greedy
        available actions coincide. q, avail [C, T, N, A]; mask [C, T]."""
        same = masked_q(student_q, avail).argmax(-1) == masked_q(teacher_q, avail).argmax(-1)
        weight = mask.unsqueeze(-1) * live_agents(avail)
        return float((same * weight).sum() / weight.sum().clamp(min=1.0))

    @staticmethod
    @torch.no_grad()
    def rms(x: torch.Tensor, where: torch.Tensor) -> float:
        """Root mean square of x [C, T(+1), N, D] over the positions ``where`` [C, T(+1)] holds.
        Computed from per-position norms, without a copy of x (this runs at the update's peak)."""
        count = where.sum() * x[0, 0].numel()
        if not bool(count):
            return float("nan")
        squares = torch.linalg.vector_norm(x.flatten(2), dim=-1).square()  # [C, T(+1)]
        return float(((squares * where).sum() / count).sqrt())

    @staticmethod
    @torch.no_grad()
    def rms_all(x: torch.Tensor) -> float:
        """Root mean square of every entry of x (nan when empty), without a squared copy."""
        return float(torch.linalg.vector_norm(x) / math.sqrt(x.numel())) if x.numel() else float("nan")


class InsideEpisodes(NamedTuple):
    """Values of the teacher at the observations inside an episode, for the instruments."""

    fused: torch.Tensor  # personalized state Ŝ (or the raw state) [M, N, d]
    teacher_embedding: torch.Tensor  # [M, N, H], or the packed rows [M * N, H]


class TeacherHalf(NamedTuple):
    """The teacher's half of an update: its losses, the networks' outputs the student's half and
    the instruments read, and the student's pass to run over the same inputs."""

    td_loss: torch.Tensor
    idm_loss: torch.Tensor
    teacher: AgentOutput
    target_teacher: AgentOutput
    inside: InsideEpisodes
    run_student: typing.Callable[[], AgentOutput]
    q_tot: torch.Tensor  # detached
    target_tot: torch.Tensor
    y: torch.Tensor  # TD targets on r + r_I
    reward: torch.Tensor  # r + r_I
    stats: dict[str, float]


class StudentHalf(NamedTuple):
    student: AgentOutput
    distill: torch.Tensor
    student_td_loss: torch.Tensor
    stats: dict[str, float]


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
        teacher_in = agent_input_dim(
            teacher_obs_dim, self.n_agents, self.n_actions, cfg.obs_last_action, cfg.obs_agent_id
        )
        self.agent = RecurrentAgent(teacher_in, self.n_actions, cfg.hidden_dim).to(self.device)
        self.fusion = (
            PersonalizationFusion(local_dim, self.state_dim, cfg.fusion_dim, cfg.fusion_hyper_hidden).to(self.device)
            if cfg.personalize
            else None
        )
        self.target_fusion = copy.deepcopy(self.fusion)
        self.rnd = (
            RandomNetworkDistillation(self.state_dim, cfg.idm_hidden, cfg.idm_embed).to(self.device)
            if cfg.idm
            else None
        )

    def trained_modules(self) -> list[nn.Module]:
        extra = [m for m in (self.fusion, self.rnd) if m is not None]
        return [self.agent, self.mixer, self.student, *extra]

    def acting_agent(self) -> RecurrentAgent:
        return self.student

    def optimizer_params(self) -> list[nn.Parameter] | list[dict[str, typing.Any]]:
        if self.cfg.student_lr_scale == 1.0:
            return self.params  # one group: the optimizer of every earlier run, step for step
        student = {id(p) for p in self.student.parameters()}
        return [
            {"params": [p for p in self.params if id(p) not in student]},
            {"params": [p for p in self.params if id(p) in student], "lr": self.cfg.lr * self.cfg.student_lr_scale},
        ]

    def make_behaviour_controller(self) -> AgentController:
        if self.cfg.acting == "teacher":
            return TeacherController(self)
        if self.cfg.acting == "mixed":
            return MixedController(self)
        return self.controller

    def diagnostic_controllers(self) -> dict[str, AgentController]:
        return {"teacher": TeacherController(self)} if self.cfg.log_teacher_eval else {}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trained parameters by network: teacher (agent and fusion block), mixer, student, IDM."""
        teacher = [*self.agent.parameters(), *(self.fusion.parameters() if self.fusion is not None else [])]
        groups = {
            "teacher": teacher,
            "mixer": list(self.mixer.parameters()),
            "student": list(self.student.parameters()),
        }
        if self.rnd is not None:
            groups["idm"] = [p for p in self.rnd.parameters() if p.requires_grad]
        return groups

    def clip_gradients(self) -> dict[str, float]:
        """Per-group gradient norms (before clipping) are logged; ``grad_clip`` chooses one joint
        clip (``grad_norm`` over everything, as PyMARL) or one clip per group."""
        clip = self.cfg.grad_norm_clip
        groups = self.param_groups()
        norms = {
            name: torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            for name, params in groups.items()
        }
        total = torch.stack(list(norms.values())).norm()
        if self.cfg.grad_clip == "per_group":
            for name, params in groups.items():
                torch.nn.utils.clip_grads_with_norm_(params, clip, norms[name])
            fired = float(sum(float(n) > clip for n in norms.values()))
        else:
            torch.nn.utils.clip_grads_with_norm_(self.params, clip, total)
            fired = float(float(total) > clip)
        return {
            "grad_norm": float(total),
            "grad_clip_fired": fired,
            **{f"grad_norm_{name}": float(n) for name, n in norms.items()},
        }

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

    def teacher_inputs(
        self, fusion: PersonalizationFusion | None, local: torch.Tensor, state: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
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
        own = local if self.cfg.teacher_local_obs else local[..., self.obs_dim :]
        return torch.cat([fused, own], dim=-1)

    def teacher_networks(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[AgentOutput, AgentOutput, InsideEpisodes, typing.Callable[[], AgentOutput]]:
        """Teacher (with gradient) and target teacher (without) over the batch's whole episodes,
        outputs [C, T+1, N, *] (zeros after an episode's end), the teacher's fused state and
        embedding at the observations inside an episode (for the instruments), and the student's
        pass over the same inputs, to call when its half of the update runs. The teacher's hidden
        and embedding are in its output only where the student is distilled from it
        (``distill_from`` online): else a padded copy of them would be memory for nothing.

        On a batch sorted longest first (as the buffer samples) the local inputs, the states and
        the packing are built once, for the rows inside their episodes only, and every network
        reads them packed: no padded [T+1, C, N, *] teacher input is built, gathered and packed
        again per network. An unsorted batch takes the padded path (the same values)."""
        filled, state = batch["filled"], batch["state"]
        C, T1, N = batch["obs"].shape[:3]
        valid = observed(filled).t()  # [T+1, C]: t <= length
        active = active_rows(filled, N)
        obs_tm = batch["obs"].reshape(C, T1, N, -1).transpose(0, 1)
        last_tm = previous_actions(batch["actions"]).transpose(0, 1)
        state_tm = state.reshape(C, T1, -1).transpose(0, 1)
        if active is None:
            local = self.controller.inputs(obs_tm, last_tm)  # [T+1, C, N, L], built once for all three
            teacher_in = self.teacher_inputs(self.fusion, local, state_tm, valid)
            teacher = self.run_agent(self.agent, teacher_in, None)
            with torch.no_grad():
                target_teacher = self.run_agent(
                    self.target_agent, self.teacher_inputs(self.target_fusion, local, state_tm, valid), None
                )
            fused_dim = self.cfg.fusion_dim if self.fusion is not None else self.state_dim
            inside = InsideEpisodes(teacher_in[..., :fused_dim][valid], teacher.embedding[valid.t()])
            if self.cfg.distill_from != "online":
                teacher = teacher._replace(hidden=None, embedding=None)
            return teacher, target_teacher, inside, lambda: self.run_agent(self.student, local, None)
        # Packed rows, step after step: the valid (t, c) positions in order, N agents each (the
        # episodes inside at step t are a prefix, so this is marl.value.fast_gru's packed layout).
        R = C * N
        active = check_active(active, T1, R)
        index = packed_index(active, R, state.device)
        local = self.controller.inputs(obs_tm[valid], last_tm[valid])  # [M, N, L]
        state_v = state_tm[valid]  # [M, S]
        P = index.shape[0]

        def teacher_input(fusion: PersonalizationFusion | None) -> tuple[torch.Tensor, SplitInput]:
            fused = fusion(local, state_v) if fusion is not None else state_v.unsqueeze(1).expand(-1, N, -1)
            own = local if self.cfg.teacher_local_obs else local[..., self.obs_dim :]
            # Only Ŝ's columns of the first layer's input need a gradient (into the fusion block).
            return fused, SplitInput(fused.reshape(P, -1), own.reshape(P, -1))

        def run(agent: RecurrentAgent, packed: torch.Tensor | SplitInput, features: bool = True) -> AgentOutput:
            out = agent.forward_packed(packed, active, index, T1, R, features=features)
            return AgentOutput(*(None if x is None else x.view(T1, C, N, -1).transpose(0, 1) for x in out))

        fused, teacher_in = teacher_input(self.fusion)
        if self.cfg.distill_from == "online":
            teacher = run(self.agent, teacher_in)
            teacher_embedding = teacher.embedding[valid.t()]
        else:  # only the instruments read the online teacher's features: packed rows suffice
            out = self.agent.forward_packed(teacher_in, active, index, T1, R, pad_features=False)
            teacher = AgentOutput(out.q.view(T1, C, N, -1).transpose(0, 1), None, None)
            teacher_embedding = out.embedding
        with torch.no_grad():
            # The target teacher's features are read only when the student is distilled from it:
            # otherwise only its Q-values are scattered back to the padded layout.
            target_features = self.cfg.distill_from == "target"
            target_teacher = run(self.target_agent, teacher_input(self.target_fusion)[1], target_features)
        return (
            teacher,
            target_teacher,
            InsideEpisodes(fused, teacher_embedding),
            lambda: run(self.student, local.reshape(P, -1)),
        )

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The whole update's loss (teacher TD + distillation + IDM + the student's TD term) and
        its statistics, from one graph (``backward`` computes the same gradients in two halves)."""
        teacher_half = self.teacher_half(batch)
        student_half = self.student_half(batch, teacher_half)
        return self.total_loss(teacher_half, student_half), self.update_stats(batch, teacher_half, student_half)

    def backward(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """The gradients of ``compute_loss`` in two halves: the teacher's (TD and IDM) first, whose
        graph is freed before the student's pass is built. The two losses touch disjoint
        parameters (the distillation targets are detached, the student's TD term reads the mixer
        frozen), so every gradient is the one a single backward of the sum gives, and the update's
        peak holds one network's activations instead of both."""
        teacher_half = self.teacher_half(batch)
        (teacher_half.td_loss + teacher_half.idm_loss).backward()
        student_half = self.student_half(batch, teacher_half)
        student_loss = student_half.distill + self.cfg.student_td_weight * student_half.student_td_loss
        if student_loss.requires_grad:  # no distillation term and no TD term: nothing to learn
            student_loss.backward()
        return self.update_stats(batch, teacher_half, student_half)

    def teacher_half(self, batch: dict[str, torch.Tensor]) -> TeacherHalf:
        """The IDM's intrinsic reward and predictor loss, and the teacher's TD loss on r + r_I."""
        cfg = self.cfg
        filled = batch["filled"]
        mask = filled.float()
        state = batch["state"]
        valid = observed(filled).t()  # [T+1, C]: t <= length

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
        teacher, target_teacher, inside, run_student = self.teacher_networks(batch)
        chosen = teacher.q[:, :-1].gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            target_tot = mix_where(
                self.target_mixer,
                self.greedy_target_values(teacher.q, target_teacher.q, batch["avail_actions"]),
                state,
                valid.t(),
            )
            y = self.targets({**batch, "reward": reward}, target_tot)
        q_tot = mix_where(self.mixer, chosen, state[:, :-1], filled)
        td = (q_tot - y) * mask
        td_loss = td.pow(2).sum() / mask.sum()
        stats.update(td_stats(td_loss.detach(), td.detach(), q_tot.detach(), y, mask))
        return TeacherHalf(
            td_loss,
            idm_loss,
            teacher,
            target_teacher,
            inside,
            run_student,
            q_tot.detach(),
            target_tot,
            y,
            reward,
            stats,
        )

    def student_half(self, batch: dict[str, torch.Tensor], teacher_half: TeacherHalf) -> StudentHalf:
        """The student's pass, its distillation from the teacher (outputs detached) and its
        optional TD term of its own."""
        cfg = self.cfg
        filled = batch["filled"]
        mask = filled.float()
        student = teacher_half.run_student()
        source = teacher_half.target_teacher if cfg.distill_from == "target" else teacher_half.teacher
        distill, stats = self.distillation(student, source, batch["avail_actions"][:, :-1], mask)

        # Optional RL signal of the student's own: its chosen Q-values through the (frozen) mixer.
        student_td_loss = torch.zeros((), device=self.device)
        if cfg.student_td_weight > 0:
            chosen_s = student.q[:, :-1].gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
            frozen = {name: p.detach() for name, p in self.mixer.named_parameters()}
            mixer = lambda q, st: torch.func.functional_call(self.mixer, frozen, (q, st))  # noqa: E731
            student_td_loss = student_td(
                mix_where(mixer, chosen_s, batch["state"][:, :-1], filled), teacher_half.y, mask
            )
            stats["student_td_loss"] = float(student_td_loss.detach())
        return StudentHalf(student, distill, student_td_loss, stats)

    def total_loss(self, teacher_half: TeacherHalf, student_half: StudentHalf) -> torch.Tensor:
        return (
            teacher_half.td_loss
            + student_half.distill
            + teacher_half.idm_loss
            + self.cfg.student_td_weight * student_half.student_td_loss
        )

    def update_stats(
        self, batch: dict[str, torch.Tensor], teacher_half: TeacherHalf, student_half: StudentHalf
    ) -> dict[str, float]:
        stats = {**teacher_half.stats, **student_half.stats}
        stats.update(
            self.instruments(
                batch,
                student_half.student,
                teacher_half.teacher,
                teacher_half.inside,
                teacher_half.q_tot,
                teacher_half.target_tot,
                teacher_half.reward,
                observed(batch["filled"]).t(),
            )
        )
        stats["loss"] = float(self.total_loss(teacher_half, student_half).detach())
        return stats

    def distillation(
        self, student: AgentOutput, teacher: AgentOutput, avail: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the chosen distillation losses over real steps [C, T] (outputs [C, T+1, ...],
        avail [C, T, N, A]); ``distill_mask`` "live" keeps live agents and available actions only."""
        cfg = self.cfg
        live = cfg.distill_mask == "live"
        weight = mask.unsqueeze(-1) * (live_agents(avail) if live else torch.ones_like(avail[..., 0]))
        total = torch.zeros((), device=self.device)
        stats: dict[str, float] = {}
        for name in cfg.distill_losses:
            if name == "B":
                term, w = (
                    weighted_mse(student.embedding[:, :-1], teacher.embedding[:, :-1], weight),
                    cfg.distill_weight_b,
                )
            elif name == "F":
                term, w = weighted_mse(student.hidden[:, :-1], teacher.hidden[:, :-1], weight), cfg.distill_weight_f
            elif cfg.distill_q_loss == "kl":
                term = masked_policy_kl(student.q[:, :-1], teacher.q[:, :-1], avail, weight, cfg.distill_temperature)
                w = cfg.distill_weight_q
            else:
                centred = cfg.distill_q_loss == "centred_mse"
                term = q_distill_mse(
                    student.q[:, :-1], teacher.q[:, :-1], avail if (live or centred) else None, weight, centred
                )
                w = cfg.distill_weight_q
            total = total + w * term
            stats[f"distill_{name}"] = float(term.detach())
        return total, stats

    @torch.no_grad()
    def instruments(
        self,
        batch: dict[str, torch.Tensor],
        student: AgentOutput,
        teacher: AgentOutput,
        inside: InsideEpisodes,
        q_tot: torch.Tensor,
        target_tot: torch.Tensor,
        reward: torch.Tensor,
        valid: torch.Tensor,
    ) -> dict[str, float]:
        """What the teacher-student pair is doing, logged per update: greedy agreement on live
        agents' available actions, the teacher's overestimation (Q_tot of the taken actions minus
        the realised discounted return of r + r_I, truncated episodes closed by the target Q_tot),
        and the scale of the personalized state and of both networks' embeddings inside the
        episodes."""
        filled = batch["filled"]
        mask = filled.float()
        n = mask.sum()
        realised = discounted_returns(reward, batch["terminated"], filled, target_tot, self.cfg.gamma)
        vt = valid.t()
        return {
            "greedy_agreement": TeacherStudentStats.greedy_agreement(
                student.q[:, :-1], teacher.q[:, :-1], batch["avail_actions"][:, :-1], mask
            ),
            "realised_return_mean": float((realised * mask).sum() / n),
            "teacher_overestimation": float(((q_tot - realised) * mask).sum() / n),
            "fused_state_rms": TeacherStudentStats.rms_all(inside.fused),
            "teacher_embedding_rms": TeacherStudentStats.rms_all(inside.teacher_embedding),
            "student_embedding_rms": TeacherStudentStats.rms(student.embedding, vt),
        }


def student_td(student_tot: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared TD error of the student's mixed Q [C, T] against the teacher's targets y."""
    return ((student_tot - y) * mask).pow(2).sum() / mask.sum()


class TeacherController(AgentController):
    """The teacher acting (``acting: teacher``): each agent's input is its personalized global
    state (online fusion block) with its local inputs, exactly as in training."""

    def __init__(self, learner: Learner):
        super().__init__(
            learner.agent, learner.n_agents, learner.n_actions, learner.cfg.obs_last_action, learner.cfg.obs_agent_id
        )
        self.learner = learner

    def step_inputs(self, obs: torch.Tensor, last_actions: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        if state is None:
            raise ValueError("the DDN teacher acts on the global state: pass state=")
        local = self.inputs(obs, last_actions).unsqueeze(0)  # [1, B, N, L]
        valid = torch.ones(local.shape[:2], dtype=torch.bool, device=local.device)
        return self.learner.teacher_inputs(self.learner.fusion, local, state.flatten(1).unsqueeze(0), valid)[0]


class MixedController(AgentController):
    """``acting: mixed``: at each episode start (every agent's last action is -1) an environment
    copy draws who acts in it for the whole episode: the teacher with probability
    ``acting_teacher_prob``, else the student. Both networks have the same hidden size, so one
    hidden tensor carries whichever acts in each copy; one epsilon-greedy draw over the chosen Q."""

    def __init__(self, learner: Learner):
        super().__init__(
            learner.student, learner.n_agents, learner.n_actions, learner.cfg.obs_last_action, learner.cfg.obs_agent_id
        )
        self.teacher = TeacherController(learner)
        self.prob = learner.cfg.acting_teacher_prob
        self.teacher_rows: torch.Tensor | None = None  # [B] bool: the teacher acts in this copy

    @torch.no_grad()
    def act(
        self,
        obs: torch.Tensor,
        avail: torch.Tensor,
        last_actions: torch.Tensor,
        hidden: torch.Tensor,
        epsilon: float,
        generator: torch.Generator,
        state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, N = obs.shape[:2]
        starts = (last_actions < 0).all(-1)
        if self.teacher_rows is None or self.teacher_rows.shape[0] != B:
            self.teacher_rows = torch.zeros(B, dtype=torch.bool, device=obs.device)
        if bool(starts.any()):
            draw = torch.rand(B, generator=generator, device=obs.device) < self.prob
            self.teacher_rows = torch.where(starts, draw, self.teacher_rows)
        # Only the network that acts is run when one acts in every copy (always so with one env,
        # the paper profile's): the same values as running both and selecting.
        if bool(self.teacher_rows.all()):
            q, new_hidden = self.teacher.q_step(obs, last_actions, hidden, state)
        elif not bool(self.teacher_rows.any()):
            q, new_hidden = self.q_step(obs, last_actions, hidden, state)
        else:
            q_s, h_s = self.q_step(obs, last_actions, hidden, state)
            q_t, h_t = self.teacher.q_step(obs, last_actions, hidden, state)
            rows = self.teacher_rows.view(B, 1, 1)
            q = torch.where(rows, q_t, q_s)
            new_hidden = torch.where(rows, h_t.view(B, N, -1), h_s.view(B, N, -1)).view(B * N, -1)
        return epsilon_greedy(q, avail, epsilon, generator), new_hidden
