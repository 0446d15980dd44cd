"""RPM, Ranked Policy Memory (Qiu et al., "RPM: Generalizable Behaviors for Multi-Agent RL via
Ranked Policy Memory", NeurIPS 2023; ICLR 2023 submission "RPM: Generalizable Multi-Agent Policies
for Multi-Agent Reinforcement Learning"), on top of MAPPO.

The learner's past actors are kept in a memory ranked by how well they did when saved: every
``save_interval`` PPO updates the actor is saved under the key ``floor(R / psi)``, where R is the
*total* training episode return (summed over the agents, ``rank_return``) of the learner's recent
episodes; ``psi`` (the rank width) is per substrate (:data:`PSI_BY_SUBSTRATE`), since returns differ
in scale between substrates. Each key holds at most ``max_per_key`` snapshots (oldest dropped).

At each episode start an env copy is, with a probability that anneals linearly over the first
``rpm_anneal_fraction`` of the run's PPO updates (``rpm_prob_start`` -> ``rpm_prob_end``), an *RPM
episode*: every agent slot samples its behaviour policy from the memory (a key uniformly among the
non-empty keys, then a snapshot uniformly within it, independently per slot), as the paper's "each
agent can randomly select a policy from the RPM as the behavior policy". Sampling waits until the
memory holds at least ``n_agents`` keys (the official code's rule); until then, and in the other
episodes, the learner plays every slot. All slots' data train the learner (``train_slots``): PPO's
ratio uses the behaviour log-probability of the policy that acted, and the rollout also runs the
learner's actor on the memory-played rows (without acting) so its recurrent state along those
trajectories is known (marl/policy/runner.py, ``record_all_slots``).

Player keys: ``LEARNER`` (0), memory snapshot id ``sid`` -> key ``sid + 1`` (baselines/selfplay.py's
:class:`SnapshotLearner`, which also keeps dropped snapshots alive until no episode plays them).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from baselines.selfplay import SnapshotLearner
from envs.base import EnvSpec
from marl.config import ConfigError
from marl.policy.config import PolicyLearnerConfig
from marl.policy.learner import KIND, build_actor
from marl.policy.runner import LEARNER, Episodes, Rollout

__all__ = [
    "KIND",
    "Config",
    "Learner",
    "build_actor",
    "rank_key",
    "rpm_probability",
    "rpm_assignment",
    "anneal_updates",
    "substrate_psi",
    "PSI_BY_SUBSTRATE",
    "PSI_DEFAULT",
]


# psi, the rank width, per substrate (the paper sets it per substrate; its values are not in our
# sources, so these are *choices*): about one unit of the substrate's typical per-interaction payoff
# on the total episode return, so that random and trained play fall many keys apart. 2-player
# matrix games: payoffs of a few units per interaction, tens of interactions per episode -> 1.
# clean_up (7 players, +1 per apple, totals in the hundreds) -> 10; collaborative_cooking
# (+20 to each of 2 players per delivered dish, so 40 per dish) -> 20. Other scenarios: PSI_DEFAULT.
PSI_BY_SUBSTRATE: dict[str, float] = {
    "prisoners_dilemma_in_the_matrix__repeated": 1.0,
    "stag_hunt_in_the_matrix__repeated": 1.0,
    "chicken_in_the_matrix__repeated": 1.0,
    "pure_coordination_in_the_matrix__repeated": 1.0,
    "rationalizable_coordination_in_the_matrix__repeated": 1.0,
    "running_with_scissors_in_the_matrix__repeated": 1.0,
    "clean_up": 10.0,
    "collaborative_cooking__asymmetric": 20.0,
}
PSI_DEFAULT = 1.0


@dataclass
class Config(PolicyLearnerConfig):
    # Rank width: key = floor(R / psi). None: the run's substrate's value in PSI_BY_SUBSTRATE
    # (PSI_DEFAULT for others); a number overrides it.
    psi: float | None = None  # rank width; None = the substrate's (PSI_BY_SUBSTRATE, *choice* values)
    # What R is. "total": the episode return summed over all agents (the official RPM code ranks the
    # total episode return); "per_capita": the learner's mean return per slot (this suite's earlier
    # reconstruction). Note: in a constant-sum game (running_with_scissors) "total" is the same for
    # every policy, so the memory keeps one key and RPM episodes never start (fewer than n_agents keys).
    rank_return: Literal["total", "per_capita"] = "total"  # official RPM code: total episode return
    # *choice*: which episodes rank a save: "selfplay" = those in which the current learner played
    # every slot (the current policy's own return; RPM episodes measure memory policies), "all" =
    # every episode that ended.
    rank_episodes: Literal["selfplay", "all"] = "selfplay"  # *choice*: the current policy's own episodes
    # The paper: at most 100 policies per key.
    max_per_key: int = 100
    # *choice*: save the actor every 10 PPO updates (as self-play's snapshot_interval).
    save_interval: int = 10
    # *choice* (the paper samples from the memory at episode starts; an annealed probability and its
    # schedule are reconstructions): linear from rpm_prob_start (self-play while the memory fills) to
    # rpm_prob_end over the first rpm_anneal_fraction of the run's PPO updates (the trainer passes
    # the budget), constant after. 0.5 at the end: half the episodes meet past policies, half are
    # the current policy against itself. A learner used without a trainer (no budget) starts annealed.
    rpm_prob_start: float = 0.0  # *choice*: RPM-episode probability at the start (see above)
    rpm_prob_end: float = 0.5  # *choice*: RPM-episode probability after the anneal (see above)
    rpm_anneal_fraction: float = 0.25  # *choice*: anneal over this fraction of the run's PPO updates
    # Who plays an RPM episode. "all": every slot samples a memory policy (the paper: "each agent can
    # randomly select a policy from the RPM as the behavior policy"); "co_players": one uniformly
    # chosen slot keeps the learner (this suite's earlier reconstruction).
    rpm_slots: Literal["all", "co_players"] = "all"  # the paper: every agent samples a memory policy
    # Which slots train the learner. "all": every slot, memory-played ones included (the official
    # code trains on all agents' data); "learner": only the slots the learner played.
    train_slots: Literal["all", "learner"] = "all"  # official code: all agents' data train the learner
    # *choice*: the return that ranks a snapshot is the mean over the ranking episodes that ended in
    # the last rollout, or, if none did (long episodes), over the last `return_window` of them.
    return_window: int = 32

    def validate(self) -> None:
        """Rules beyond the field types (build_config calls this, so a manifest is checked up front)."""
        if self.psi is not None and not self.psi > 0:
            raise ConfigError(f"rpm: psi must be positive, got {self.psi}")
        if self.max_per_key < 1 or self.save_interval < 1 or self.return_window < 1:
            raise ConfigError("rpm: max_per_key, save_interval and return_window must be >= 1")
        for name in ("rpm_prob_start", "rpm_prob_end", "rpm_anneal_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"rpm: {name} must be in [0, 1], got {getattr(self, name)}")


def substrate_psi(cfg: Config, scenario: str) -> float:
    """The rank width in force: ``cfg.psi``, else the substrate's, else PSI_DEFAULT."""
    return cfg.psi if cfg.psi is not None else PSI_BY_SUBSTRATE.get(scenario, PSI_DEFAULT)


def rank_key(ret: float, psi: float) -> int:
    """The memory key of a policy whose training return is ``ret``: floor(ret / psi)."""
    return math.floor(ret / psi)


def rpm_probability(updates: int, start: float, end: float, anneal_updates: int) -> float:
    """Probability that a starting episode is an RPM episode after ``updates`` PPO updates."""
    frac = 1.0 if anneal_updates <= 0 else min(updates / anneal_updates, 1.0)
    return start * (1.0 - frac) + end * frac  # exactly `end` once annealed


def anneal_updates(total_updates: int | None, fraction: float) -> int:
    """Updates over which the RPM probability anneals: ``fraction`` of the run's (0 without a budget)."""
    return 0 if total_updates is None else max(0, round(fraction * total_updates))


def rpm_assignment(
    n_envs: int,
    n_agents: int,
    memory: Sequence[Sequence[int]],
    prob: float,
    generator: torch.Generator,
    all_slots: bool = True,
) -> torch.Tensor:
    """Player keys [n_envs, n_agents] for starting episodes. ``memory`` lists, per rank key, the
    player keys saved under it. While fewer than ``n_agents`` keys are non-empty every copy is
    self-play. Otherwise, with probability ``prob`` a copy is an RPM episode: every slot (or, with
    ``all_slots`` false, every slot but one uniformly chosen learner slot) gets a key drawn
    uniformly among the non-empty rank keys, then a policy uniformly within it, independently per
    slot. Tensors live on the generator's device."""
    dev = generator.device
    keys = torch.full((n_envs, n_agents), LEARNER, dtype=torch.long, device=dev)
    bins = [list(b) for b in memory if len(b)]
    if len(bins) < n_agents or (n_agents == 1 and not all_slots):
        return keys
    rpm_episode = torch.rand(n_envs, generator=generator, device=dev) < prob
    sizes = torch.tensor([len(b) for b in bins], dtype=torch.long, device=dev)
    table = torch.zeros(len(bins), int(sizes.max()), dtype=torch.long, device=dev)
    for i, b in enumerate(bins):
        table[i, : len(b)] = torch.tensor(b, dtype=torch.long, device=dev)
    which = torch.randint(len(bins), (n_envs, n_agents), generator=generator, device=dev)
    u = torch.rand(n_envs, n_agents, generator=generator, device=dev)
    within = torch.minimum((u * sizes[which]).long(), sizes[which] - 1)
    drawn = table[which, within]
    if not all_slots:
        learner_slot = torch.randint(n_agents, (n_envs,), generator=generator, device=dev)
        drawn[torch.arange(n_envs, device=dev), learner_slot] = LEARNER
    return torch.where(rpm_episode.unsqueeze(-1), drawn, keys)


class Learner(SnapshotLearner):
    cfg: Config

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu"):
        cfg.validate()  # again, for configs built by hand rather than by build_config
        super().__init__(cfg, spec, device)
        self.psi = substrate_psi(cfg, spec.scenario)
        self.trains_all_slots = cfg.train_slots == "all"
        self.memory: dict[int, list[int]] = {}  # rank key -> player keys, oldest first
        self.recent_returns: collections.deque[float] = collections.deque(maxlen=cfg.return_window)
        self.save_update = -1  # the update count of the newest save (one per update at most)
        self.total_updates: int | None = None  # the run's, from the trainer (set_budget)

    def set_budget(self, total_updates: int) -> None:
        self.total_updates = int(total_updates)

    def rpm_prob(self) -> float:
        cfg = self.cfg
        return rpm_probability(
            self.updates,
            cfg.rpm_prob_start,
            cfg.rpm_prob_end,
            anneal_updates(self.total_updates, cfg.rpm_anneal_fraction),
        )

    def bins(self) -> list[list[int]]:
        """The memory's non-empty keys in increasing rank order (a deterministic order for sampling)."""
        return [self.memory[k] for k in sorted(self.memory) if self.memory[k]]

    def assign(self, n_envs: int, n_agents: int, generator: torch.Generator) -> torch.Tensor:
        return rpm_assignment(
            n_envs, n_agents, self.bins(), self.rpm_prob(), generator, all_slots=self.cfg.rpm_slots == "all"
        )

    def episode_returns(self, episodes: Episodes) -> list[float]:
        """R of each ending episode that may rank a save (see ``rank_return``, ``rank_episodes``)."""
        if not episodes.count:
            return []
        keep = torch.ones(episodes.count, dtype=torch.bool)
        if self.cfg.rank_episodes == "selfplay":
            keep = (episodes.policy == LEARNER).all(-1).cpu()
        if self.cfg.rank_return == "total":
            values = episodes.returns.sum(-1)
        else:
            values = episodes.per_capita(LEARNER)
            keep &= ~values.isnan().cpu()
        return values.cpu()[keep].tolist()

    def training_return(self, episodes: Episodes) -> float | None:
        """The return that ranks a snapshot saved now (None until a ranking episode has ended)."""
        values = self.episode_returns(episodes)
        if values:
            self.recent_returns.extend(values)
            return sum(values) / len(values)
        if self.recent_returns:
            return sum(self.recent_returns) / len(self.recent_returns)
        return None

    def save(self, ret: float) -> int:
        """Save the current actor under ``rank_key(ret)``; returns that rank key."""
        rank = rank_key(ret, self.psi)
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
        return {
            "rpm_prob": self.rpm_prob(),
            "rpm_keys": float(len(self.bins())),
            "rpm_psi": self.psi,
            "rpm_policies": float(sum(len(b) for b in self.memory.values())),
        }

    def extra_state(self) -> dict[str, Any]:
        return {
            **super().extra_state(),
            "memory": {k: list(v) for k, v in self.memory.items()},
            "recent_returns": list(self.recent_returns),
            "save_update": self.save_update,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.memory = {int(k): [int(x) for x in v] for k, v in state["memory"].items()}
        self.recent_returns = collections.deque(
            (float(x) for x in state["recent_returns"]), maxlen=self.cfg.return_window
        )
        self.save_update = int(state["save_update"])
