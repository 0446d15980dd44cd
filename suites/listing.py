"""``reproduce.py --list``: suites, algorithms, scenarios (with availability here) and backends."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from typing import Any

import envs
from marl.registry import list_algorithms
from suites.manifest import DEFAULT_IMAGE, ManifestError, algorithm_kind, load_suite, list_suites

# Long scenario lists (Melting Pot's 312 scenarios) are summarised past this many names.
MAX_NAMES = 60


def backend_status() -> dict[str, str]:
    status = {"local": f"available ({os.cpu_count()} CPUs)"}
    if importlib.util.find_spec("ray") is None:
        status["ray"] = "not installed (pip package 'ray')"
    else:
        status["ray"] = f"available (ray {importlib.metadata.version('ray')}; a local cluster, or --address)"
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        try:
            client.images.get(DEFAULT_IMAGE)
            status["docker"] = f"available (daemon reachable, image {DEFAULT_IMAGE} present)"
        except docker.errors.ImageNotFound:
            status["docker"] = f"daemon reachable, but image {DEFAULT_IMAGE} is not built (see docker/)"
    except ImportError:
        status["docker"] = "not installed (pip package 'docker')"
    except Exception as exc:
        status["docker"] = f"no Docker daemon reachable ({type(exc).__name__})"
    return status


def _suite_line(name: str) -> str:
    try:
        suite = load_suite(name)
    except ManifestError as exc:
        return f"  {name:<20} INVALID: {exc}"
    unavailable = sum(1 for r in suite.runs if r.unavailable)
    note = f", {unavailable} unavailable here" if unavailable else ""
    if suite.heldout is not None:
        note += f" ({sum(r.is_heldout for r in suite.runs)} held-out)"
    first = suite.description.splitlines()[0] if suite.description else ""
    return f"  {name:<20} {suite.paper:<7} {len(suite.runs):>5} runs{note}  {first}"


def print_listing() -> None:
    print("suites (reproduce.py --suite NAME):")
    for name in list_suites():
        print(_suite_line(name))
    print("\nalgorithms (manifest 'name'):")
    for name in list_algorithms():
        kind, why = algorithm_kind(name)
        print(f"  {name:<12} kind {kind}" if kind else f"  {name:<12} UNAVAILABLE: {why}")
    print("\nscenarios (manifest 'family' / 'scenario'):")
    for family in envs.FAMILIES:
        try:
            names = envs.list_scenarios(family)
        except Exception as exc:  # a family whose library is not installed
            print(f"  {family}: cannot be listed ({type(exc).__name__}: {exc})")
            continue
        reasons: dict[str, Any] = {n: envs.unavailable_reason(family, n) for n in names}
        ok = [n for n in names if reasons[n] is None]
        print(f"  {family}: {len(names)} scenarios, {len(ok)} available here")
        shown = ok if len(ok) <= MAX_NAMES else ok[:MAX_NAMES] + [f"... {len(ok) - MAX_NAMES} more"]
        if shown:
            print("    available: " + ", ".join(shown))
        missing = [n for n in names if reasons[n] is not None]
        if missing:
            example = reasons[missing[0]].partition(": ")[0]
            listed = missing if len(missing) <= 20 else missing[:20] + [f"... {len(missing) - 20} more"]
            print(f"    unavailable here ({example}): " + ", ".join(listed))
    print("\nbackends (--backend):")
    for name, text in backend_status().items():
        print(f"  {name:<8} {text}")


def print_algorithm_fields(name: str) -> None:
    """Every config field of one algorithm: name, type, default, meaning; *choice* marks a
    reconstruction the papers do not fix. Raises ValueError naming the valid algorithms."""
    import dataclasses

    from marl.field_docs import field_docs
    from marl.registry import get_algorithm
    import typing

    from marl.typed import describe

    try:
        algorithm = get_algorithm(name)
    except Exception as exc:
        raise ValueError(str(exc)) from None
    cls = algorithm.config_cls
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    print(
        f"{name} ({algorithm.kind} learner, {cls.__module__}.{cls.__qualname__}); "
        "manifest overrides or --set KEY=VALUE:"
    )
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        doc = docs[f.name]
        mark = " [choice]" if doc.is_choice else ""
        print(f"  {f.name} ({describe(hints[f.name])}) = {default!r}{mark}")
        if doc.doc:
            print(f"      {doc.doc}")
