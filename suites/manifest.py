"""Suite manifests: YAML -> typed, fully validated objects -> RunSpecs with content-hashed ids.

A manifest names a paper, a budget, seeds, scenarios (family + scenario + env options) and
algorithm entries (registry name + label + group + overrides). Everything is validated before
anything runs and every problem is reported at once, each naming the file, the field and the valid
choices (:class:`ManifestError`).

Override layers, later wins: ``overrides`` at the top of the manifest, on the scenario entry, on the
algorithm entry. ``budget`` on a scenario entry overrides some of the suite's budget fields for that
scenario (Predator-Prey episodes are longer than SMAX ones, for example).

Availability is not validity: a scenario whose backend is missing here (StarCraft II maps, Melting
Pot bot scenarios) and an algorithm that is planned but not implemented yet are valid; their runs
carry an ``unavailable`` reason that ``--dry-run`` shows and a real run refuses up front.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

import envs
from envs.base import EnvError, parse_options
from marl.config import ConfigError
from marl.registry import get_algorithm, list_algorithms

SUITES_DIR = Path(__file__).resolve().parent
PAPERS = ("ddn", "bidist")
TOP_KEYS = ("name", "paper", "description", "budget", "seeds", "overrides", "resources", "image",
            "scenarios", "algorithms")
BUDGET_KEYS = ("env_steps", "eval_interval", "eval_episodes", "checkpoint_interval")
SCENARIO_KEYS = ("family", "scenario", "options", "overrides", "budget")
ALGORITHM_KEYS = ("name", "label", "group", "overrides", "scenarios")
RESOURCE_KEYS = ("cpus", "gpus")
DEFAULT_IMAGE = "marl-repro-suite:latest"

# Learners the papers need that are not in marl/registry.py yet (the BiDist line: its issue adds
# them). A manifest may name them; their runs are marked unavailable instead of failing validation,
# so bidist_meltingpot can be listed and dry-run today. A registered name always takes precedence.
PLANNED_ALGORITHMS: dict[str, str] = {
    "bidist": "BiDist (algorithms/bidist.py)",
    "mappo": "MAPPO (baselines/mappo.py)",
    "selfplay": "self-play (baselines/selfplay.py)",
    "rpm": "RPM (baselines/rpm.py)",
    "opre": "OPRE (baselines/opre.py)",
    "randnet": "RandNet (baselines/randnet.py)",
}
# Trainers by algorithm kind (marl/registry.py ``Algorithm.kind``).
TRAINER_KINDS = ("value",)

# Env option dataclasses per family, to validate options without building an environment.
_OPTION_CLASSES = {
    "predator_prey": "PredatorPreyOptions",
    "smax": "SMAXOptions",
    "meltingpot": "MeltingPotOptions",
    "matrix_game": "MatrixGameOptions",
}


class ManifestError(ValueError):
    """Everything wrong with a manifest, one ``file: field: problem`` line per problem."""

    def __init__(self, path: str | Path, problems: list[tuple[str, str]]):
        self.path, self.problems = str(path), problems
        lines = [f"{self.path}: {where}: {what}" if where else f"{self.path}: {what}" for where, what in problems]
        super().__init__("invalid manifest\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class Budget:
    env_steps: int
    eval_interval: int
    eval_episodes: int
    checkpoint_interval: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Resources:
    """What one run asks the scheduler for (Ray: num_cpus / num_gpus; local: worker slots)."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class ScenarioEntry:
    family: str
    scenario: str
    options: dict[str, Any]
    overrides: dict[str, Any]
    budget: Budget
    unavailable: str | None  # why it cannot run on this machine, or None


@dataclass(frozen=True)
class AlgorithmEntry:
    name: str
    label: str
    group: str
    overrides: dict[str, Any]
    scenarios: tuple[str, ...] | None  # restrict this entry to these scenarios ("name" or "family/name")
    unavailable: str | None  # planned-but-unimplemented algorithm, or a kind without a trainer


@dataclass(frozen=True)
class Suite:
    name: str
    paper: str
    description: str
    path: Path
    text: str  # the manifest as loaded, copied into the run store for provenance
    seeds: tuple[int, ...]
    resources: Resources
    image: str
    scenarios: tuple[ScenarioEntry, ...]
    algorithms: tuple[AlgorithmEntry, ...]
    runs: tuple["RunSpec", ...] = field(default=())


@dataclass(frozen=True)
class RunSpec:
    """One run: (scenario, algorithm + overrides, seed, budget). Its id hashes what determines the
    training (not the table placement), so the same training lands in the same run dir whichever
    tables it appears in; ``memberships`` lists every (group, label) cell it fills."""

    suite: str
    paper: str
    family: str
    scenario: str
    env_options: dict[str, Any]
    algorithm: str
    label: str
    group: str
    overrides: dict[str, Any]
    seed: int
    budget: dict[str, int]
    memberships: tuple[tuple[str, str], ...] = ()
    unavailable: str | None = None  # not stored; recomputed on this machine

    def content(self) -> dict[str, Any]:
        return {"suite": self.suite, "paper": self.paper, "family": self.family, "scenario": self.scenario,
                "env_options": self.env_options, "algorithm": self.algorithm, "overrides": self.overrides,
                "seed": self.seed, "budget": self.budget}

    @property
    def id(self) -> str:
        return content_id(self.content())

    def to_json(self) -> dict[str, Any]:
        """The spec.json of the run store contract (plus ``memberships``)."""
        return {"id": self.id, **self.content(), "label": self.label, "group": self.group,
                "memberships": [{"group": g, "label": lbl} for g, lbl in self.memberships]}

    def describe(self) -> str:
        return f"{self.family}/{self.scenario} {self.label} seed {self.seed}"


def content_id(content: Mapping[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def spec_content_from_json(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed part of a stored spec.json (raises KeyError when a field is missing)."""
    keys = ("suite", "paper", "family", "scenario", "env_options", "algorithm", "overrides", "seed", "budget")
    return {k: spec[k] for k in keys}


# Loading ----------------------------------------------------------------------------------------


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def resolve_manifest(name_or_path: str) -> Path:
    """A shipped suite name (``quick``) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not candidate.is_file():
            raise ManifestError(candidate, [("", "no such manifest file")])
        return candidate
    shipped = SUITES_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ManifestError(name_or_path, [("", f"unknown suite; valid suites: {', '.join(list_suites())} "
                                                 "(or a path to a .yaml manifest)")])
    return shipped


def load_suite(name_or_path: str, check_availability: bool = True) -> Suite:
    """Load, validate and expand a manifest. Raises ManifestError listing every problem.

    ``check_availability=False`` skips the probes for missing backends on this machine (for the
    docker backend, where the image - not this machine - must provide them)."""
    path = resolve_manifest(name_or_path)
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(path, [("", f"not valid YAML: {exc}")]) from None
    return _Validator(path, text, check_availability).suite(data)


class _Validator:
    def __init__(self, path: Path, text: str, check_availability: bool):
        self.path, self.text, self.check_availability = path, text, check_availability
        self.problems: list[tuple[str, str]] = []

    def fail(self, where: str, what: str) -> None:
        self.problems.append((where, what))

    def keys(self, obj: Any, where: str, valid: tuple[str, ...], required: tuple[str, ...] = ()) -> bool:
        if not isinstance(obj, dict):
            self.fail(where, f"must be a mapping with keys {', '.join(valid)}, got {type(obj).__name__}")
            return False
        for key in obj:
            if key not in valid:
                self.fail(f"{where}.{key}" if where else str(key), f"unknown key; valid keys: {', '.join(valid)}")
        for key in required:
            if key not in obj:
                self.fail(f"{where}.{key}" if where else key, "missing (required)")
        return True

    def string(self, obj: dict, key: str, where: str, default: str | None = None) -> str | None:
        value = obj.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(where, f"must be a non-empty string, got {value!r}")
            return None
        return value

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping, got {value!r}")
            return {}
        return dict(value)

    def positive_int(self, value: Any, where: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(where, f"must be a positive integer, got {value!r}")
            return None
        return value

    # ------------------------------------------------------------------------------------------

    def suite(self, data: Any) -> Suite:
        if not self.keys(data, "", TOP_KEYS, required=("name", "paper", "budget", "seeds", "scenarios", "algorithms")):
            raise ManifestError(self.path, self.problems)
        name = self.string(data, "name", "name") or "?"
        paper = self.string(data, "paper", "paper")
        if paper is not None and paper not in PAPERS:
            self.fail("paper", f"unknown paper {paper!r}; valid choices: {', '.join(PAPERS)}")
        description = data.get("description") or ""
        budget = self.budget(data.get("budget"), "budget", base=None)
        seeds = self.seeds(data.get("seeds"))
        resources = self.resources(data.get("resources"))
        image = self.string(data, "image", "image", default=DEFAULT_IMAGE) or DEFAULT_IMAGE
        top_overrides = self.mapping(data.get("overrides"), "overrides")

        scenarios = self.scenarios(data.get("scenarios"), budget, top_overrides)
        names = {s.scenario for s in scenarios} | {f"{s.family}/{s.scenario}" for s in scenarios}
        algorithms = self.algorithms(data.get("algorithms"), names)
        if self.problems:
            raise ManifestError(self.path, self.problems)
        suite = Suite(name=name, paper=paper or "", description=str(description).strip(), path=self.path,
                      text=self.text, seeds=seeds, resources=resources, image=image,
                      scenarios=tuple(scenarios), algorithms=tuple(algorithms))
        runs = self.expand(suite)
        if self.problems:
            raise ManifestError(self.path, self.problems)
        return dataclasses.replace(suite, runs=tuple(runs))

    def budget(self, value: Any, where: str, base: Budget | None) -> Budget:
        fallback = Budget(1, 1, 1, 1)
        if base is None and value is None:
            self.fail(where, "missing (required)")
            return fallback
        if value is None:
            return base  # type: ignore[return-value]
        required = ("env_steps", "eval_interval", "eval_episodes") if base is None else ()
        if not self.keys(value, where, BUDGET_KEYS, required):
            return fallback
        fields = base.as_dict() if base is not None else {}
        for key in BUDGET_KEYS:
            if key in value:
                fields[key] = self.positive_int(value[key], f"{where}.{key}") or 1
        if "checkpoint_interval" not in fields:
            # A checkpoint every 10% of the budget bounds what a kill loses without slowing runs.
            fields["checkpoint_interval"] = max(1, fields.get("env_steps", 1) // 10)
        if any(k not in fields for k in BUDGET_KEYS):
            return fallback
        return Budget(**fields)

    def seeds(self, value: Any) -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            self.fail("seeds", f"must be a non-empty list of non-negative integers, got {value!r}")
            return ()
        for i, seed in enumerate(value):
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                self.fail(f"seeds[{i}]", f"must be a non-negative integer, got {seed!r}")
        if len(set(map(str, value))) != len(value):
            self.fail("seeds", f"seeds must be distinct, got {value!r}")
        return tuple(value)

    def resources(self, value: Any) -> Resources:
        if value is None:
            return Resources()
        if not self.keys(value, "resources", RESOURCE_KEYS):
            return Resources()
        out = {}
        for key in RESOURCE_KEYS:
            if key in value:
                v = value[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    self.fail(f"resources.{key}", f"must be a non-negative number, got {v!r}")
                else:
                    out[key] = float(v)
        if out.get("cpus", 1.0) <= 0:
            self.fail("resources.cpus", "must be > 0")
        return Resources(**out)

    def scenarios(self, value: Any, budget: Budget, top_overrides: dict) -> list[ScenarioEntry]:
        if not isinstance(value, list) or not value:
            self.fail("scenarios", f"must be a non-empty list of scenario entries, got {value!r}")
            return []
        entries, seen = [], set()
        for i, item in enumerate(value):
            where = f"scenarios[{i}]"
            if not self.keys(item, where, SCENARIO_KEYS, required=("family", "scenario")):
                continue
            family, scenario = self.string(item, "family", f"{where}.family"), self.string(item, "scenario", f"{where}.scenario")
            if family is None or scenario is None:
                continue
            if family not in envs.FAMILIES:
                self.fail(f"{where}.family", f"unknown environment family {family!r}; valid choices: {', '.join(envs.FAMILIES)}")
                continue
            choices = envs.list_scenarios(family)
            if scenario not in choices:
                self.fail(f"{where}.scenario", f"unknown {family} scenario {scenario!r}; valid choices: {', '.join(choices)}")
                continue
            if (family, scenario) in seen:
                self.fail(f"{where}.scenario", f"scenario {family}/{scenario} is listed twice")
            seen.add((family, scenario))
            options = self.env_options(family, scenario, self.mapping(item.get("options"), f"{where}.options"), f"{where}.options")
            overrides = {**top_overrides, **self.mapping(item.get("overrides"), f"{where}.overrides")}
            scenario_budget = self.budget(item.get("budget"), f"{where}.budget", base=budget)
            unavailable = envs.unavailable_reason(family, scenario) if self.check_availability else None
            entries.append(ScenarioEntry(family, scenario, options, overrides, scenario_budget, unavailable))
        return entries

    def env_options(self, family: str, scenario: str, options: dict, where: str) -> dict[str, Any]:
        module = envs.family_module(family)
        cls = module.options_class(scenario) if family == "smac" else getattr(module, _OPTION_CLASSES[family])
        try:
            parsed = parse_options(cls, options, f"{family} scenario {scenario!r}")
        except EnvError as exc:
            self.fail(where, str(exc))
            return options
        # Canonical types (1 -> 1.0 for float options) so equal options hash equally.
        return {key: getattr(parsed, key) for key in options}

    def algorithms(self, value: Any, scenario_names: set[str]) -> list[AlgorithmEntry]:
        if not isinstance(value, list) or not value:
            self.fail("algorithms", f"must be a non-empty list of algorithm entries, got {value!r}")
            return []
        valid = list_algorithms()
        entries, cells = [], set()
        for i, item in enumerate(value):
            where = f"algorithms[{i}]"
            if isinstance(item, str):
                item = {"name": item}
            if not self.keys(item, where, ALGORITHM_KEYS, required=("name",)):
                continue
            name = self.string(item, "name", f"{where}.name")
            if name is None:
                continue
            unavailable = None
            if name in valid:
                kind = get_algorithm(name).kind
                if kind not in TRAINER_KINDS:
                    unavailable = f"algorithm {name!r} is of kind {kind!r}, which has no trainer yet"
            elif name in PLANNED_ALGORITHMS:
                unavailable = f"algorithm {name!r} is not implemented yet ({PLANNED_ALGORITHMS[name]} is planned)"
            else:
                self.fail(f"{where}.name", f"unknown algorithm {name!r}; valid choices: {', '.join(valid)} "
                                           f"(planned, not implemented yet: {', '.join(PLANNED_ALGORITHMS)})")
                continue
            label = self.string(item, "label", f"{where}.label", default=name) or name
            group = self.string(item, "group", f"{where}.group", default="main") or "main"
            if (group, label) in cells:
                self.fail(f"{where}.label", f"label {label!r} appears twice in group {group!r}")
            cells.add((group, label))
            restrict = item.get("scenarios")
            if restrict is not None:
                if not isinstance(restrict, list) or not restrict:
                    self.fail(f"{where}.scenarios", f"must be a non-empty list of scenario names, got {restrict!r}")
                    restrict = None
                else:
                    for s in restrict:
                        if s not in scenario_names:
                            self.fail(f"{where}.scenarios", f"{s!r} is not one of this manifest's scenarios: "
                                                            f"{', '.join(sorted(scenario_names))}")
                    restrict = tuple(restrict)
            overrides = self.mapping(item.get("overrides"), f"{where}.overrides")
            entries.append(AlgorithmEntry(name, label, group, overrides, restrict, unavailable))
        return entries

    def expand(self, suite: Suite) -> list[RunSpec]:
        runs: dict[str, RunSpec] = {}
        for a_index, algo in enumerate(suite.algorithms):
            for scenario in suite.scenarios:
                if algo.scenarios is not None and not {scenario.scenario, f"{scenario.family}/{scenario.scenario}"} & set(algo.scenarios):
                    continue
                overrides = self.resolve_overrides(algo, scenario, f"algorithms[{a_index}].overrides")
                if overrides is None:
                    continue
                for seed in suite.seeds:
                    spec = RunSpec(suite=suite.name, paper=suite.paper, family=scenario.family,
                                   scenario=scenario.scenario, env_options=scenario.options, algorithm=algo.name,
                                   label=algo.label, group=algo.group, overrides=overrides, seed=seed,
                                   budget=scenario.budget.as_dict(), memberships=((algo.group, algo.label),),
                                   unavailable=algo.unavailable or scenario.unavailable)
                    existing = runs.get(spec.id)
                    if existing is not None:  # the same training fills another table cell
                        spec = dataclasses.replace(existing, memberships=existing.memberships + spec.memberships)
                    runs[spec.id] = spec
        return list(runs.values())

    def resolve_overrides(self, algo: AlgorithmEntry, scenario: ScenarioEntry, where: str) -> dict[str, Any] | None:
        merged = {**scenario.overrides, **algo.overrides}
        if algo.name not in list_algorithms():
            return merged  # planned algorithm: its config cannot be checked yet
        try:
            cfg = get_algorithm(algo.name).make_config(merged, scenario=scenario.scenario)
        except ConfigError as exc:
            self.fail(where, f"{exc} (on scenario {scenario.scenario!r})")
            return None
        return {key: getattr(cfg, key) for key in merged}  # canonical types, for stable ids
