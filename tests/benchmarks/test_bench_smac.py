"""Throughput of the StarCraft II family (smacv2 + the real game) on 3m; needs StarCraft II.

Each round steps every copy STEPS_PER_ROUND times with uniformly random *available* actions;
the timing includes the action sampling, the inter-process round trips and the auto-resets (which,
in SMAC, restart the battle inside the running game). Beside ours, the same loop on one raw
``smacv2`` StarCraft2Env in this process (no worker, no torch) gives the library's own throughput;
``extra_info`` records both and their ratio.

Run (in the Docker image): ``.venv/bin/python -m pytest tests/benchmarks/test_bench_smac.py --benchmark-only``
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from envs import make_env
from envs.smac import SmacOptions, smacv2_factory, smacv2_kwargs

pytestmark = pytest.mark.needs_sc2

SCENARIO = "3m"
STEPS_PER_ROUND = 200


def _sample(avail: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    scores = torch.rand(avail.shape, generator=gen).masked_fill_(~avail, -1.0)
    return scores.argmax(-1)


def _raw_smacv2_steps_per_s(steps: int) -> float:
    """The same random-available-action loop on one smacv2 env in this process."""
    env = smacv2_factory(smacv2_kwargs(SCENARIO, SmacOptions(), seed=0))
    rng = np.random.default_rng(0)
    try:
        env.reset()
        for _ in range(20):  # warm-up, as ours gets its warm-up round
            _raw_step(env, rng)
        start = time.perf_counter()
        for _ in range(steps):
            _raw_step(env, rng)
        return steps / (time.perf_counter() - start)
    finally:
        env.close()


def _raw_step(env, rng: np.random.Generator) -> None:
    avail = np.asarray(env.get_avail_actions(), dtype=bool)
    actions = [int(rng.choice(np.flatnonzero(row))) for row in avail]
    env.get_obs()
    env.get_state()
    _, terminated, _ = env.step(actions)
    if terminated:
        env.reset()


@pytest.mark.parametrize("num_envs", [1, 8])
def test_bench_smac_env_steps(benchmark, num_envs):
    env = make_env("smac", SCENARIO, num_envs=num_envs, seed=0)
    gen = torch.Generator().manual_seed(0)
    state = {"out": env.reset()}

    def run():
        out = state["out"]
        for _ in range(STEPS_PER_ROUND):
            out = env.step(_sample(out.avail_actions, gen))
        state["out"] = out

    try:
        benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    finally:
        env.close()
    seconds = benchmark.stats.stats.mean
    env_steps_per_s = num_envs * STEPS_PER_ROUND / seconds
    raw = _raw_smacv2_steps_per_s(STEPS_PER_ROUND)
    benchmark.extra_info.update(
        scenario=SCENARIO,
        num_envs=num_envs,
        env_steps_per_s=env_steps_per_s,
        agent_steps_per_s=env_steps_per_s * env.spec.n_agents,
        raw_smacv2_env_steps_per_s=raw,
        ratio_to_raw=env_steps_per_s / raw,
        backend=env.provenance(),
    )
