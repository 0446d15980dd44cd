"""Environment families behind one batched interface (see ``envs/base.py`` for the contract).

Families are imported lazily, so ``import envs`` never pulls in JAX, TensorFlow or Melting Pot.
Each family module provides:

* ``list_scenarios() -> list[str]``
* ``unavailable_reason(scenario) -> str | None`` - why the scenario cannot run on this machine
  (missing StarCraft II, missing Melting Pot bot assets), or None when it can;
* ``scenario_options(scenario, options) -> options dataclass`` - the options checked by the family's
  own rules without building an environment (manifest validation uses it; so does ``make``);
* ``make(scenario, num_envs, seed, device, **options) -> BatchedEnv``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch

from envs.base import (
    BackendUnavailableError,
    BatchedEnv,
    EnvError,
    EnvSpec,
    StepOutput,
    UnknownChoiceError,
)

FAMILIES: dict[str, str] = {
    "predator_prey": "envs.predator_prey",
    "smax": "envs.smax",
    "smac": "envs.smac",
    "meltingpot": "envs.meltingpot",
    "matrix_game": "envs.matrix_game",
}

__all__ = [
    "FAMILIES",
    "BackendUnavailableError",
    "BatchedEnv",
    "EnvError",
    "EnvSpec",
    "StepOutput",
    "UnknownChoiceError",
    "family_module",
    "list_scenarios",
    "make_env",
    "scenario_options",
    "unavailable_reason",
]


def family_module(family: str) -> ModuleType:
    if family not in FAMILIES:
        raise UnknownChoiceError("environment family", family, FAMILIES)
    return importlib.import_module(FAMILIES[family])


def list_scenarios(family: str) -> list[str]:
    """All scenario names of a family (including ones whose backend is missing here)."""
    return list(family_module(family).list_scenarios())


def _check_scenario(family: str, scenario: str) -> ModuleType:
    module = family_module(family)
    scenarios = module.list_scenarios()
    if scenario not in scenarios:
        raise UnknownChoiceError(f"{family} scenario", scenario, scenarios)
    return module


def unavailable_reason(family: str, scenario: str) -> str | None:
    """None when the scenario can run on this machine, else what is missing and how to get it."""
    return _check_scenario(family, scenario).unavailable_reason(scenario)


def scenario_options(family: str, scenario: str, options: dict[str, Any]) -> Any:
    """The scenario's resolved options (an options dataclass), checked by the family's own rules
    without building the environment; raises EnvError saying what is wrong."""
    return _check_scenario(family, scenario).scenario_options(scenario, options)


def make_env(
    family: str,
    scenario: str,
    num_envs: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    **options: Any,
) -> BatchedEnv:
    """Create ``num_envs`` parallel copies of ``scenario`` from ``family``.

    Raises UnknownChoiceError / EnvError for unknown names or options (the message lists the valid
    ones) and BackendUnavailableError when the backend is missing on this machine.
    """
    module = _check_scenario(family, scenario)
    if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
        raise EnvError(f"num_envs must be a positive integer, got {num_envs!r}")
    reason = module.unavailable_reason(scenario)
    if reason is not None:
        raise BackendUnavailableError(reason)
    return module.make(scenario, num_envs=num_envs, seed=seed, device=torch.device(device), **options)
