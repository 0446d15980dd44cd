"""Algorithm registry: a manifest names an algorithm; this maps the name to its module.

Each algorithm module exposes ``Config`` (a typed dataclass whose defaults are the reference
implementation's), ``Learner`` (constructed as ``Learner(cfg, env_spec, device)``) and ``KIND``
("value" for the PyMARL-style off-policy learners, "policy" for the on-policy population ones).
Modules are imported lazily so listing algorithms stays cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Mapping

from marl.config import ConfigError, build_config

ALGORITHMS: dict[str, str] = {
    "qmix": "baselines.qmix",
    "vdn": "baselines.vdn",
    "ow_wqmix": "baselines.wqmix",
    "cw_wqmix": "baselines.wqmix",
    "ddn": "algorithms.ddn",
    "mappo": "baselines.mappo",
    "selfplay": "baselines.selfplay",
    "rpm": "baselines.rpm",
    "opre": "baselines.opre",
    "randnet": "baselines.randnet",
    "bidist": "algorithms.bidist",
}


class UnknownAlgorithmError(ConfigError):
    pass


@dataclass(frozen=True)
class Algorithm:
    name: str
    module: ModuleType

    @property
    def config_cls(self) -> type:
        return self.module.configs()[self.name] if hasattr(self.module, "configs") else self.module.Config

    @property
    def kind(self) -> str:
        return self.module.KIND

    def make_config(self, overrides: Mapping[str, Any] | None = None, scenario: str | None = None) -> Any:
        return build_config(self.config_cls, overrides, scenario, where=f"algorithm {self.name!r}")

    def make_learner(self, cfg: Any, spec: Any, device: Any = "cpu") -> Any:
        return self.module.Learner(cfg, spec, device)


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise UnknownAlgorithmError(f"unknown algorithm {name!r}; valid choices: {', '.join(ALGORITHMS)}")
    return Algorithm(name, importlib.import_module(ALGORITHMS[name]))


def list_algorithms() -> list[str]:
    return list(ALGORITHMS)
