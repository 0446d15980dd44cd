"""One algorithm on one scenario without writing a manifest (as CleanRL's script flags or BenchMARL's
``run.py algorithm=... task=...``): the flags become a one-entry manifest that goes through the same
validation, run store and report as any suite.

    python reproduce.py --algorithm qmix --scenario smax/3m --set lr=0.001 --set env.max_steps=60

``--set KEY=VALUE`` overrides a learner config field; ``--set env.KEY=VALUE`` an environment
option. Values are read as YAML (``0.001``, ``true``, ``[B, Q]``). The budget defaults to the paper
suite of the algorithm's family (``ddn_smax`` for value learners, ``bidist_meltingpot`` for policy
learners) and each of its numbers can be set with ``--env-steps``, ``--eval-interval``,
``--eval-episodes``, ``--checkpoint-interval``. The suite is named after the algorithm and the
scenario (``run_qmix_smax_3m``), so runs of one pair with different overrides share a store folder
and report; each override set is its own label, so they are never pooled as seeds of one method.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from suites.manifest import SUITES_DIR

# The paper suite whose budget a one-run command inherits, by learner kind.
BUDGET_SOURCE = {"value": "ddn_smax", "policy": "bidist_meltingpot"}
PAPER = {"value": "ddn", "policy": "bidist"}
BUDGET_KEYS = ("env_steps", "eval_interval", "eval_episodes", "checkpoint_interval")


class OneRunError(ValueError):
    """A one-run flag that cannot be turned into a manifest; the message says what to pass."""


@dataclass(frozen=True)
class OneRun:
    name: str  # the suite name (store folder)
    label: str  # the algorithm entry's label: the algorithm plus its overrides
    text: str  # the manifest, as YAML


def parse_sets(sets: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` items to (learner overrides, environment options)."""
    overrides: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OneRunError(f"--set {item!r}: expected KEY=VALUE (e.g. --set lr=0.001, --set env.n_agents=4)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise OneRunError(f"--set {item!r}: the value is not valid YAML ({exc.problem})") from None
        target, name = (options, key[4:]) if key.startswith("env.") else (overrides, key)
        if not name:
            raise OneRunError(f"--set {item!r}: no option name after 'env.'")
        if name in target:
            raise OneRunError(f"--set {key} given twice")
        target[name] = value
    return overrides, options


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def one_run(
    algorithm: str, scenario: str, sets: list[str], seeds: list[int] | None, budget: dict[str, int | None]
) -> OneRun:
    """The manifest of one algorithm on one scenario ``family/name``. Unknown algorithms, families,
    scenarios, fields and values are left to the manifest validator, which names the valid choices."""
    family, sep, name = scenario.partition("/")
    if not sep or not family or not name:
        raise OneRunError(
            f"--scenario {scenario!r}: expected FAMILY/SCENARIO, e.g. smax/3m or "
            "predator_prey/stag_hunt (python reproduce.py --list shows them)"
        )
    from marl.registry import get_algorithm

    try:
        kind = get_algorithm(algorithm).kind
    except Exception as exc:  # UnknownAlgorithmError names the valid choices
        raise OneRunError(f"--algorithm: {exc}") from None
    overrides, options = parse_sets(sets)
    source = yaml.safe_load((SUITES_DIR / f"{BUDGET_SOURCE[kind]}.yaml").read_text())["budget"]
    full_budget = {key: budget.get(key) if budget.get(key) is not None else source[key] for key in BUDGET_KEYS}
    label = algorithm + "".join(
        f"+{k}={_show(v)}" for k, v in sorted({**overrides, **{f"env.{k}": v for k, v in options.items()}}.items())
    )
    suite_name = _slug(f"run_{algorithm}_{family}_{name}")
    scenario_entry: dict[str, Any] = {"family": family, "scenario": name}
    if options:
        scenario_entry["options"] = options
    algo_entry: dict[str, Any] = {"name": algorithm, "label": label}
    if overrides:
        algo_entry["overrides"] = overrides
    manifest = {
        "name": suite_name,
        "paper": PAPER[kind],
        "description": f"One-run command: {algorithm} on {family}/{name} (budget from {BUDGET_SOURCE[kind]} "
        "unless set on the command line).",
        "budget": full_budget,
        "seeds": list(seeds) if seeds else [0],
        "scenarios": [scenario_entry],
        "algorithms": [algo_entry],
    }
    return OneRun(suite_name, label, yaml.safe_dump(manifest, sort_keys=False))


def _show(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value).lower() if isinstance(value, bool) else str(value)
