"""The one batched interface every environment family implements.

An environment holds B parallel copies of a task with N agents each. Everything it returns is a
torch tensor on the environment's device, batched as ``[B, N, ...]`` for per-agent data and
``[B, ...]`` for per-copy data. Actions go in as an integer tensor ``[B, N]``.

Auto-reset semantics (defined here, and only here)
--------------------------------------------------
``step(actions)`` advances every copy by one joint step. A copy whose episode ends in that step
(``terminated`` or ``truncated``) is reset *within the same call*. The returned :class:`StepOutput`
then holds, for that copy:

* ``reward``, ``terminated``, ``truncated`` and ``won`` of the step that *ended* the episode;
* ``obs``, ``obs_extra``, ``state`` and ``avail_actions`` of the *first* step of the new episode,
  i.e. what the agents act on next;
* ``final_obs``, ``final_obs_extra``, ``final_state`` and ``final_avail_actions``: the last
  observation of the episode that just ended (needed to bootstrap truncated episodes). For copies
  whose episode did not end, the ``final_*`` fields equal the current ones.

``terminated`` means the task reached a terminal state (no bootstrapping); ``truncated`` means the
episode limit cut it (bootstrap from ``final_*``). They are never both true. ``won`` is true only on
the step that ended a won episode (SMAC-like tasks; always false elsewhere).

``reset(seed)`` resets every copy; with the same seed (given here or to ``make_env``) the same
sequence of actions yields the same episodes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from marl.typed import parse_fields


class EnvError(ValueError):
    """Bad input to the environment layer (unknown family, scenario or option; bad actions)."""


class UnknownChoiceError(EnvError):
    """A name that is not one of the valid choices; the message lists them."""

    def __init__(self, what: str, got: object, choices: Sequence[str]):
        self.what, self.got, self.choices = what, got, list(choices)
        super().__init__(f"unknown {what} {got!r}; valid choices: {', '.join(map(str, self.choices))}")


class BackendUnavailableError(RuntimeError):
    """The scenario exists but its backend (StarCraft II, Melting Pot bot assets, ...) is missing
    on this machine. The message says what is missing and how to get it."""


@dataclass(frozen=True)
class EnvSpec:
    """Static description of a batched environment."""

    family: str
    scenario: str
    num_envs: int
    n_agents: int
    n_actions: int
    obs_shape: tuple[int, ...]
    state_shape: tuple[int, ...]
    episode_limit: int
    obs_dtype: torch.dtype = torch.float32
    state_dtype: torch.dtype = torch.float32
    # A smaller dtype that holds every observation / state value exactly (e.g. uint8 for a grid
    # of small integers): the replay buffer stores them so and hands out obs_dtype / state_dtype
    # on sampling. None: stored as obs_dtype / state_dtype.
    obs_storage_dtype: torch.dtype | None = None
    state_storage_dtype: torch.dtype | None = None
    # Per-agent extra observations (e.g. Melting Pot's INVENTORY, READY_TO_SHOOT): name -> shape
    # without the [B, N] prefix. Empty for vector-observation tasks.
    extra_obs_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # True when every agent receives the same team reward (SMAC, Predator-Prey).
    shared_reward: bool = True
    # True for SMAC-like tasks whose episodes can be won.
    has_won: bool = False
    # Resolved scenario options (defaults filled in), for provenance and run specs.
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class StepOutput:
    """What ``reset`` and ``step`` return. Shapes: B copies, N agents, A actions."""

    obs: torch.Tensor  # [B, N, *obs_shape]
    state: torch.Tensor  # [B, *state_shape]
    avail_actions: torch.Tensor  # [B, N, A] bool
    reward: torch.Tensor  # [B, N] float32 (equal across agents when spec.shared_reward)
    terminated: torch.Tensor  # [B] bool
    truncated: torch.Tensor  # [B] bool
    won: torch.Tensor  # [B] bool
    final_obs: torch.Tensor  # [B, N, *obs_shape]
    final_state: torch.Tensor  # [B, *state_shape]
    final_avail_actions: torch.Tensor  # [B, N, A] bool
    obs_extra: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B, N, *shape]
    final_obs_extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def done(self) -> torch.Tensor:
        return self.terminated | self.truncated

    @classmethod
    def first(
        cls,
        obs: torch.Tensor,
        state: torch.Tensor,
        avail_actions: torch.Tensor,
        obs_extra: dict[str, torch.Tensor] | None = None,
    ) -> "StepOutput":
        """The output of ``reset``: zero rewards, all flags false, ``final_*`` = the current fields."""
        B, N = avail_actions.shape[:2]
        false = torch.zeros(B, dtype=torch.bool, device=avail_actions.device)
        obs_extra = dict(obs_extra or {})
        return cls(
            obs=obs,
            state=state,
            avail_actions=avail_actions,
            reward=torch.zeros(B, N, device=avail_actions.device),
            terminated=false,
            truncated=false.clone(),
            won=false.clone(),
            final_obs=obs,
            final_state=state,
            final_avail_actions=avail_actions,
            obs_extra=obs_extra,
            final_obs_extra=dict(obs_extra),
        )


class BatchedEnv(ABC):
    """B parallel copies of one scenario; see the module docstring for the auto-reset contract."""

    spec: EnvSpec
    device: torch.device

    @abstractmethod
    def reset(self, seed: int | None = None) -> StepOutput:
        """Reset every copy. Rewards are zero and all flags false in the returned output."""

    @abstractmethod
    def step(self, actions: torch.Tensor) -> StepOutput:
        """Advance every copy by one joint step; ``actions`` is an integer tensor [B, N]."""

    def close(self) -> None:
        """Release processes and other resources. Safe to call more than once."""

    def provenance(self) -> dict[str, Any]:
        """Backend name and versions, for the run's provenance.json."""
        return {"family": self.spec.family, "scenario": self.spec.scenario}

    def __enter__(self) -> "BatchedEnv":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; explicit close() is the contract
        try:
            self.close()
        except Exception:
            pass

    # Helpers shared by implementations -------------------------------------------------------

    def _check_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Validate an action tensor's shape; return it as int64 on the env's device."""
        expected = (self.spec.num_envs, self.spec.n_agents)
        if tuple(actions.shape) != expected:
            raise EnvError(f"actions must have shape {expected} (num_envs, n_agents), got {tuple(actions.shape)}")
        return actions.to(device=self.device, dtype=torch.long)


def parse_options(options_cls: type, options: Mapping[str, Any], where: str) -> Any:
    """Build an options dataclass from user keys: unknown keys, wrong types and values outside a
    ``Literal`` choice are EnvErrors that list the valid options or choices (the same coercion as
    learner configs, marl/typed.py); the dataclass's ``__post_init__`` then checks its own rules."""
    return options_cls(**parse_fields(options_cls, options, where, EnvError, noun="option"))
