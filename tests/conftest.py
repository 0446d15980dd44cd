"""Shared pytest set-up.

Tests marked ``@pytest.mark.needs_sc2`` (optionally ``@pytest.mark.needs_sc2("MMM2")`` for a map
other than 3m) are skipped, with the reason, when smacv2, StarCraft II or the map is missing here.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [(item, item.get_closest_marker("needs_sc2")) for item in items]
    marked = [(item, marker) for item, marker in marked if marker is not None]
    if not marked:
        return
    from envs.smac import unavailable_reason  # only when such tests were collected

    reasons: dict[str, str | None] = {}
    for item, marker in marked:
        scenario = marker.args[0] if marker.args else "3m"
        if scenario not in reasons:
            reasons[scenario] = unavailable_reason(scenario)
        if reasons[scenario] is not None:
            item.add_marker(pytest.mark.skip(reason=f"needs StarCraft II: {reasons[scenario]}"))
