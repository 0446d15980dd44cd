"""Throughput of the Melting Pot adapter beside the raw substrate, in the same run.

Adapter: ``make_env("meltingpot", substrate, num_envs=B)`` (one worker process per copy), stepped
with uniformly random actions; timing includes the auto-resets, the shared-memory transfer and the
torch tensors handed back. Raw: a plain ``meltingpot.substrate.build`` loop in this process with
random actions and ``reset()`` at episode ends, reading nothing but the timestep (the library's own
best case). ``extra_info`` has env steps/s (joint steps summed over copies), agent steps/s, the raw
numbers and ``ratio_vs_raw`` (adapter / raw; with B > 1 the copies step in parallel, so it can
exceed 1 on a machine with spare cores).

Run: ``.venv/bin/python -m pytest tests/benchmarks/test_bench_meltingpot.py --benchmark-only``
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytest.importorskip("meltingpot")

from envs import make_env  # noqa: E402

SUBSTRATES = {
    "prisoners_dilemma_in_the_matrix__repeated": 400,  # 2 players; steps per round
    "commons_harvest__open": 120,  # 7 players
}
ROUNDS = 3

_raw_cache: dict[str, float] = {}


def _raw_env_steps_per_s(name: str, steps: int) -> float:
    """Best of ROUNDS rounds of a single-process random-action loop on the raw substrate."""
    if name not in _raw_cache:
        from meltingpot import substrate

        env = substrate.build(name, roles=substrate.get_config(name).default_player_roles)
        try:
            n_players, n_actions = len(env.action_spec()), env.action_spec()[0].num_values
            rng = np.random.default_rng(0)
            env.reset()
            best = 0.0
            for _ in range(ROUNDS):
                start = time.perf_counter()
                for _ in range(steps):
                    if env.step(rng.integers(0, n_actions, n_players).tolist()).last():
                        env.reset()
                best = max(best, steps / (time.perf_counter() - start))
        finally:
            env.close()
        _raw_cache[name] = best
    return _raw_cache[name]


@pytest.mark.parametrize("num_envs", [1, 2, 4])
@pytest.mark.parametrize("name", list(SUBSTRATES))
def test_bench_meltingpot(benchmark, name, num_envs):
    steps = SUBSTRATES[name]
    env = make_env("meltingpot", name, num_envs=num_envs, seed=0)
    try:
        gen = torch.Generator().manual_seed(0)
        shape = (num_envs, env.spec.n_agents)
        env.reset()
        for _ in range(20):  # warm-up
            env.step(torch.randint(0, env.spec.n_actions, shape, generator=gen))

        def run():
            for _ in range(steps):
                env.step(torch.randint(0, env.spec.n_actions, shape, generator=gen))

        benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
        env_sps = steps * num_envs / benchmark.stats.stats.min
        raw_sps = _raw_env_steps_per_s(name, steps)
        benchmark.extra_info.update(
            substrate=name,
            num_envs=num_envs,
            n_agents=env.spec.n_agents,
            env_steps_per_s=round(env_sps, 1),
            agent_steps_per_s=round(env_sps * env.spec.n_agents, 1),
            raw_env_steps_per_s=round(raw_sps, 1),
            raw_agent_steps_per_s=round(raw_sps * env.spec.n_agents, 1),
            ratio_vs_raw=round(env_sps / raw_sps, 3),
        )
    finally:
        env.close()
