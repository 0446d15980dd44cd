"""Suite manifests: YAML -> typed, fully validated objects -> RunSpecs with content-hashed ids.

A manifest names a paper, a budget, seeds, scenarios (family + scenario + env options) and
algorithm entries (registry name + label + group + overrides; optionally ``seeds``, a subset of the
suite's, for an arm the comparison needs fewer seeds of). Everything is validated before
anything runs and every problem is reported at once, each naming the file, the field and the valid
choices (:class:`ManifestError`).

Override layers, later wins: ``overrides`` at the top of the manifest, on the scenario entry, on the
algorithm entry. ``budget`` on a scenario entry overrides some of the suite's budget fields for that
scenario (Predator-Prey episodes are longer than SMAX ones, for example).

Availability is not validity: a scenario whose backend is missing here (StarCraft II maps, Melting
Pot bot scenarios) and a registered algorithm whose module cannot be imported here are valid; their
runs carry an ``unavailable`` reason that ``--dry-run`` shows and a real run refuses up front.

Held-out populations (BiDist's evaluation, methods.md "Melting Pot evaluation"): the optional
``heldout`` section adds training runs of policy learners with *other* seeds (group ``heldout``).
They never take part in any focal run's training; after training, every focal policy run is
evaluated in cross-play (suites/crossplay_phase.py) against each co-player kind of ``coplayers``
(COPLAYER_KINDS: round robin against the other algorithms' runs, the held-out runs at the
``checkpoints`` fractions of their training, which they save as extra policy artifacts, a
uniform-random policy, self-play) on one partner schedule for every method, and, on Melting Pot, on
the listed Melting Pot scenarios, whose background is DeepMind's bots (docs/evaluation.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

import envs
from envs.base import EnvError
from marl.budget import Budget
from marl.config import ConfigError
from marl.registry import get_algorithm, list_algorithms

SUITES_DIR = Path(__file__).resolve().parent
PAPERS = ("ddn", "bidist")
TOP_KEYS = (
    "name",
    "paper",
    "description",
    "budget",
    "seeds",
    "overrides",
    "resources",
    "image",
    "scenarios",
    "algorithms",
    "heldout",
)
HELDOUT_KEYS = (
    "seeds",
    "algorithms",
    "budget",
    "episodes",
    "n_focal",
    "bot_scenarios",
    "coplayers",
    "checkpoints",
    "num_envs",
)
# Co-player kinds of the cross-play evaluation (suites/crossplay_phase.py, docs/evaluation.md), each its own
# column of the report: the other algorithms' final policies (round robin, never the focal run's own
# algorithm), the held-out runs at several points of their training, a uniform-random policy (the
# floor), and the focal policy in every seat (self-play: the generalisation gap's reference).
COPLAYER_KINDS = ("round_robin", "heldout", "random", "self_play")
DEFAULT_CHECKPOINTS = (0.1, 0.5, 1.0)  # fractions of training at which held-out runs save their policy
DEFAULT_CROSSPLAY_ENVS = 2  # parallel copies of the cross-play evaluation (the same for every focal run)
HELDOUT_GROUP = "heldout"  # the table group of held-out runs (never a focal row of a report)
MAIN_GROUP = "main"  # the table group of an algorithm entry that names none: the methods' comparison
BUDGET_KEYS = ("env_steps", "eval_interval", "eval_episodes", "checkpoint_interval")
SCENARIO_KEYS = ("family", "scenario", "options", "overrides", "budget")
ALGORITHM_KEYS = ("name", "label", "group", "overrides", "scenarios", "seeds")
RESOURCE_KEYS = ("cpus", "gpus")
DEFAULT_IMAGE = "marl-repro-suite:latest"
SUITE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

# Trainers by algorithm kind (marl/registry.py ``Algorithm.kind``): marl/value/trainer.py, marl/policy/trainer.py.
TRAINER_KINDS = ("value", "policy")
POLICY_KIND = "policy"


class ManifestError(ValueError):
    """Everything wrong with a manifest, one ``file: field: problem`` line per problem."""

    def __init__(self, path: str | Path, problems: list[tuple[str, str]]):
        self.path, self.problems = str(path), problems
        lines = [f"{self.path}: {where}: {what}" if where else f"{self.path}: {what}" for where, what in problems]
        super().__init__("invalid manifest\n  " + "\n  ".join(lines))


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
    unavailable: str | None  # a module that cannot be imported here, or a kind without a trainer
    kind: str | None = None  # "value" | "policy"; None when the module cannot be imported here
    seeds: tuple[int, ...] | None = None  # a subset of the suite's seeds for this entry (None: all)


@dataclass(frozen=True)
class BotScenario:
    """A Melting Pot scenario (``<substrate>_<k>``): the substrate with DeepMind's background bots."""

    name: str
    substrate: str
    unavailable: str | None  # the bots' models are missing here


@dataclass(frozen=True)
class Heldout:
    """The manifest's ``heldout`` section: who the focal policies are evaluated against."""

    seeds: tuple[int, ...]
    algorithms: tuple[AlgorithmEntry, ...]
    budget: dict[str, int]  # overrides of each scenario's budget for the held-out runs
    episodes: int | None  # cross-play episodes per co-player kind, at least (None: the run's eval_episodes)
    n_focal: int | None  # focal slots per episode (None: half the players, marl/policy/crossplay.py)
    bot_scenarios: tuple[BotScenario, ...]
    coplayers: tuple[str, ...] = COPLAYER_KINDS  # co-player kinds evaluated, in COPLAYER_KINDS order
    checkpoints: tuple[float, ...] = DEFAULT_CHECKPOINTS  # fractions of training (1.0: the final policy)
    num_envs: int = DEFAULT_CROSSPLAY_ENVS  # parallel copies of every focal run's cross-play evaluation

    @property
    def snapshots(self) -> tuple[float, ...]:
        """The fractions below 1 that held-out runs save as extra policy artifacts (1.0 is policy.pt)."""
        return tuple(f for f in self.checkpoints if f < 1.0) if "heldout" in self.coplayers else ()


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
    heldout: Heldout | None = None
    runs: tuple["RunSpec", ...] = field(default=())

    @property
    def all_seeds(self) -> tuple[int, ...]:
        """The focal seeds, then the held-out runs' seeds."""
        return self.seeds + (self.heldout.seeds if self.heldout else ())


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
    # Fractions of the budget at which the run saves its policy besides the final policy.pt (held-out
    # runs: the co-players at several skill levels); hashed only when set, so other ids are unchanged.
    snapshots: tuple[float, ...] = ()

    def content(self) -> dict[str, Any]:
        content = {
            "suite": self.suite,
            "paper": self.paper,
            "family": self.family,
            "scenario": self.scenario,
            "env_options": self.env_options,
            "algorithm": self.algorithm,
            "overrides": self.overrides,
            "seed": self.seed,
            "budget": self.budget,
        }
        if self.snapshots:
            content["snapshots"] = list(self.snapshots)
        return content

    @property
    def id(self) -> str:
        return content_id(self.content())

    def to_json(self) -> dict[str, Any]:
        """The spec.json of the run store contract (plus ``memberships``)."""
        return {
            "id": self.id,
            **self.content(),
            "label": self.label,
            "group": self.group,
            "memberships": [{"group": g, "label": lbl} for g, lbl in self.memberships],
        }

    @property
    def is_heldout(self) -> bool:
        return self.group == HELDOUT_GROUP

    def describe(self) -> str:
        return f"{self.family}/{self.scenario} {self.label}{' (held-out)' if self.is_heldout else ''} seed {self.seed}"


def content_id(content: Mapping[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def spec_content_from_json(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed part of a stored spec.json (raises KeyError when a field is missing)."""
    keys = ("suite", "paper", "family", "scenario", "env_options", "algorithm", "overrides", "seed", "budget")
    content = {k: spec[k] for k in keys}
    if spec.get("snapshots"):
        content["snapshots"] = spec["snapshots"]
    return content


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
        raise ManifestError(
            name_or_path,
            [("", f"unknown suite; valid suites: {', '.join(list_suites())} (or a path to a .yaml manifest)")],
        )
    return shipped


def load_suite(name_or_path: str, check_availability: bool = True) -> Suite:
    """Load, validate and expand a manifest. Raises ManifestError listing every problem.

    ``check_availability=False`` skips the probes for missing backends on this machine (for the
    docker backend, where the image - not this machine - must provide them)."""
    path = resolve_manifest(name_or_path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            path,
            [
                (
                    "",
                    f"not a YAML text file (byte {exc.start} is not UTF-8 text); "
                    "a manifest is a .yaml text file like suites/smoke.yaml",
                )
            ],
        ) from None
    except OSError as exc:
        raise ManifestError(path, [("", f"cannot be read: {exc.strerror or exc}")]) from None
    return load_suite_text(path, text, check_availability)


def load_suite_text(origin: str | Path, text: str, check_availability: bool = True) -> Suite:
    """Validate and expand a manifest given as text; ``origin`` names it in the messages (a file,
    or the one-run command's flags)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(origin, [("", f"not valid YAML: {exc}")]) from None
    return _Validator(Path(origin), text, check_availability).suite(data)


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
        if name != "?" and not SUITE_NAME.fullmatch(name):
            # The name is the suite's directory under --out: no separators, nothing hidden.
            self.fail(
                "name",
                f"must be letters, digits, '_', '-' or '.' (not starting with '.' or '-'): it names "
                f"the suite's directory under --out; got {name!r}",
            )
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
        algorithms = self.algorithms(data.get("algorithms"), names, suite_seeds=seeds)
        heldout = self.heldout(data.get("heldout"), seeds, scenarios, algorithms, names)
        if self.problems:
            raise ManifestError(self.path, self.problems)
        suite = Suite(
            name=name,
            paper=paper or "",
            description=str(description).strip(),
            path=self.path,
            text=self.text,
            seeds=seeds,
            resources=resources,
            image=image,
            scenarios=tuple(scenarios),
            algorithms=tuple(algorithms),
            heldout=heldout,
        )
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

    def seeds(self, value: Any, where: str = "seeds") -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            self.fail(where, f"must be a non-empty list of non-negative integers, got {value!r}")
            return ()
        for i, seed in enumerate(value):
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                self.fail(f"{where}[{i}]", f"must be a non-negative integer, got {seed!r}")
        if len(set(map(str, value))) != len(value):
            self.fail(where, f"seeds must be distinct, got {value!r}")
        return tuple(s for s in value if isinstance(s, int) and not isinstance(s, bool))

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
            family, scenario = (
                self.string(item, "family", f"{where}.family"),
                self.string(item, "scenario", f"{where}.scenario"),
            )
            if family is None or scenario is None:
                continue
            if family not in envs.FAMILIES:
                self.fail(
                    f"{where}.family",
                    f"unknown environment family {family!r}; valid choices: {', '.join(envs.FAMILIES)}",
                )
                continue
            choices = envs.list_scenarios(family)
            if scenario not in choices:
                self.fail(
                    f"{where}.scenario", f"unknown {family} scenario {scenario!r}; valid choices: {', '.join(choices)}"
                )
                continue
            if (family, scenario) in seen:
                self.fail(f"{where}.scenario", f"scenario {family}/{scenario} is listed twice")
            seen.add((family, scenario))
            options = self.env_options(
                family, scenario, self.mapping(item.get("options"), f"{where}.options"), f"{where}.options"
            )
            overrides = {**top_overrides, **self.mapping(item.get("overrides"), f"{where}.overrides")}
            scenario_budget = self.budget(item.get("budget"), f"{where}.budget", base=budget)
            unavailable = envs.unavailable_reason(family, scenario) if self.check_availability else None
            entries.append(ScenarioEntry(family, scenario, options, overrides, scenario_budget, unavailable))
        return entries

    def env_options(self, family: str, scenario: str, options: dict, where: str) -> dict[str, Any]:
        try:
            # The family's own rules (types, choices, and e.g. whether the agents fit on the grid),
            # checked without building the environment.
            parsed = envs.scenario_options(family, scenario, options)
        except EnvError as exc:
            self.fail(where, str(exc))
            return options
        # Canonical types (1 -> 1.0 for float options) so equal options hash equally.
        return {key: getattr(parsed, key) for key in options}

    def algorithms(
        self,
        value: Any,
        scenario_names: set[str],
        where: str = "algorithms",
        forced_group: str | None = None,
        suite_seeds: tuple[int, ...] = (),
    ) -> list[AlgorithmEntry]:
        if not isinstance(value, list) or not value:
            self.fail(where, f"must be a non-empty list of algorithm entries, got {value!r}")
            return []
        valid = list_algorithms()
        entries, cells = [], set()
        for i, item in enumerate(value):
            at = f"{where}[{i}]"
            if isinstance(item, str):
                item = {"name": item}
            if not self.keys(item, at, ALGORITHM_KEYS, required=("name",)):
                continue
            name = self.string(item, "name", f"{at}.name")
            if name is None:
                continue
            if name not in valid:
                self.fail(f"{at}.name", f"unknown algorithm {name!r}; valid choices: {', '.join(valid)}")
                continue
            kind, unavailable = algorithm_kind(name)
            if kind is not None and kind not in TRAINER_KINDS:
                unavailable = f"algorithm {name!r} is of kind {kind!r}, which has no trainer"
            if forced_group is not None:
                if "group" in item:
                    self.fail(f"{at}.group", f"held-out runs are always in group {forced_group!r}")
                group = forced_group
            else:
                group = self.string(item, "group", f"{at}.group", default=MAIN_GROUP) or MAIN_GROUP
                if group == HELDOUT_GROUP:
                    self.fail(f"{at}.group", f"group {HELDOUT_GROUP!r} is reserved for the 'heldout' section's runs")
            label = self.string(item, "label", f"{at}.label", default=name) or name
            if (group, label) in cells:
                self.fail(f"{at}.label", f"label {label!r} appears twice in group {group!r}")
            cells.add((group, label))
            restrict = item.get("scenarios")
            if restrict is not None:
                if not isinstance(restrict, list) or not restrict:
                    self.fail(f"{at}.scenarios", f"must be a non-empty list of scenario names, got {restrict!r}")
                    restrict = None
                else:
                    for s in restrict:
                        if s not in scenario_names:
                            self.fail(
                                f"{at}.scenarios",
                                f"{s!r} is not one of this manifest's scenarios: {', '.join(sorted(scenario_names))}",
                            )
                    restrict = tuple(restrict)
            overrides = self.mapping(item.get("overrides"), f"{at}.overrides")
            seeds = None
            if "seeds" in item:
                if forced_group is not None:
                    self.fail(f"{at}.seeds", "held-out runs use heldout.seeds; remove this key")
                else:
                    seeds = self.seeds(item["seeds"], f"{at}.seeds")
                    extra = sorted(set(seeds) - set(suite_seeds))
                    if extra:
                        self.fail(
                            f"{at}.seeds",
                            f"seeds {extra} are not among the suite's seeds {list(suite_seeds)}; an entry "
                            "may run a subset of them (add the seeds to the top-level 'seeds' first)",
                        )
            entries.append(AlgorithmEntry(name, label, group, overrides, restrict, unavailable, kind, seeds))
        return entries

    def heldout(
        self,
        value: Any,
        seeds: tuple[int, ...],
        scenarios: list[ScenarioEntry],
        algorithms: list[AlgorithmEntry],
        scenario_names: set[str],
    ) -> Heldout | None:
        if value is None:
            return None
        if not self.keys(value, "heldout", HELDOUT_KEYS, required=("seeds",)):
            return None
        held_seeds = self.seeds(value.get("seeds"), "heldout.seeds")
        overlap = sorted(set(held_seeds) & set(seeds))
        if overlap:
            self.fail(
                "heldout.seeds",
                f"seeds {overlap} are also focal seeds; held-out seeds must be disjoint from "
                f"the suite's seeds {list(seeds)} (a co-player must never be a focal run's own "
                "training)",
            )
        if "algorithms" in value:
            entries = self.algorithms(value["algorithms"], scenario_names, "heldout.algorithms", HELDOUT_GROUP)
            for i, entry in enumerate(entries):
                if entry.kind is not None and entry.kind != POLICY_KIND:
                    self.fail(
                        f"heldout.algorithms[{i}].name",
                        f"algorithm {entry.name!r} is of kind {entry.kind!r}; "
                        f"held-out co-players must be policy learners (kind "
                        f"{POLICY_KIND!r}, e.g. mappo)",
                    )
        else:  # default: the suite's own policy learners, with their overrides
            entries = [dataclasses.replace(a, group=HELDOUT_GROUP) for a in algorithms if a.kind in (POLICY_KIND, None)]
            if algorithms and not entries:
                self.fail(
                    "heldout.algorithms",
                    "missing, and the suite has no policy learner to default to; name the "
                    "held-out co-players' algorithms (kind 'policy', e.g. mappo)",
                )
        overrides: dict[str, int] = {}
        if value.get("budget") is not None:
            if self.keys(value["budget"], "heldout.budget", BUDGET_KEYS):
                for key, v in value["budget"].items():
                    if key in BUDGET_KEYS and self.positive_int(v, f"heldout.budget.{key}") is not None:
                        overrides[key] = v
        episodes = n_focal = None
        if value.get("episodes") is not None:
            episodes = self.positive_int(value["episodes"], "heldout.episodes")
        if value.get("n_focal") is not None:
            n_focal = self.positive_int(value["n_focal"], "heldout.n_focal")
        bots = self.bot_scenarios(value.get("bot_scenarios"), scenarios)
        coplayers = self.coplayers(value.get("coplayers"))
        checkpoints = self.checkpoints(value.get("checkpoints"))
        num_envs = DEFAULT_CROSSPLAY_ENVS
        if value.get("num_envs") is not None:
            num_envs = self.positive_int(value["num_envs"], "heldout.num_envs") or DEFAULT_CROSSPLAY_ENVS
        return Heldout(
            held_seeds, tuple(entries), overrides, episodes, n_focal, tuple(bots), coplayers, checkpoints, num_envs
        )

    def coplayers(self, value: Any) -> tuple[str, ...]:
        """A non-empty list of co-player kinds (default: all of them), kept in COPLAYER_KINDS order."""
        where = "heldout.coplayers"
        if value is None:
            return COPLAYER_KINDS
        if not isinstance(value, list) or not value:
            self.fail(
                where, f"must be a non-empty list of co-player kinds ({', '.join(COPLAYER_KINDS)}), got {value!r}"
            )
            return COPLAYER_KINDS
        for i, kind in enumerate(value):
            if kind not in COPLAYER_KINDS:
                self.fail(
                    f"{where}[{i}]", f"unknown co-player kind {kind!r}; valid choices: {', '.join(COPLAYER_KINDS)}"
                )
        if len(set(map(str, value))) != len(value):
            self.fail(where, f"co-player kinds must be distinct, got {value!r}")
        if not any(k in value for k in ("round_robin", "heldout", "random")):
            self.fail(
                where,
                "needs at least one co-player the focal policy never met (round_robin, heldout or random); "
                "self_play alone measures no generalisation",
            )
        return tuple(k for k in COPLAYER_KINDS if k in value)

    def checkpoints(self, value: Any) -> tuple[float, ...]:
        """Fractions of training in (0, 1], distinct; 1.0 (the final policy) is always among them."""
        where = "heldout.checkpoints"
        if value is None:
            return DEFAULT_CHECKPOINTS
        if not isinstance(value, list) or not value:
            self.fail(
                where,
                f"must be a non-empty list of fractions of training in (0, 1], e.g. [0.1, 0.5, 1.0]; got {value!r}",
            )
            return DEFAULT_CHECKPOINTS
        out = []
        for i, frac in enumerate(value):
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
                self.fail(
                    f"{where}[{i}]",
                    f"must be a fraction of training in (0, 1] (0.1 = at 10% of the held-out "
                    f"run's env steps), got {frac!r}",
                )
            else:
                out.append(round(float(frac), 6))
        if len(set(out)) != len(out):
            self.fail(where, f"fractions must be distinct, got {value!r}")
        if out and 1.0 not in out:
            self.fail(where, f"must include 1.0 (the held-out runs' final policy), got {value!r}")
        return tuple(sorted(set(out))) or DEFAULT_CHECKPOINTS

    def bot_scenarios(self, value: Any, scenarios: list[ScenarioEntry]) -> list[BotScenario]:
        """``all`` (every Melting Pot scenario of the suite's Melting Pot substrates) or a list of names."""
        if value is None:
            return []
        where = "heldout.bot_scenarios"
        substrates = [s.scenario for s in scenarios if s.family == "meltingpot"]
        if not substrates:
            self.fail(where, "Melting Pot scenarios need a Melting Pot substrate among the suite's scenarios")
            return []
        catalogue = [
            n
            for n in envs.list_scenarios("meltingpot")
            if n.rpartition("_")[0] in substrates and n.rpartition("_")[2].isdigit()
        ]
        if value == "all":
            names = catalogue
        elif isinstance(value, list) and value and all(isinstance(n, str) for n in value):
            names = []
            for name in value:
                if name not in catalogue:
                    self.fail(
                        where,
                        f"{name!r} is not a Melting Pot scenario of this suite's substrates "
                        f"({', '.join(substrates)}); valid choices: {', '.join(catalogue)} (or 'all')",
                    )
                else:
                    names.append(name)
        else:
            self.fail(where, f"must be 'all' or a non-empty list of Melting Pot scenario names, got {value!r}")
            return []
        return [
            BotScenario(
                n, n.rpartition("_")[0], envs.unavailable_reason("meltingpot", n) if self.check_availability else None
            )
            for n in dict.fromkeys(names)
        ]

    def expand(self, suite: Suite) -> list[RunSpec]:
        runs: dict[str, RunSpec] = {}
        self._expand(suite, suite.algorithms, suite.seeds, {}, "algorithms", runs)
        if suite.heldout is not None:
            where = "heldout.algorithms" if suite.heldout.algorithms else "algorithms"
            self._expand(
                suite,
                suite.heldout.algorithms,
                suite.heldout.seeds,
                suite.heldout.budget,
                where,
                runs,
                suite.heldout.snapshots,
            )
        return list(runs.values())

    def _expand(
        self,
        suite: Suite,
        algorithms: tuple[AlgorithmEntry, ...],
        seeds: tuple[int, ...],
        budget_overrides: dict[str, int],
        where: str,
        runs: dict[str, RunSpec],
        snapshots: tuple[float, ...] = (),
    ) -> None:
        for a_index, algo in enumerate(algorithms):
            for scenario in suite.scenarios:
                if algo.scenarios is not None and not {
                    scenario.scenario,
                    f"{scenario.family}/{scenario.scenario}",
                } & set(algo.scenarios):
                    continue
                overrides = self.resolve_overrides(algo, scenario, f"{where}[{a_index}].overrides")
                if overrides is None:
                    continue
                budget = {**scenario.budget.as_dict(), **budget_overrides}
                for seed in algo.seeds if algo.seeds is not None else seeds:
                    spec = RunSpec(
                        suite=suite.name,
                        paper=suite.paper,
                        family=scenario.family,
                        scenario=scenario.scenario,
                        env_options=scenario.options,
                        algorithm=algo.name,
                        label=algo.label,
                        group=algo.group,
                        overrides=overrides,
                        seed=seed,
                        budget=budget,
                        memberships=((algo.group, algo.label),),
                        unavailable=algo.unavailable or scenario.unavailable,
                        snapshots=snapshots,
                    )
                    existing = runs.get(spec.id)
                    if existing is not None:  # the same training fills another table cell
                        spec = dataclasses.replace(existing, memberships=existing.memberships + spec.memberships)
                    runs[spec.id] = spec

    def resolve_overrides(self, algo: AlgorithmEntry, scenario: ScenarioEntry, where: str) -> dict[str, Any] | None:
        merged = {**scenario.overrides, **algo.overrides}
        if algo.kind is None:
            return merged  # its module cannot be imported here, so neither can its config be checked
        try:
            cfg = get_algorithm(algo.name).make_config(merged, scenario=scenario.scenario)
        except ConfigError as exc:
            self.fail(where, f"{exc} (on scenario {scenario.scenario!r})")
            return None
        return {key: getattr(cfg, key) for key in merged}  # canonical types, for stable ids


def algorithm_kind(name: str) -> tuple[str | None, str | None]:
    """(kind, None) for a registered algorithm, or (None, why) when its module cannot be imported here
    (e.g. a learner still being written): its runs are then unavailable, not a validation error."""
    try:
        return get_algorithm(name).kind, None
    except Exception as exc:  # ImportError, or any error raised while importing the module
        return (
            None,
            f"algorithm {name!r} is registered but its module cannot be imported here ({type(exc).__name__}: {exc})",
        )
