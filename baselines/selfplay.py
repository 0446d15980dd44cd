"""Self-play against a pool of the learner's own past checkpoints (BiDist's "self-play" baseline).

MAPPO (marl/policy/learner.py) whose co-players are frozen snapshots of its own actor. Every
``snapshot_interval`` PPO updates the actor is copied into a pool that keeps the ``pool_size``
newest snapshots. At each episode start, every env copy keeps one slot, chosen uniformly, for the
learner; each other slot is the current learner with probability ``latest_prob`` (the recency
bias of methods.md: "70% newest") and otherwise a snapshot drawn uniformly from the pool (the
learner while the pool is empty). All slots the learner plays, including the "newest" co-player
slots, train it (PPO masks by ``policy == LEARNER``); snapshot slots only act.

Player keys: ``LEARNER`` (0) is the trained actor; pool snapshot id ``sid`` plays as key ``sid + 1``.
The pool machinery (:class:`SnapshotLearner`) is shared with RPM (baselines/rpm.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from envs.base import EnvSpec
from marl.policy.config import PolicyLearnerConfig
from marl.policy.learner import KIND, PolicyLearner, build_actor
from marl.policy.runner import LEARNER, Episodes, Rollout
from marl.policy.population import PolicyPool

__all__ = ["KIND", "Config", "Learner", "build_actor", "SnapshotLearner", "selfplay_assignment"]


@dataclass
class Config(PolicyLearnerConfig):
    # *choice*: methods.md names no frequency; every 10 PPO updates (16k env steps at MAPPO's
    # 8 x 200 rollouts) gives the pool a spread of behaviours over a run without near-duplicates.
    snapshot_interval: int = 10
    # *choice*: the 50 newest snapshots (oldest dropped), i.e. the last ~500 updates of history.
    pool_size: int = 50
    # methods.md: "70% newest, else a uniformly random older one" (per co-player slot).
    latest_prob: float = 0.7


def selfplay_assignment(
    n_envs: int, n_agents: int, snapshot_keys: Sequence[int], latest_prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Player keys [n_envs, n_agents] for starting episodes: one uniformly chosen slot per copy is
    the learner; every other slot is the learner with probability ``latest_prob``, else a key drawn
    uniformly from ``snapshot_keys`` (all learner when there are none). Tensors live on the
    generator's device."""
    dev = generator.device
    keys = torch.full((n_envs, n_agents), LEARNER, dtype=torch.long, device=dev)
    if not snapshot_keys or n_agents == 1:
        return keys
    older = torch.rand(n_envs, n_agents, generator=generator, device=dev) >= latest_prob
    pick = torch.randint(len(snapshot_keys), (n_envs, n_agents), generator=generator, device=dev)
    table = torch.tensor(list(snapshot_keys), dtype=torch.long, device=dev)
    keys = torch.where(older, table[pick], keys)
    learner_slot = torch.randint(n_agents, (n_envs,), generator=generator, device=dev)
    keys[torch.arange(n_envs, device=dev), learner_slot] = LEARNER
    return keys


class SnapshotLearner(PolicyLearner):
    """A PolicyLearner whose co-players are frozen snapshots of its own actor, held in a PolicyPool.

    Subclasses decide which snapshots may still be drawn; a snapshot they drop is *retired*, not
    deleted at once, because an episode that started before may still be playing it (episodes span
    rollouts). A key retired at an earlier update can no longer be drawn, so after the next rollout
    it is live only if it appears in that rollout's last step; otherwise it is freed.
    """

    def __init__(self, cfg: PolicyLearnerConfig, spec: EnvSpec, device: torch.device | str = "cpu"):
        super().__init__(cfg, spec, device)
        # Every simultaneously playing snapshot fits in the module cache (no rebuilds per step).
        self.pool = PolicyPool(self._build_frozen, cache_size=max(32, cfg.num_envs * spec.n_agents))
        self.retired: list[int] = []

    def _build_frozen(self) -> nn.Module:
        # The pool (re)builds modules lazily, e.g. after a resume; their random initialisation
        # (overwritten by the snapshot) must not consume the global RNG, or whatever draws from it
        # afterwards would differ between resumed and uninterrupted runs. Built on the CPU.
        with torch.random.fork_rng(devices=[]):
            return self.actor_builder(self.cfg, self.spec).to(self.device)

    def module(self, key: int) -> nn.Module:
        if key == LEARNER:
            return self.actor
        try:
            return self.pool.get(key - 1)
        except KeyError:
            raise KeyError(f"{type(self).__name__} has no co-player {key}") from None

    def snapshot(self) -> int:
        """Copy the current actor into the pool; returns its player key."""
        return self.pool.add(self.actor, update=self.updates) + 1

    def retire(self, key: int) -> None:
        self.retired.append(key)

    def release_retired(self, rollout: Rollout) -> None:
        """Free retired snapshots that no running episode can still be playing (call before retiring
        more in the same update)."""
        if not self.retired:
            return
        live = set(rollout.policy[-1].unique().tolist())
        keep = []
        for key in self.retired:
            if key in live:
                keep.append(key)
            else:
                self.pool.remove(key - 1)
        self.retired = keep

    def extra_state(self) -> dict[str, Any]:
        return {"pool": self.pool.state_dict(), "retired": list(self.retired)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.pool.load_state_dict(state["pool"])
        self.retired = [int(k) for k in state["retired"]]


class Learner(SnapshotLearner):
    cfg: Config

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu"):
        if cfg.snapshot_interval < 1 or cfg.pool_size < 1:
            raise ValueError(
                f"snapshot_interval and pool_size must be >= 1, got {cfg.snapshot_interval}, {cfg.pool_size}"
            )
        if not 0.0 <= cfg.latest_prob <= 1.0:
            raise ValueError(f"latest_prob must be in [0, 1], got {cfg.latest_prob}")
        super().__init__(cfg, spec, device)
        self.active: list[int] = []  # player keys that can be drawn, oldest first
        self.snapshot_update = -1  # the update count of the newest snapshot (one per update at most)

    def assign(self, n_envs: int, n_agents: int, generator: torch.Generator) -> torch.Tensor:
        return selfplay_assignment(n_envs, n_agents, self.active, self.cfg.latest_prob, generator)

    def after_update(self, rollout: Rollout, episodes: Episodes, generator: torch.Generator) -> dict[str, float]:
        self.release_retired(rollout)
        due = self.updates > 0 and self.updates % self.cfg.snapshot_interval == 0
        if due and self.updates != self.snapshot_update:
            self.active.append(self.snapshot())
            self.snapshot_update = self.updates
            while len(self.active) > self.cfg.pool_size:
                self.retire(self.active.pop(0))
        return {"pool_size": float(len(self.active))}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "active": list(self.active), "snapshot_update": self.snapshot_update}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.active = [int(k) for k in state["active"]]
        self.snapshot_update = int(state["snapshot_update"])
