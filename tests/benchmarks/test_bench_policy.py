"""End-to-end training throughput of the on-policy learners on Melting Pot, beside the raw substrate.

For each (algorithm, substrate) with MAPPO's defaults (8 copies, rollouts of 200 steps, 15 PPO
epochs over chunks of 10 steps) this measures, in one run:

* ``train_env_steps_per_s``: env steps per second of whole iterations (rollout with the learner's
  networks and, for BiDist, the distilled policy in its slots; the PPO update; BiDist's distillation
  rounds), after one warm-up iteration;
* ``collect_env_steps_per_s`` and ``update_s``: the two halves separately;
* ``raw_env_steps_per_s``: the substrate built directly with ``meltingpot.substrate.build`` in
  this process, stepped with random actions (the library's own best case, one copy), and the
  ratio of training throughput to it;
* ``peak_rss_mb``: the process's peak resident memory (ru_maxrss; cumulative over the session);
* where the time goes: ``collect_ratio_to_raw_env`` (collection alone, networks included, against
  the raw substrate) and a roofline of the update: ``update_gflop`` (one iteration's PPO update,
  counted by torch's FlopCounterMode), ``matmul_gflops`` (this core on a convolution-sized matmul,
  same run), ``update_efficiency`` and ``compute_floor_env_steps_per_s``, the end-to-end speed if
  collection ran at the raw substrate's speed and the update at ``matmul_gflops``.

Run with ``make bench`` (JSON under results/benchmarks/) or
``.venv/bin/python -m pytest tests/benchmarks/test_bench_policy.py --benchmark-only``.
"""

from __future__ import annotations

import resource
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("meltingpot")

from marl.policy.trainer import PolicyTrainer  # noqa: E402
from marl.trainer import Budget
from tests.benchmarks.test_bench_learners import _matmul_gflops  # noqa: E402
from tests.benchmarks.test_bench_meltingpot import _raw_env_steps_per_s  # noqa: E402

SUBSTRATES = ["prisoners_dilemma_in_the_matrix__repeated", "stag_hunt_in_the_matrix__arena"]  # 2 and 8 players
MEASURED_ITERATIONS = 3
THREADS = 1


@pytest.mark.parametrize("algorithm", ["mappo", "bidist"])
@pytest.mark.parametrize("substrate", SUBSTRATES)
def test_policy_training_throughput(benchmark, algorithm, substrate):
    torch.set_num_threads(THREADS)
    trainer = PolicyTrainer(algorithm, "meltingpot", substrate, seed=0, budget=Budget(env_steps=10**9, eval_episodes=1))
    try:
        trainer.iteration()  # warm-up (one-off allocations)
        timings = {"collect": 0.0, "update": 0.0}
        collect, update = trainer.collector.collect, trainer.learner.train_step

        def timed(name, fn):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    timings[name] += time.perf_counter() - start

            return wrapper

        trainer.collector.collect = timed("collect", collect)
        trainer.learner.train_step = timed("update", update)

        def measured():
            t0 = trainer.t_env
            start = time.perf_counter()
            for _ in range(MEASURED_ITERATIONS):
                trainer.iteration()
            return (trainer.t_env - t0) / (time.perf_counter() - start), trainer.t_env - t0

        train_sps, steps = benchmark.pedantic(measured, rounds=1, iterations=1)
        raw_sps = _raw_env_steps_per_s(substrate, 2000)
        cfg = trainer.cfg
        update_s = timings["update"] / MEASURED_ITERATIONS
        collect_sps = steps / timings["collect"]

        flops = {}

        def counted_update(*args, **kwargs):  # one more iteration, its update's work counted
            with FlopCounterMode(display=False) as counter:
                result = update(*args, **kwargs)
            flops["update"] = counter.get_total_flops() / 1e9
            return result

        trainer.learner.train_step = counted_update
        trainer.iteration()
        update_gflop = flops["update"]
        peak_gflops = _matmul_gflops(cfg.hidden_dim, torch.device("cpu"))
        steps_per_iteration = steps / MEASURED_ITERATIONS
        floor_sps = steps_per_iteration / (steps_per_iteration / raw_sps + update_gflop / peak_gflops)
        benchmark.extra_info.update(
            {
                "algorithm": algorithm,
                "family": "meltingpot",
                "scenario": substrate,
                "n_agents": trainer.env.spec.n_agents,
                "num_envs": cfg.num_envs,
                "rollout_length": cfg.rollout_length,
                "ppo_epochs": cfg.ppo_epochs,
                "torch_threads": THREADS,
                "train_env_steps_per_s": round(train_sps, 1),
                "collect_env_steps_per_s": round(collect_sps, 1),
                "update_s": round(update_s, 3),
                "raw_env_steps_per_s": round(raw_sps, 1),
                "ratio_to_raw_env": round(train_sps / raw_sps, 4),
                "collect_ratio_to_raw_env": round(collect_sps / raw_sps, 4),
                "update_gflop": round(update_gflop, 2),
                "matmul_gflops": round(peak_gflops, 1),
                "update_efficiency": round(update_gflop / update_s / peak_gflops, 3),
                "compute_floor_env_steps_per_s": round(floor_sps, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
        print(
            f"\n{algorithm} {substrate}: train {train_sps:.0f} env steps/s (collect {steps / timings['collect']:.0f}, "
            f"update {timings['update'] / MEASURED_ITERATIONS:.2f} s/iter), raw {raw_sps:.0f} "
            f"(ratio {train_sps / raw_sps:.3f}); update {update_gflop:.1f} GFLOP at "
            f"{update_gflop / update_s:.1f} of {peak_gflops:.0f} GFLOP/s, compute floor {floor_sps:.0f} env steps/s"
        )
    finally:
        trainer.close()
