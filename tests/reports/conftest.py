"""Synthetic suites shared by the report tests (built and rendered once per session)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.reports.synthetic import FakeRun, write_suite

REPS = 500  # bootstrap resamples in tests (the report's default is 2000); medians do not depend on it

# Final scores per (family, scenario, label); the hand-computed medians below follow from them.
MAIN = {
    ("smax", "3s_vs_5z", "qmix"): [0.5, 0.7, 0.6],
    ("smax", "3s_vs_5z", "vdn"): [0.4, 0.45, 0.5],
    ("smax", "3s_vs_5z", "ow_wqmix"): [0.55, 0.6, 0.62],
    ("smax", "3s_vs_5z", "cw_wqmix"): [0.5, 0.58, 0.66],
    ("smax", "3s_vs_5z", "ddn"): [0.9, 0.97, 0.95],
    ("predator_prey", "stag_hunt", "qmix"): [20.0, 25.0, 30.0],
    ("predator_prey", "stag_hunt", "ddn"): [35.0, 38.0, 40.0],
}
ABLATIONS = [  # (group, label, config overrides, final scores)
    ("ablation_state", "ddn_raw_state", {"personalize": False}, [0.8, 0.82, 0.85]),
    ("ablation_idm", "ddn_no_idm", {"idm": False}, [0.93, 0.95, 0.99]),
    ("ablation_distill", "ddn_distill_B", {"distill_losses": ["B"]}, [0.7, 0.75, 0.8]),
    ("mu_sweep", "ddn_mu_0.1", {"idm_mask_prob": 0.1}, [0.68, 0.7, 0.72]),
    ("mu_sweep", "ddn_mu_0.5", {"idm_mask_prob": 0.5}, [0.83, 0.85, 0.87]),
    ("mu_sweep", "ddn_mu_0.9", {"idm_mask_prob": 0.9}, [0.88, 0.9, 0.92]),
]


def full_runs() -> list[FakeRun]:
    runs = []
    for (family, scenario, label), finals in MAIN.items():
        runs += [FakeRun(family, scenario, label, seed, f) for seed, f in enumerate(finals)]
    for group, label, config, finals in ABLATIONS:
        runs += [
            FakeRun("smax", "3s_vs_5z", label, seed, f, group=group, algorithm="ddn", config=dict(config))
            for seed, f in enumerate(finals)
        ]
    return runs


def partial_runs() -> list[FakeRun]:
    return full_runs() + [
        FakeRun("smax", "3s_vs_5z", "qmix", 3, None, state="pending"),
        FakeRun(
            "smax",
            "3s_vs_5z",
            "ddn",
            3,
            0.2,
            state="failed",
            n_evals=2,
            error="RuntimeError: simulated crash in the learner",
        ),
        FakeRun("smax", "3s_vs_5z", "vdn", 3, 0.1, state="running", n_evals=3),
    ]


@pytest.fixture(scope="session")
def suites(tmp_path_factory):
    root = tmp_path_factory.mktemp("suites")
    return {
        "full": write_suite(root, "full", full_runs(), manifest="name: full\npaper: ddn\n"),
        "partial": write_suite(root, "partial", partial_runs()),
        "empty": write_suite(root, "empty", []),
    }


@pytest.fixture(scope="session")
def rendered(suites):
    from reports.render import render_report

    return {name: render_report(path, reps=REPS) for name, path in suites.items()}


def require_tool(name: str) -> str:
    """The path of a system tool the report tests need. Missing under CI=true is a failure (the
    project installs it: scripts/setup_system.sh); elsewhere the test is skipped with the reason."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed; run scripts/setup_system.sh (apt-get: chromium, poppler-utils)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
