"""Throughput of the native Predator-Prey environment (standard 10x10 / 8 agents / 8 stags).

Each round steps the env for one episode length (200 steps) with uniformly random *available*
actions sampled on the env's device; the timing includes that sampling and the auto-resets.

There is no raw-library number beside ours: PyMARL2's ``stag_hunt`` is a module inside PyMARL2's
source tree (numpy, one Python loop over copies, agents and prey; imports pygame and PyMARL2's own
``envs`` package), not an installable package. In its place ``extra_info`` records the per-step cost
of each phase of our step (agent moves, captures, prey moves, observations, auto-reset) and of the
action sampling.

Run: ``.venv/bin/python -m pytest tests/benchmarks/test_bench_predator_prey.py --benchmark-only``
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
import torch

from envs import make_env
from marl.value.controller import uniform_available_actions
from tests.benchmarks import sync_device

STEPS_PER_ROUND = 200
PHASES = ("_move_agents", "_captures", "_move_prey", "_observe", "_reset_where")


@pytest.fixture
def torch_threads():
    """Set torch's intra-op threads for one benchmark, then restore them."""
    saved = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(saved)


def _cost_breakdown(env, gen, steps: int) -> dict[str, float]:
    """Microseconds per step spent in each phase of step(), timed by wrapping the phase methods
    on this instance only."""
    spent: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            sync_device(env.device)
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            sync_device(env.device)
            spent[name] += time.perf_counter() - start
            return result

        return wrapper

    for name in PHASES:
        setattr(env, name, timed(name, getattr(env, name)))
    try:
        out = env.reset(seed=1)
        total = 0.0
        for _ in range(steps):
            sync_device(env.device)
            start = time.perf_counter()
            actions = uniform_available_actions(out.avail_actions, gen)
            sync_device(env.device)
            mid = time.perf_counter()
            out = env.step(actions)
            sync_device(env.device)
            spent["action_sampling"] += mid - start
            total += time.perf_counter() - mid
    finally:
        for name in PHASES:
            delattr(env, name)
    spent["step_other"] = total - sum(spent[name] for name in PHASES)  # checks, flags, StepOutput
    return {f"us_per_step.{name.lstrip('_')}": round(1e6 * t / steps, 2) for name, t in spent.items()}


@pytest.mark.parametrize("num_envs", [1, 32, 256])
@pytest.mark.parametrize(
    "device, threads",
    [
        ("cpu", 1),
        ("cpu", 2),
        pytest.param("cuda", None, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
    ],
    ids=["cpu-1thread", "cpu-2threads", "cuda"],
)
def test_bench_predator_prey_step(benchmark, torch_threads, num_envs, device, threads):
    if threads is not None:
        torch_threads(threads)
    env = make_env("predator_prey", "stag_hunt", num_envs=num_envs, seed=0, device=device)
    gen = torch.Generator(device=env.device).manual_seed(0)
    box = {"out": env.reset()}

    def episode_of_steps():
        out = box["out"]
        for _ in range(STEPS_PER_ROUND):
            out = env.step(uniform_available_actions(out.avail_actions, gen))
        sync_device(env.device)
        box["out"] = out

    benchmark.pedantic(episode_of_steps, rounds=5, warmup_rounds=1)

    env_steps_per_s = STEPS_PER_ROUND * num_envs / benchmark.stats.stats.mean
    n_agents = env.spec.n_agents
    benchmark.extra_info.update(
        {
            "scenario": "stag_hunt",
            "num_envs": num_envs,
            "n_agents": n_agents,
            "device": str(env.device),
            "torch_threads": torch.get_num_threads(),
            "env_steps_per_s": round(env_steps_per_s),
            "agent_steps_per_s": round(env_steps_per_s * n_agents),
            "raw_library": "none: PyMARL2 stag_hunt is not installable (source-tree module); see us_per_step.*",
            **_cost_breakdown(env, gen, STEPS_PER_ROUND),
        }
    )
    assert box["out"].obs.shape == (num_envs, n_agents, 75)
