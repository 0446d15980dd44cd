"""RPM, Ranked Policy Memory (Qiu et al., "RPM: Generalizable Multi-Agent Policies for Multi-Agent
Reinforcement Learning", ICLR 2023), on top of MAPPO.

The learner's past actors are kept in a memory ranked by how well they did when saved: every
``save_interval`` PPO updates the actor is saved under the key ``floor(R / psi)``, where R is the
learner's recent mean per-capita training episode return; each key holds at most ``max_per_key``
snapshots (oldest dropped). At each episode start an env copy is, with a probability annealed
linearly over PPO updates (``rpm_prob_start`` -> ``rpm_prob_end`` in ``rpm_anneal_updates``), an
*RPM episode*: one uniformly chosen slot is the learner and every other slot is a memory policy,
drawn by picking a key uniformly among the non-empty keys and then a snapshot uniformly within
it, so every level of past behaviour is equally likely however many snapshots it holds. Other
episodes are plain self-play (the learner in every slot). Only the learner's slots train it.

``psi`` (the rank width) is per substrate in the paper, since returns differ in scale between
substrates: a manifest sets it per scenario (the manifest's per-scenario algorithm overrides).

Player keys: ``LEARNER`` (0), memory snapshot id ``sid`` -> key ``sid + 1`` (baselines/selfplay.py's
:class:`SnapshotLearner`, which also keeps dropped snapshots alive until no episode plays them).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from baselines.selfplay import SnapshotLearner
from envs.base import EnvSpec
from marl.policy_config import PolicyLearnerConfig
from marl.policy_learner import KIND, build_actor
from marl.policy_runner import LEARNER, Episodes, Rollout

__all__ = ["KIND", "Config", "Learner", "build_actor", "rank_key", "rpm_probability", "rpm_assignment"]


@dataclass
class Config(PolicyLearnerConfig):
    # Rank width: key = floor(return / psi). Per substrate in the paper; 1.0 is a neutral default
    # for returns of order 1-100 (set it per scenario in the manifest).
    psi: float = 1.0
    # The paper: at most 100 policies per key.
    max_per_key: int = 100
    # *choice*: save the actor every 10 PPO updates (as self-play's snapshot_interval).
    save_interval: int = 10
    # *choice* (the paper anneals the probability of an RPM episode; its schedule is not in our
    # sources): linear over PPO updates from 0 (self-play while the memory fills) to 0.5 (half the
    # episodes meet past policies, half keep training against itself), reached after 1000 updates
    # (1.6M env steps at MAPPO's 8 x 200 rollouts). Constant after that.
    rpm_prob_start: float = 0.0
    rpm_prob_end: float = 0.5
    rpm_anneal_updates: int = 1000
    # *choice*: the return that ranks a snapshot is the mean over the episodes that ended in the
    # last rollout, or, if none did (long episodes), over the last `return_window` episodes.
    return_window: int = 32


def rank_key(ret: float, psi: float) -> int:
    """The memory key of a policy whose training return is ``ret``: floor(ret / psi)."""
    return math.floor(ret / psi)


def rpm_probability(updates: int, start: float, end: float, anneal_updates: int) -> float:
    """Probability that a starting episode is an RPM episode after ``updates`` PPO updates."""
    frac = 1.0 if anneal_updates <= 0 else min(updates / anneal_updates, 1.0)
    return start * (1.0 - frac) + end * frac  # exactly `end` once annealed


def rpm_assignment(n_envs: int, n_agents: int, memory: Sequence[Sequence[int]], prob: float,
                   generator: torch.Generator) -> torch.Tensor:
    """Player keys [n_envs, n_agents] for starting episodes. ``memory`` lists, per rank key, the
    player keys saved under it. With probability ``prob`` a copy is an RPM episode: one uniformly
    chosen slot is the learner, every other slot gets a key drawn uniformly among the non-empty
    rank keys, then a policy uniformly within it. Other copies (and all, while the memory is empty)
    are self-play. Tensors live on the generator's device."""
    dev = generator.device
    keys = torch.full((n_envs, n_agents), LEARNER, dtype=torch.long, device=dev)
    bins = [list(b) for b in memory if len(b)]
    if not bins or n_agents == 1:
        return keys
    rpm_episode = torch.rand(n_envs, generator=generator, device=dev) < prob
    sizes = torch.tensor([len(b) for b in bins], dtype=torch.long, device=dev)
    table = torch.zeros(len(bins), int(sizes.max()), dtype=torch.long, device=dev)
    for i, b in enumerate(bins):
        table[i, :len(b)] = torch.tensor(b, dtype=torch.long, device=dev)
    which = torch.randint(len(bins), (n_envs, n_agents), generator=generator, device=dev)
    u = torch.rand(n_envs, n_agents, generator=generator, device=dev)
    within = torch.minimum((u * sizes[which]).long(), sizes[which] - 1)
    drawn = table[which, within]
    learner_slot = torch.randint(n_agents, (n_envs,), generator=generator, device=dev)
    drawn[torch.arange(n_envs, device=dev), learner_slot] = LEARNER
    return torch.where(rpm_episode.unsqueeze(-1), drawn, keys)


class Learner(SnapshotLearner):
    cfg: Config

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu"):
        if not cfg.psi > 0:
            raise ValueError(f"psi must be positive, got {cfg.psi}")
        if cfg.max_per_key < 1 or cfg.save_interval < 1 or cfg.return_window < 1:
            raise ValueError("max_per_key, save_interval and return_window must be >= 1")
        for name in ("rpm_prob_start", "rpm_prob_end"):
            if not 0.0 <= getattr(cfg, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(cfg, name)}")
        super().__init__(cfg, spec, device)
        self.memory: dict[int, list[int]] = {}  # rank key -> player keys, oldest first
        self.recent_returns: collections.deque[float] = collections.deque(maxlen=cfg.return_window)
        self.save_update = -1  # the update count of the newest save (one per update at most)

    def rpm_prob(self) -> float:
        cfg = self.cfg
        return rpm_probability(self.updates, cfg.rpm_prob_start, cfg.rpm_prob_end, cfg.rpm_anneal_updates)

    def bins(self) -> list[list[int]]:
        """The memory's non-empty keys in increasing rank order (a deterministic order for sampling)."""
        return [self.memory[k] for k in sorted(self.memory) if self.memory[k]]

    def assign(self, n_envs: int, n_agents: int, generator: torch.Generator) -> torch.Tensor:
        return rpm_assignment(n_envs, n_agents, self.bins(), self.rpm_prob(), generator)

    def training_return(self, episodes: Episodes) -> float | None:
        """The return that ranks a snapshot saved now (None until an episode has ended)."""
        if episodes.count:
            per_capita = episodes.per_capita(LEARNER)
            per_capita = per_capita[~per_capita.isnan()].tolist()
            if per_capita:
                self.recent_returns.extend(per_capita)
                return sum(per_capita) / len(per_capita)
        if self.recent_returns:
            return sum(self.recent_returns) / len(self.recent_returns)
        return None

    def save(self, ret: float) -> int:
        """Save the current actor under ``rank_key(ret)``; returns that rank key."""
        rank = rank_key(ret, self.cfg.psi)
        entries = self.memory.setdefault(rank, [])
        entries.append(self.snapshot())
        while len(entries) > self.cfg.max_per_key:
            self.retire(entries.pop(0))
        return rank

    def after_update(self, rollout: Rollout, episodes: Episodes, generator: torch.Generator) -> dict[str, float]:
        self.release_retired(rollout)
        ret = self.training_return(episodes)
        due = self.updates > 0 and self.updates % self.cfg.save_interval == 0
        if due and ret is not None and self.updates != self.save_update:
            self.save(ret)
            self.save_update = self.updates
        return {"rpm_prob": self.rpm_prob(), "rpm_keys": float(len(self.bins())),
                "rpm_policies": float(sum(len(b) for b in self.memory.values()))}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "memory": {k: list(v) for k, v in self.memory.items()},
                "recent_returns": list(self.recent_returns), "save_update": self.save_update}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.memory = {int(k): [int(x) for x in v] for k, v in state["memory"].items()}
        self.recent_returns = collections.deque((float(x) for x in state["recent_returns"]),
                                                maxlen=self.cfg.return_window)
        self.save_update = int(state["save_update"])
