"""What the report says about how the numbers were made: the learners' configuration in force
(every field, with the comment its config dataclass gives it, reconstructed choices marked) and the
runs' provenance (commit, package versions, environment backend and version, image digest ...).
Both are read from the runs' provenance.json, so they describe what actually ran."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from reports.collect import SuiteData

# Which runs chose each reconstructed default: algorithm -> field -> {value, evidence, runs}.
CHOICE_EVIDENCE = Path(__file__).with_name("choice_evidence.yaml")

_SKIP_PROVENANCE = {"config", "env_spec"}


@dataclass
class ConfigField:
    name: str
    values: list[tuple[str, list[str]]]  # (value, labels using it), most used first
    default: str
    comment: str
    evidence: dict[str, Any] | None = None  # from choice_evidence.yaml: what chose the default

    @property
    def is_choice(self) -> bool:
        """A reconstruction the papers do not fix (docs/methods.md marks them *choice*)."""
        return "choice" in self.comment.lower()

    @property
    def changed(self) -> bool:
        return any(v != self.default for v, _ in self.values)


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def field_comments(cls: type) -> dict[str, str]:
    """Each dataclass field's documentation (marl/field_docs.py: the comment on its line or above it)."""
    from marl.field_docs import field_docs

    return {name: doc.doc for name, doc in field_docs(cls).items()}


def _config_class(algorithm: str) -> type | None:
    try:
        from marl.registry import get_algorithm

        return get_algorithm(algorithm).config_cls
    except Exception:  # an algorithm this checkout lacks still gets its values printed
        return None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def absent_means(algorithm: str) -> dict[str, Any]:
    """What a config written before a field existed ran for fields whose default did not keep the
    old behaviour (the config class's ``ABSENT_MEANS``; every other field: its class default)."""
    return dict(getattr(_config_class(algorithm), "ABSENT_MEANS", None) or {})


@lru_cache(maxsize=None)
def class_defaults(algorithm: str) -> dict[str, Any]:
    """The algorithm's config fields at their dataclass defaults (not a profile's values); {} when
    this checkout lacks the algorithm."""
    cls = _config_class(algorithm)
    return {f.name: _default(f) for f in dataclasses.fields(cls)} if cls else {}


@lru_cache(maxsize=4)
def choice_evidence(path: Path = CHOICE_EVIDENCE) -> dict[str, dict[str, dict[str, Any]]]:
    """The evidence file, checked: every entry names the value it supports, says what chose it and
    lists the run ids (records/ holds their compact records); an entry for a field the config class
    does not have is an error, so renamed fields cannot leave stale evidence behind."""
    if not path.is_file():
        return {}
    raw = yaml.safe_load(path.read_text()) or {}
    for algorithm, fields in raw.items():
        cls = _config_class(algorithm)
        names = {f.name for f in dataclasses.fields(cls)} if cls else set()
        for name, entry in fields.items():
            where = f"{path.name}: {algorithm}.{name}"
            if name not in names:
                raise ValueError(f"{where}: no such config field of {algorithm!r}")
            missing = {"value", "evidence", "runs"} - set(entry)
            if missing:
                raise ValueError(f"{where}: missing {', '.join(sorted(missing))}")
            if not isinstance(entry["runs"], list):
                raise ValueError(f"{where}: runs must be a list of run ids")
    return raw


def method_choices(data: SuiteData) -> dict[str, list[ConfigField]]:
    """Per algorithm (registry name): every config field, the values in force and which labels use
    each, the dataclass default and its comment."""
    out: dict[str, list[ConfigField]] = {}
    for algorithm, runs in data.runs.groupby("algorithm", sort=True):
        configs = [(r.label, data.provenance.get(r.run_id, {}).get("config")) for r in runs.itertuples()]
        configs = [(label, cfg) for label, cfg in configs if isinstance(cfg, dict)]
        if not configs:
            continue
        cls = _config_class(str(algorithm))
        comments = field_comments(cls) if cls else {}
        class_values = class_defaults(str(algorithm))
        before_field = {**class_values, **absent_means(str(algorithm))}
        defaults = {name: _show(value) for name, value in class_values.items()}
        evidence = choice_evidence().get(str(algorithm), {})
        names = list(dict.fromkeys(k for _, cfg in configs for k in cfg))
        fields = []
        for name in names:
            users: dict[str, list[str]] = {}
            for label, cfg in configs:
                # A run older than a field ran at its class default (a new field's default keeps
                # the old behaviour) unless the class says otherwise (ABSENT_MEANS), as the
                # reproducibility check reads it.
                value = _show(cfg[name] if name in cfg else before_field.get(name))
                if label not in users.setdefault(value, []):
                    users[value].append(label)
            # Most used value first: the template names the labels of the other values only.
            values = sorted(users.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            fields.append(ConfigField(name, values, defaults.get(name, ""), comments.get(name, ""), evidence.get(name)))
        out[str(algorithm)] = fields
    return out


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = _show(value)


def provenance_table(data: SuiteData) -> list[tuple[str, list[tuple[str, int]]]]:
    """(key, [(value, number of runs)]) for every provenance key except the config and env spec,
    which have their own sections."""
    seen: dict[str, dict[str, int]] = {}
    for prov in data.provenance.values():
        flat: dict[str, str] = {}
        for key, value in prov.items():
            if key not in _SKIP_PROVENANCE:
                _flatten(key, value, flat)
        for key, value in flat.items():
            counts = seen.setdefault(key, {})
            counts[value] = counts.get(value, 0) + 1
    return [(key, sorted(counts.items(), key=lambda kv: -kv[1])) for key, counts in sorted(seen.items())]
