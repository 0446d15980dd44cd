"""One-step cooperative matrix game (WQMIX paper, Rashid et al. 2020, section 6.1).

Two agents each pick one of A actions; the team reward is ``payoff[a_0][a_1]`` and the episode
terminates after that single step. Observations and the state are a constant vector of ones (the
reference ``matrix_game_simple.py`` uses ``np.ones(5)`` for both), so the game is a pure test of how
a value-factorization method represents a non-monotonic joint payoff.

Scenario ``wqmix_payoff`` is the paper's matrix::

        A    B    C
    A   8  -12  -12
    B -12    0    0
    C -12    0    0

whose optimum (A, A) QMIX's monotonic mixing cannot represent under uniform exploration, while
OW- and CW-QMIX recover it. The payoff is an option (``payoff=[[...], ...]``, square, A >= 2).

Auto-reset follows ``envs/base.py``: every step ends every copy's episode, so each ``step`` returns
the new episode's (identical, constant) observation and the same values as ``final_*``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from envs.base import BatchedEnv, EnvError, EnvSpec, StepOutput, UnknownChoiceError, parse_options

FAMILY = "matrix_game"
N_AGENTS = 2

WQMIX_PAYOFF: tuple[tuple[float, ...], ...] = ((8.0, -12.0, -12.0), (-12.0, 0.0, 0.0), (-12.0, 0.0, 0.0))


@dataclass(frozen=True)
class MatrixGameOptions:
    # Row = agent 0's action, column = agent 1's action; square, at least 2 x 2.
    payoff: list | tuple = WQMIX_PAYOFF
    # Length of the constant observation/state vector (the reference uses 5).
    obs_dim: int = 5

    def __post_init__(self) -> None:  # refused where the options are made (manifest validation too)
        if self.obs_dim < 1:
            raise EnvError(f"{FAMILY}: obs_dim must be >= 1, got {self.obs_dim}")
        _payoff_tensor(self.payoff)


SCENARIOS: dict[str, dict[str, Any]] = {"wqmix_payoff": {}}


def list_scenarios() -> list[str]:
    return list(SCENARIOS)


def unavailable_reason(scenario: str) -> str | None:
    return None  # pure torch


def scenario_options(scenario: str, options: dict[str, Any]) -> MatrixGameOptions:
    """The scenario's options with the user's on top, checked (no environment is built)."""
    if scenario not in SCENARIOS:
        raise UnknownChoiceError(f"{FAMILY} scenario", scenario, list(SCENARIOS))
    return parse_options(MatrixGameOptions, {**SCENARIOS[scenario], **options}, f"{FAMILY} scenario {scenario!r}")


def make(
    scenario: str, num_envs: int = 1, seed: int = 0, device: str | torch.device = "cpu", **options: Any
) -> "MatrixGameEnv":
    opts = scenario_options(scenario, options)
    return MatrixGameEnv(scenario, opts, num_envs=num_envs, seed=seed, device=torch.device(device))


def _payoff_tensor(payoff: Any) -> torch.Tensor:
    try:
        table = torch.tensor(payoff, dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise EnvError(f"{FAMILY}: payoff must be a square list of lists of numbers, got {payoff!r}") from exc
    if table.dim() != 2 or table.shape[0] != table.shape[1] or table.shape[0] < 2:
        raise EnvError(f"{FAMILY}: payoff must be a square A x A matrix with A >= 2, got shape {tuple(table.shape)}")
    return table


class MatrixGameEnv(BatchedEnv):
    """B copies of the one-step two-agent matrix game."""

    def __init__(self, scenario: str, options: MatrixGameOptions, num_envs: int, seed: int, device: torch.device):
        self.device = torch.device(device)
        self.payoff = _payoff_tensor(options.payoff).to(self.device)
        A = self.payoff.shape[0]
        self.spec = EnvSpec(
            family=FAMILY,
            scenario=scenario,
            num_envs=num_envs,
            n_agents=N_AGENTS,
            n_actions=A,
            obs_shape=(options.obs_dim,),
            state_shape=(options.obs_dim,),
            episode_limit=1,
            shared_reward=True,
            has_won=False,
            options={**dataclasses.asdict(options), "payoff": self.payoff.tolist()},
        )
        B = num_envs
        self._obs = torch.ones(B, N_AGENTS, options.obs_dim, device=self.device)
        self._state = torch.ones(B, options.obs_dim, device=self.device)
        self._avail = torch.ones(B, N_AGENTS, A, dtype=torch.bool, device=self.device)
        self._false = torch.zeros(B, dtype=torch.bool, device=self.device)
        self._started = False

    def reset(self, seed: int | None = None) -> StepOutput:
        # Nothing is random: the seed is accepted for the interface and has no effect.
        self._started = True
        return self._output(torch.zeros(self.spec.num_envs, N_AGENTS, device=self.device), self._false)

    def step(self, actions: torch.Tensor) -> StepOutput:
        if not self._started:
            raise EnvError(f"{FAMILY}: call reset() before step()")
        actions = self._check_actions(actions)
        A = self.spec.n_actions
        if bool(((actions < 0) | (actions >= A)).any()):
            raise EnvError(f"{FAMILY}: actions must be in [0, {A}), got {actions.tolist()}")
        team = self.payoff[actions[:, 0], actions[:, 1]]
        return self._output(team.unsqueeze(1).expand(-1, N_AGENTS).clone(), ~self._false)

    def _output(self, reward: torch.Tensor, terminated: torch.Tensor) -> StepOutput:
        # The observation never changes, so the new episode's first observation and the ended
        # episode's last one (final_*) are the same constant tensors.
        return StepOutput(
            obs=self._obs.clone(),
            state=self._state.clone(),
            avail_actions=self._avail.clone(),
            reward=reward,
            terminated=terminated.clone(),
            truncated=self._false.clone(),
            won=self._false.clone(),
            final_obs=self._obs.clone(),
            final_state=self._state.clone(),
            final_avail_actions=self._avail.clone(),
        )
