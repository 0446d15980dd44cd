"""Building a learner's typed config (both families): profiles, their per-scenario advice, the
user's overrides checked field by field (marl/typed.py), then the config's own ``validate()`` rules.

The value learners' profiles: ``pymarl``, the original PyMARL values the DDN paper used (their
config's defaults, marl/value/config.py), and ``pymarl2``, PyMARL2's tuned set (Adam, large
batches, 8 parallel envs, TD(lambda)); results depend on the number of parallel environments,
which is recorded with every run. The policy learners' profile ``mappo`` is their defaults
(marl/policy/config.py).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

from marl.typed import choices, parse_fields


class ConfigError(ValueError):
    """Unknown key, wrong type or bad value in a learner configuration; the message lists valid keys."""


PROFILES: dict[str, dict[str, Any]] = {
    # Policy-gradient learners (marl/policy/config.py): the dataclass defaults are MAPPO's.
    "mappo": {},
    "pymarl": {},  # the dataclass defaults are the original PyMARL values
    "pymarl2": {
        "optimizer": "adam",
        "lr": 1e-3,
        "batch_size": 128,
        "num_envs": 8,
        "td_lambda": 0.6,
        "epsilon_anneal_time": 100_000,
    },
}

# PyMARL2's per-map advice (its configs' comments): applied on top of the pymarl2 profile.
SCENARIO_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("pymarl2", "6h_vs_8z"): {"td_lambda": 0.3, "epsilon_anneal_time": 500_000},
}


def build_config(
    cls: type, overrides: Mapping[str, Any] | None = None, scenario: str | None = None, where: str = "algorithm config"
) -> Any:
    """Create ``cls`` from its profile (``overrides['profile']`` or the class default), the
    profile's per-scenario advice, then the user's overrides, validating every key, type and choice
    (marl/typed.py) and then the config's own ``validate()`` rules."""
    overrides = dict(overrides or {})
    valid = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    profile = overrides.get("profile", valid["profile"].default if "profile" in valid else "pymarl")
    # The profiles that make sense for this learner kind: its ``profile`` field's Literal.
    allowed = choices(hints["profile"]) if "profile" in hints else tuple(PROFILES)
    if profile not in allowed:
        raise ConfigError(f"unknown profile {profile!r} in {where}; valid profiles: {', '.join(allowed)}")
    values: dict[str, Any] = dict(PROFILES[profile])
    if scenario is not None:
        values.update(SCENARIO_OVERRIDES.get((profile, scenario), {}))
    values = {k: v for k, v in values.items() if k in valid}
    values.update(parse_fields(cls, overrides, where, ConfigError))
    cfg = cls(**values)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
