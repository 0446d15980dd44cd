"""Bad input as a new user meets it: each case runs `reproduce.py` as a subprocess, the way the README
runs it, and must end with exit code 2, a message that names the problem and the valid choices or the
fix, no traceback, and nothing written under --out. The in-process table in test_manifest.py covers
the manifest validator field by field; this table is the user's view of the whole command."""

from __future__ import annotations

import copy
import os
import socket
import time
from pathlib import Path

import pytest

from tests.suites.conftest import TINY, run_reproduce, write_manifest

DDN_TINY = {
    **copy.deepcopy(TINY),
    "scenarios": [{"family": "smax", "scenario": "3m"}],
    "algorithms": [{"name": "ddn"}],
    "seeds": [0],
}
POLICY_TINY = {
    "name": "ptiny",
    "paper": "bidist",
    "budget": {"env_steps": 2000, "eval_interval": 1000, "eval_episodes": 2},
    "seeds": [0],
    "scenarios": [{"family": "meltingpot", "scenario": "stag_hunt_in_the_matrix__repeated"}],
    "algorithms": [{"name": "mappo"}],
}


def _manifest(base: dict, edit) -> dict:
    data = copy.deepcopy(base)
    edit(data)
    return data


def _set(path: tuple, value):
    def edit(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


# (id, manifest dict or None for the plain TINY manifest, extra flags, fragments the message must hold)
CASES = [
    # The table.
    (
        "choice-acting",
        _manifest(DDN_TINY, _set(("algorithms", 0, "overrides"), {"acting": "teachr"})),
        [],
        ["acting", "'teachr'", "student", "teacher", "mixed"],
    ),
    (
        "choice-distill_q_loss",
        _manifest(DDN_TINY, _set(("algorithms", 0, "overrides"), {"distill_q_loss": "msee"})),
        [],
        ["distill_q_loss", "'msee'", "mse", "centred_mse", "kl"],
    ),
    (
        "choice-mixer",
        _manifest(TINY, _set(("algorithms", 0, "overrides"), {"mixer": "qmixx"})),
        [],
        ["mixer", "'qmixx'", "qmix"],
    ),
    (
        "choice-optimizer",
        _manifest(TINY, _set(("algorithms", 0, "overrides"), {"optimizer": "adamw"})),
        [],
        ["optimizer", "'adamw'", "rmsprop", "adam"],
    ),
    (
        "choice-cw_compare",
        _manifest(TINY, _set(("algorithms", 0), {"name": "cw_wqmix", "overrides": {"cw_compare": "qtott"}})),
        [],
        ["cw_compare", "'qtott'", "central", "qtot"],
    ),
    (
        "choice-eval_actions",
        _manifest(POLICY_TINY, _set(("algorithms", 0, "overrides"), {"eval_actions": "greedyy"})),
        [],
        ["eval_actions", "'greedyy'", "auto", "greedy", "sample"],
    ),
    (
        "env-rule-grid",
        _manifest(TINY, _set(("scenarios", 0, "options"), {"grid_width": 1, "grid_height": 1, "n_agents": 2})),
        [],
        ["scenarios[0].options", "grid"],
    ),
    (
        "env-rule-grid-dry-run",
        _manifest(TINY, _set(("scenarios", 0, "options"), {"grid_width": 1, "grid_height": 1, "n_agents": 2})),
        ["--dry-run"],
        ["scenarios[0].options", "grid"],
    ),
    # A user's typo in every other kind of field.
    ("typo-top-level-key", _manifest(TINY, _set(("seed",), [0])), [], ["seed: unknown key", "seeds"]),
    (
        "typo-family",
        _manifest(TINY, _set(("scenarios", 0, "family"), "predator-prey")),
        [],
        ["unknown environment family 'predator-prey'", "predator_prey"],
    ),
    (
        "typo-scenario",
        _manifest(TINY, _set(("scenarios", 0, "scenario"), "stag_hunt_smal")),
        [],
        ["unknown predator_prey scenario", "stag_hunt_small"],
    ),
    (
        "typo-algorithm",
        _manifest(TINY, _set(("algorithms", 0, "name"), "qmxi")),
        [],
        ["unknown algorithm 'qmxi'", "qmix"],
    ),
    (
        "typo-env-option",
        _manifest(TINY, _set(("scenarios", 0, "options"), {"grid_widht": 5})),
        [],
        ["unknown option(s) ['grid_widht']", "grid_width"],
    ),
    (
        "typo-learner-field",
        _manifest(TINY, _set(("algorithms", 0, "overrides"), {"lr_rate": 0.1})),
        [],
        ["unknown key(s) ['lr_rate']", "lr"],
    ),
    (
        "wrong-type-learner-field",
        _manifest(TINY, _set(("algorithms", 0, "overrides"), {"batch_size": "big"})),
        [],
        ["'batch_size' must be int"],
    ),
    (
        "typo-profile",
        _manifest(TINY, _set(("overrides",), {"profile": "pymarl3"})),
        [],
        ["unknown profile 'pymarl3'", "pymarl2"],
    ),
    (
        "typo-budget-key",
        _manifest(TINY, _set(("budget", "eval_intreval"), 500)),
        [],
        ["budget.eval_intreval: unknown key", "eval_interval"],
    ),
    ("typo-seed-flag", None, ["--seeds", "0,9"], ["--seeds", "not in suite 'tiny''s seeds 0, 1, 2"]),
    ("typo-only-flag", None, ["--only", "algorithm=qmxi"], ["qmxi", "valid choices: qmix"]),
    ("typo-suite-name", "no_such_suite", [], ["unknown suite; valid suites:", "quick"]),
    ("typo-backend", None, ["--backend", "rey"], ["invalid choice: 'rey'", "local", "ray", "docker"]),
    # A replay no machine here can hold (it would fill, and be killed, hours in): refused up front.
    (
        "replay-larger-than-memory",
        _manifest(TINY, _set(("overrides",), {"batch_size": 8, "buffer_size": 10**9})),
        [],
        ["qmix on predator_prey/stag_hunt_small", "GiB of replay", "buffer_size", "nothing was started"],
    ),
]


def _prepare(tmp_path: Path, manifest) -> str:
    if isinstance(manifest, str):
        return manifest
    return str(write_manifest(tmp_path / "m.yaml", TINY if manifest is None else manifest))


def _assert_refused(result, out: Path, fragments: list[str]) -> None:
    err = result.stderr
    assert result.returncode == 2, (result.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    for fragment in fragments:
        assert fragment in err, (fragment, err[-2000:])
    assert not out.exists(), f"{out} was created"


@pytest.mark.parametrize("case_id,manifest,flags,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_exit_2_a_specific_message_and_nothing_written(
    tmp_path, case_id, manifest, flags, fragments
):
    suite = _prepare(tmp_path, manifest)
    out = tmp_path / "out"
    _assert_refused(run_reproduce("--suite", suite, "--out", str(out), *flags, timeout=120), out, fragments)


def test_a_manifest_that_is_not_text(tmp_path):
    path = tmp_path / "random.yaml"
    path.write_bytes(bytes(range(256)) + os.urandom(44))
    out = tmp_path / "out"
    _assert_refused(
        run_reproduce("--suite", str(path), "--out", str(out), timeout=120), out, [str(path), "not a YAML text file"]
    )


def test_out_naming_an_existing_file_or_a_path_below_one(tmp_path, tiny_manifest):
    existing = tmp_path / "a_file"
    existing.write_text("keep me\n")
    for out in (existing, existing / "sub"):
        result = run_reproduce("--suite", str(tiny_manifest), "--out", str(out), timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert str(out) in result.stderr and "--out" in result.stderr, result.stderr[-2000:]
    assert existing.read_text() == "keep me\n"  # nothing already there is touched


def test_a_ray_address_with_nothing_listening_is_refused_quickly(tmp_path, tiny_manifest):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    start = time.monotonic()
    result = run_reproduce(
        "--suite",
        str(tiny_manifest),
        "--out",
        str(out),
        "--backend",
        "ray",
        "--address",
        f"127.0.0.1:{port}",
        timeout=60,
    )
    elapsed = time.monotonic() - start
    _assert_refused(result, out, [f"no Ray cluster at 127.0.0.1:{port}"])
    assert elapsed < 30, f"took {elapsed:.0f} s to refuse"
