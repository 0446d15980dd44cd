"""SMAX adapter throughput beside jaxmarl's own, measured in the same run.

* ``test_bench_smax_step``: the learner's situation. Each step random available actions are drawn
  in torch from the adapter's torch mask, and ``env.step`` returns torch tensors (final_*
  fields included). Beside it, interleaved round by round: jaxmarl's ``jit(vmap(env.step))`` on
  ``HeuristicEnemySMAX`` called from a Python loop, with the available-action masks and the random
  choice of the next actions inside that same jitted call (one dispatch per step, no transfer to
  torch, JAX's asynchronous dispatch left on): the most a per-step Python loop over the raw library
  gets.
* ``test_bench_smax_rollout``: ``env.rollout`` (one ``lax.scan`` over T steps with the random policy
  inside JAX), beside the same scan written directly over jaxmarl's ``step``.

Env steps = joint steps summed over the B copies; agent steps = env steps x agents.
Run: .venv/bin/python -m pytest tests/benchmarks/test_bench_smax.py --benchmark-only
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import pytest
import torch

import envs
from envs import smax

MAPS = ["3m", "3s_vs_5z"]
BATCHES = [8, 128]
# Short rounds, many of them, alternating with the raw library's: on a shared machine the load
# changes from second to second, and each ratio compares two neighbouring rounds.
STEPS_PER_ROUND = {8: 150, 128: 30}
ROUNDS = 15
ROLLOUT_T = 64


class RawJaxmarl:
    """jaxmarl used directly: B HeuristicEnemySMAX copies, random available actions, auto-reset."""

    def __init__(self, env: smax.SMAXEnv):
        self.je = je = env._c.env  # the same HeuristicEnemySMAX configuration as the adapter's
        self.num_envs = b = env.spec.num_envs

        def step(keys, states, actions):
            split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
            keys, step_keys, policy_keys = split[:, 0], split[:, 1], split[:, 2]
            act = {a: actions[:, i] for i, a in enumerate(je.agents)}
            obs, states, rewards, dones, _ = jax.vmap(je.step)(step_keys, states, act)
            avail = jnp.stack(list(jax.vmap(je.get_avail_actions)(states).values()), 1).astype(bool)
            actions = jax.vmap(smax.uniform_available_policy)(policy_keys, None, avail)
            return keys, states, actions, (obs, rewards, dones)

        def rollout(keys, states, actions):
            def body(carry, _):
                keys, states, actions, (obs, rewards, dones) = step(*carry)
                return (keys, states, actions), (rewards, dones)

            return jax.lax.scan(body, (keys, states, actions), None, length=ROLLOUT_T)

        def strong(tree):  # see the weak-type note in envs/smax.py: avoids a retrace per call site
            return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), tree)

        keys = jax.random.split(jax.random.key(0), b)
        _, states = jax.vmap(je.reset)(keys)
        stop = je.num_movement_actions - 1
        self.carry = (keys, strong(states), jnp.full((b, je.num_agents), stop, jnp.int32))
        self.step = jax.jit(step)
        self.rollout = jax.jit(rollout)

    def loop(self, steps: int) -> float:
        """Python loop over the jitted step; returns env steps per second."""
        keys, states, actions = self.carry
        start = time.perf_counter()
        for _ in range(steps):
            keys, states, actions, out = self.step(keys, states, actions)
        jax.block_until_ready(out)
        rate = steps * self.num_envs / (time.perf_counter() - start)
        self.carry = (keys, states, actions)
        return rate

    def scan(self) -> float:
        start = time.perf_counter()
        self.carry, traj = self.rollout(*self.carry)
        jax.block_until_ready(traj)
        return ROLLOUT_T * self.num_envs / (time.perf_counter() - start)


def random_available(avail: torch.Tensor) -> torch.Tensor:
    """Uniform over each agent's available actions: the argmax of uniform noise with the
    unavailable actions set to -1 (2-3x cheaper than torch.multinomial at 128 x 3 agents)."""
    return torch.rand(avail.shape).masked_fill_(~avail, -1.0).argmax(-1)


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _record(benchmark, env, work_steps: int, raw_rates: list[float], raw_label: str) -> None:
    """raw_rates[i] was measured just before round i (raw_rates[0]: before the warm-up round)."""
    if benchmark.disabled:  # --benchmark-disable: the rounds ran once, nothing was timed
        return
    ours_rates = [work_steps * env.spec.num_envs / t for t in benchmark.stats.stats.data]
    ours, raw = _median(ours_rates), _median(raw_rates[1:])
    paired = _median([o / r for o, r in zip(ours_rates, raw_rates[1:])])
    benchmark.extra_info.update(
        {
            "scenario": env.spec.scenario,
            "num_envs": env.spec.num_envs,
            "n_agents": env.spec.n_agents,
            "env_steps_per_s": round(ours),
            "agent_steps_per_s": round(ours * env.spec.n_agents),
            f"{raw_label}_env_steps_per_s": round(raw),
            f"ratio_to_{raw_label}": round(ours / raw, 3),  # of the medians
            f"paired_ratio_to_{raw_label}": round(paired, 3),  # median of neighbouring-round ratios
            "torch_threads": torch.get_num_threads(),
        }
    )


@pytest.mark.parametrize("num_envs", BATCHES)
@pytest.mark.parametrize("scenario", MAPS)
def test_bench_smax_step(benchmark, scenario, num_envs):
    env = envs.make_env("smax", scenario, num_envs=num_envs, seed=0)
    raw = RawJaxmarl(env)
    steps = STEPS_PER_ROUND[num_envs]
    raw.loop(3)  # compile (and warm) the raw step
    out = env.reset()
    state = {"out": out}
    raw_rates: list[float] = []

    def adapter_round():
        o = state["out"]
        for _ in range(steps):
            o = env.step(random_available(o.avail_actions))
        state["out"] = o

    # The raw loop runs as the (untimed) setup of each adapter round, so both see the same load.
    benchmark.pedantic(adapter_round, setup=lambda: raw_rates.append(raw.loop(steps)), rounds=ROUNDS, warmup_rounds=1)
    _record(benchmark, env, steps, raw_rates, "raw_jaxmarl_loop")


@pytest.mark.parametrize("num_envs", BATCHES)
@pytest.mark.parametrize("scenario", MAPS)
def test_bench_smax_rollout(benchmark, scenario, num_envs):
    env = envs.make_env("smax", scenario, num_envs=num_envs, seed=0)
    raw = RawJaxmarl(env)
    raw.scan()  # compile
    env.reset()
    env.rollout(ROLLOUT_T)  # compile
    raw_rates: list[float] = []
    benchmark.pedantic(
        lambda: env.rollout(ROLLOUT_T), setup=lambda: raw_rates.append(raw.scan()), rounds=ROUNDS, warmup_rounds=1
    )
    _record(benchmark, env, ROLLOUT_T, raw_rates, "raw_jaxmarl_scan")
