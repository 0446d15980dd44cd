"""Rollouts for the on-policy learners, with a possibly different policy in every agent slot.

Every env copy's N agent slots are assigned to *players* at the start of each episode: key
``LEARNER`` (0) is the policy being trained; other keys are co-players (BiDist's distilled policy,
self-play's and RPM's snapshots, a held-out population). Each step, every player present acts once
on all the rows (env copy x slot) it holds, in one batch; only the learner's rows are recorded for
training. Recurrent state is kept per player and reset at episode starts.

A learner that trains on *every* slot (RPM: its memory policies' data trains the learner, Qiu et al.)
asks the collector to record all slots (``record_all_slots``): the learner's actor then also runs,
without acting, on the rows other players hold, so its recurrent state along those trajectories is
known for training, and each row's behaviour log-probability is the one of the player that acted.

The same loop serves training (:meth:`RolloutCollector.collect`, fixed-length rollouts of T steps
from every copy, with critic values) and evaluation (:func:`play_episodes`, complete episodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from envs.base import BatchedEnv, StepOutput
from marl.policy.networks import ActInput, flatten_extra, is_image, preprocess_image

LEARNER = 0


class Players(Protocol):
    def assign(self, n_envs: int, n_agents: int, generator: torch.Generator) -> torch.Tensor:
        """Player keys [n_envs, n_agents] (long) for episodes that are starting."""

    def module(self, key: int) -> nn.Module:
        """The actor of player ``key`` (``act(ActInput, h) -> (logits, h)``, ``initial_hidden(rows)``)."""


class SelfPlayPlayers:
    """One actor in every slot (self-play evaluation; a Melting Pot scenario's focal players)."""

    def __init__(self, actor: nn.Module):
        self.actor = actor

    def assign(self, n_envs: int, n_agents: int, generator: torch.Generator) -> torch.Tensor:
        return torch.full((n_envs, n_agents), LEARNER, dtype=torch.long)

    def module(self, key: int) -> nn.Module:
        return self.actor


def sample_actions(logits: torch.Tensor, greedy: bool, generator: torch.Generator) -> torch.Tensor:
    if greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class _Preprocessor:
    """Raw observations -> stored form, once per step for each downsampling factor in use."""

    def __init__(self, obs_image: bool, state_image: bool):
        self.obs_image, self.state_image = obs_image, state_image
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def clear(self) -> None:
        self.cache.clear()

    def get(self, out_obs: torch.Tensor, out_state: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        if d not in self.cache:
            obs = preprocess_image(out_obs, d) if self.obs_image else out_obs.float()
            state = preprocess_image(out_state, d) if self.state_image else out_state.float()
            self.cache[d] = (obs, state)
        return self.cache[d]


def _downsample(module: nn.Module) -> int:
    enc = getattr(module, "encoder", None)
    return int(getattr(enc, "downsample", 1)) if enc is not None else 1


@dataclass
class Rollout:
    """T steps x B copies x N slots (see RolloutCollector.collect). ``policy == LEARNER`` marks the
    entries that train the learner."""

    obs: torch.Tensor  # [T, B, N, *stored obs]
    extra: torch.Tensor  # [T, B, N, E]
    state: torch.Tensor  # [T, B, *stored state]
    avail: torch.Tensor  # [T, B, N, A] bool
    actions: torch.Tensor  # [T, B, N] long
    logp: torch.Tensor  # [T, B, N] behaviour log-prob (learner rows; every row when all slots are recorded)
    values: torch.Tensor  # [T, B, N] critic output (normalised space when value norm is on)
    final_values: torch.Tensor  # [T, B, N] critic value of the last observation at truncated steps
    last_values: torch.Tensor  # [B, N] critic value after the last step
    rewards: torch.Tensor  # [T, B, N]
    terminated: torch.Tensor  # [T, B] bool
    truncated: torch.Tensor  # [T, B] bool
    starts: torch.Tensor  # [T, B] bool: step t is an episode's first (hidden states reset before it)
    policy: torch.Tensor  # [T, B, N] long player key
    actor_h: torch.Tensor  # [T, B, N, H] learner's hidden state before step t (after any reset; learner rows,
    # every row when all slots are recorded)
    critic_h: torch.Tensor  # [T, B, N, H]
    env_steps: int = 0

    @property
    def learner_mask(self) -> torch.Tensor:
        return self.policy == LEARNER


@dataclass
class Episodes:
    """Episodes that ended during a collection: per-slot returns and player keys."""

    returns: torch.Tensor  # [k, N]
    policy: torch.Tensor  # [k, N]
    won: torch.Tensor  # [k] bool
    lengths: torch.Tensor  # [k]

    @property
    def count(self) -> int:
        return int(self.lengths.shape[0])

    @staticmethod
    def cat(parts: list["Episodes"], n_agents: int) -> "Episodes":
        if not parts:
            return Episodes(
                torch.zeros(0, n_agents),
                torch.zeros(0, n_agents, dtype=torch.long),
                torch.zeros(0, dtype=torch.bool),
                torch.zeros(0, dtype=torch.long),
            )
        return Episodes(*(torch.cat([getattr(p, f) for p in parts]) for f in ("returns", "policy", "won", "lengths")))

    def per_capita(self, key: int = LEARNER) -> torch.Tensor:
        """[k] mean return of the slots held by ``key`` in each episode (NaN where it held none)."""
        mask = (self.policy == key).float()
        return (self.returns * mask).sum(-1) / mask.sum(-1)


@dataclass
class _Acting:
    """Shared per-step acting over an env's copies, for collection and evaluation."""

    env: BatchedEnv
    players: Players
    generator: torch.Generator
    greedy: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # A player key whose actor also runs (without acting) on the rows other players hold, to keep
    # its recurrent state on every row (RPM's every-slot training); None: each player on its own rows.
    shadow_key: int | None = None

    def __post_init__(self) -> None:
        spec = self.env.spec
        self.B, self.N = spec.num_envs, spec.n_agents
        self.pre = _Preprocessor(is_image(spec.obs_shape), is_image(spec.state_shape))
        self.ids = torch.arange(self.N, device=self.device).repeat(self.B)  # [B*N]
        self.hidden: dict[int, torch.Tensor] = {}
        self.assignment = torch.zeros(self.B, self.N, dtype=torch.long, device=self.device)

    def begin(self, out: StepOutput) -> None:
        self.out = out
        self.assignment = self.players.assign(self.B, self.N, self.generator).to(self.device)
        self.hidden.clear()
        self.ep_return = torch.zeros(self.B, self.N, device=self.device)
        self.ep_length = torch.zeros(self.B, dtype=torch.long, device=self.device)

    def reassign(self, ended: torch.Tensor) -> None:
        """New episodes in copies ``ended`` [B] bool: draw their players, reset recurrent state."""
        if not bool(ended.any()):
            return
        idx = ended.nonzero().squeeze(-1)
        self.assignment[idx] = self.players.assign(len(idx), self.N, self.generator).to(self.device)
        present = set(self.assignment.unique().tolist())
        if self.shadow_key is not None:
            present.add(self.shadow_key)
        for key in list(self.hidden):
            if key not in present:
                del self.hidden[key]
            else:
                self.hidden[key].view(self.B, self.N, -1)[idx] = 0.0

    def act(self, record_key: int | None = LEARNER) -> dict[str, torch.Tensor]:
        """One joint action for every copy. Returns actions [B, N], the flattened extra observations
        [B, N, E] and, for ``record_key``'s rows, its log-probs [B, N] and its hidden state before
        the step [B, N, H]. With ``shadow_key == record_key`` the log-probs are every row's behaviour
        log-prob (of the player that acted) and the hidden state is ``record_key``'s on every row."""
        out = self.out
        self.pre.clear()
        extra = (
            flatten_extra(out.obs_extra, 2, self.env.spec).reshape(self.B * self.N, -1)
            if out.obs_extra
            else torch.zeros(self.B * self.N, 0, device=self.device)
        )
        avail = out.avail_actions.reshape(self.B * self.N, -1)
        flat_assign = self.assignment.reshape(-1)
        keys = flat_assign.unique().tolist()
        shadow = record_key is not None and record_key == self.shadow_key
        if shadow and record_key not in keys:
            keys.append(record_key)  # it acts nowhere this step but still runs on every row
        actions = torch.zeros(self.B * self.N, dtype=torch.long, device=self.device)
        behaviour_logp = torch.zeros(self.B * self.N, device=self.device) if shadow else None
        rec: dict[str, torch.Tensor] = {}
        for key in keys:
            module = self.players.module(key)
            obs_p, state_p = self.pre.get(out.obs, out.state, _downsample(module))
            obs_p = obs_p.reshape(self.B * self.N, *obs_p.shape[2:])
            h = self.hidden.get(key)
            if h is None:
                h = self.hidden[key] = module.initial_hidden(self.B * self.N, self.device)
            if len(keys) == 1 or (shadow and key == record_key):
                rows = None
                inp = ActInput(obs_p, extra, self.ids, avail, state_p.repeat_interleave(self.N, 0))
                h_in = h
            else:
                rows = (flat_assign == key).nonzero().squeeze(-1)
                inp = ActInput(
                    obs_p[rows],
                    extra[rows],
                    self.ids[rows],
                    avail[rows],
                    state_p[torch.div(rows, self.N, rounding_mode="floor")],
                )
                h_in = h[rows]
            logits, h_out = module.act(inp, h_in)
            if rows is None and len(keys) > 1:  # the shadow player: it acts on its own rows only
                assert behaviour_logp is not None
                own = (flat_assign == key).nonzero().squeeze(-1)
                if own.numel():
                    a = sample_actions(logits[own], self.greedy, self.generator)
                    actions[own] = a
                    behaviour_logp[own] = torch.log_softmax(logits[own], -1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
                self.hidden[key] = h_out
                rec = {"h": h_in.view(self.B, self.N, -1)}
                continue
            a = sample_actions(logits, self.greedy, self.generator)
            if rows is None:
                actions = a
                self.hidden[key] = h_out
            else:
                actions[rows] = a
                h[rows] = h_out
            if behaviour_logp is not None:
                logp = torch.log_softmax(logits, -1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
                if rows is None:
                    behaviour_logp = logp
                else:
                    behaviour_logp[rows] = logp
                if key == record_key:
                    rec = {"h": h_in.view(self.B, self.N, -1)}
            elif key == record_key:
                logp = torch.log_softmax(logits, -1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
                if rows is None:
                    full_logp, full_h = logp, h_in
                else:
                    full_logp = torch.zeros(self.B * self.N, device=self.device)
                    full_h = torch.zeros(self.B * self.N, h_in.shape[-1], device=self.device)
                    full_logp[rows], full_h[rows] = logp, h_in
                rec = {"logp": full_logp.view(self.B, self.N), "h": full_h.view(self.B, self.N, -1)}
        if behaviour_logp is not None:
            rec["logp"] = behaviour_logp.view(self.B, self.N)
        return {"actions": actions.view(self.B, self.N), "extra": extra.view(self.B, self.N, -1), **rec}

    def step(self, actions: torch.Tensor) -> tuple[StepOutput, Episodes | None]:
        out = self.env.step(actions)
        self.ep_return += out.reward
        self.ep_length += 1
        ended = out.done
        episodes = None
        if bool(ended.any()):
            idx = ended.nonzero().squeeze(-1)
            episodes = Episodes(
                self.ep_return[idx].clone(),
                self.assignment[idx].clone(),
                out.won[idx].clone(),
                self.ep_length[idx].clone(),
            )
            self.ep_return[idx] = 0.0
            self.ep_length[idx] = 0
            self.reassign(ended)
        self.out = out
        return out, episodes


class RolloutCollector:
    """Fixed-length rollouts from B copies for the learner (with its critic)."""

    def __init__(
        self,
        env: BatchedEnv,
        players: Players,
        actor: nn.Module,
        critic: nn.Module,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        record_all_slots: bool = False,
    ):
        self.env, self.actor, self.critic = env, actor, critic
        self.device = torch.device(device)
        self.acting = _Acting(
            env, players, generator, False, self.device, shadow_key=LEARNER if record_all_slots else None
        )
        self.B, self.N = env.spec.num_envs, env.spec.n_agents

    def start(self, seed: int) -> None:
        """Reset every copy with ``seed``; every slot starts a new episode."""
        self.acting.begin(self.env.reset(seed=seed))
        self.next_start = torch.ones(self.B, dtype=torch.bool, device=self.device)
        self.critic_h = self.critic.initial_hidden(self.B * self.N, self.device).view(self.B, self.N, -1)

    def _stored_state(self, state: torch.Tensor, d: int) -> torch.Tensor:
        return preprocess_image(state, d) if self.acting.pre.state_image else state.float()

    @torch.no_grad()
    def collect(self, T: int) -> tuple[Rollout, Episodes]:
        acting, B, N = self.acting, self.B, self.N
        d_actor, d_critic = _downsample(self.actor), self.critic.state_encoder.downsample
        buf: dict[str, list[torch.Tensor]] = {
            k: []
            for k in (
                "obs",
                "extra",
                "state",
                "avail",
                "actions",
                "logp",
                "values",
                "final_values",
                "rewards",
                "terminated",
                "truncated",
                "starts",
                "policy",
                "actor_h",
                "critic_h",
            )
        }
        finished: list[Episodes] = []
        for _ in range(T):
            out = acting.out
            starts = self.next_start
            self.critic_h = self.critic_h * (~starts).view(B, 1, 1).float()
            rec = acting.act(LEARNER)
            obs_p, _ = acting.pre.get(out.obs, out.state, d_actor)
            _, state_c = acting.pre.get(out.obs, out.state, d_critic)
            buf["critic_h"].append(self.critic_h)
            values, self.critic_h = self.critic.step(state_c, self.critic_h)
            policy_before = acting.assignment.clone()  # step() reassigns copies whose episode ends
            new, episodes = acting.step(rec["actions"])
            final_values = torch.zeros(B, N, device=self.device)
            if bool(new.truncated.any()):
                idx = new.truncated.nonzero().squeeze(-1)
                final_state = self._stored_state(new.final_state[idx], d_critic)
                v, _ = self.critic.step(final_state, self.critic_h[idx])
                final_values[idx] = v
            if episodes is not None:
                finished.append(episodes)
            buf["obs"].append(obs_p)
            buf["extra"].append(rec["extra"])
            buf["state"].append(state_c)
            buf["avail"].append(out.avail_actions)
            buf["actions"].append(rec["actions"])
            buf["logp"].append(rec.get("logp", torch.zeros(B, N, device=self.device)))
            buf["actor_h"].append(rec.get("h", torch.zeros(B, N, self.actor.hidden_dim, device=self.device)))
            buf["values"].append(values)
            buf["final_values"].append(final_values)
            buf["rewards"].append(new.reward)
            buf["terminated"].append(new.terminated)
            buf["truncated"].append(new.truncated)
            buf["starts"].append(starts)
            buf["policy"].append(policy_before)
            self.next_start = new.done.clone()
        # Values of the observation after the last step bootstrap the rollout's tail.
        state_c = self._stored_state(acting.out.state, d_critic)
        h = self.critic_h * (~self.next_start).view(B, 1, 1).float()
        last_values, _ = self.critic.step(state_c, h)
        rollout = Rollout(**{k: torch.stack(v) for k, v in buf.items()}, last_values=last_values, env_steps=T * B)
        return rollout, Episodes.cat(finished, N)


@torch.no_grad()
def play_episodes(
    env: BatchedEnv,
    players: Players,
    episodes_per_env: int,
    seed: int,
    greedy: bool,
    device: torch.device | str = "cpu",
) -> Episodes:
    """Play exactly ``episodes_per_env`` complete episodes in every copy of ``env`` (copies that
    finish early keep stepping, their extra episodes are discarded, so short episodes are not
    over-represented). Players are drawn per episode by ``players.assign``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    acting = _Acting(env, players, generator, greedy, torch.device(device))
    acting.begin(env.reset(seed=seed))
    counts = torch.zeros(env.spec.num_envs, dtype=torch.long, device=acting.device)
    parts: list[Episodes] = []
    while bool((counts < episodes_per_env).any()):
        rec = acting.act(record_key=None)
        out, episodes = acting.step(rec["actions"])
        if episodes is not None:
            idx = out.done.nonzero().squeeze(-1)
            keep = counts[idx] < episodes_per_env
            counts[idx] += 1
            parts.append(
                Episodes(episodes.returns[keep], episodes.policy[keep], episodes.won[keep], episodes.lengths[keep])
            )
    return Episodes.cat(parts, env.spec.n_agents)
