"""The memory check before a suite starts: replay sizes from config and env spec, and the refusal
when the largest run, or the runs that would execute side by side, exceed the available memory."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import envs
from suites.memory import BASE_BYTES, GIB, available_bytes, memory_problem, replay_bytes


@dataclass
class Spec:
    algorithm: str
    family: str = "predator_prey"
    scenario: str = "stag_hunt_small"
    overrides: dict = field(default_factory=dict)
    env_options: dict = field(default_factory=dict)
    id: str = "abc123"


def test_replay_bytes_is_the_compact_storage_of_buffer_size_padded_episodes():
    env = envs.make_env("predator_prey", "stag_hunt_small", num_envs=1, seed=0)
    spec = env.spec
    env.close()
    T, N, A, n = spec.episode_limit, spec.n_agents, spec.n_actions, 100
    # By hand: uint8 grids (Predator-Prey declares them), bool masks, int8 actions (< 128 choices),
    # float rewards, int64 lengths.
    assert spec.obs_storage_dtype == spec.state_storage_dtype == torch.uint8 and A <= 127
    obs = (T + 1) * N * math.prod(spec.obs_shape)
    state = (T + 1) * math.prod(spec.state_shape)
    avail = (T + 1) * N * A
    actions = T * N * 1
    per_episode = obs + state + avail + actions + T * 4 + T + T
    assert replay_bytes("qmix", "predator_prey", "stag_hunt_small", {"buffer_size": n}, {}) == n * (per_episode + 8)
    # Twice the episodes, twice the bytes; an on-policy learner keeps no replay.
    assert replay_bytes("ddn", "predator_prey", "stag_hunt_small", {"buffer_size": 2 * n}, {}) == 2 * n * (
        per_episode + 8
    )
    assert replay_bytes("mappo", "meltingpot", "stag_hunt_in_the_matrix__repeated", {}, {}) is None


def test_runs_that_fit_pass_and_one_run_too_large_is_named_with_what_to_do():
    small = Spec("qmix", overrides={"buffer_size": 10})
    assert memory_problem([small, small], slots=2, available=8 * GIB) is None
    big = Spec("qmix", overrides={"buffer_size": 10**7}, id="big999")
    message = memory_problem([small, big], slots=2, available=8 * GIB)
    assert message is not None
    for fragment in ("qmix on predator_prey/stag_hunt_small (run big999)", "8.0 GiB available", "buffer_size"):
        assert fragment in message, message


def test_runs_side_by_side_that_do_not_fit_suggest_fewer_workers(monkeypatch):
    one = replay_bytes("qmix", "predator_prey", "stag_hunt_small", {"buffer_size": 5000}, {}) + BASE_BYTES
    specs = [Spec("qmix", overrides={"buffer_size": 5000}, id=f"r{i}") for i in range(4)]
    available = int(2.5 * one)  # room for two of them at once, not for four
    assert memory_problem(specs, slots=2, available=available) is None
    message = memory_problem(specs, slots=4, available=available)
    assert message is not None and "--workers 2" in message, message
    # Memory unknown (off Linux): nothing is refused.
    monkeypatch.setattr("suites.memory.available_bytes", lambda: None)
    assert memory_problem(specs, slots=4) is None


def test_available_bytes_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n")
    assert available_bytes(meminfo) == 20000000 * 1024
    meminfo.write_text("nothing here\n")
    assert available_bytes(meminfo) is None
