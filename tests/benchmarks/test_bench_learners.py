"""End-to-end training throughput of the value learners, beside the raw environment's throughput.

For each (algorithm, scenario, parallel envs) this measures, in one run:

* ``train_env_steps_per_s``: env steps per second of the full training loop (acting with the
  learner's network, epsilon-greedy, replay insertion, one update per ``num_envs`` episodes with
  the ``pymarl2`` profile's batch of 128 episodes; or, for the paper profile of ``suites/ddn_smax.yaml``
  (``pymarl``: 1 env, batch 32, an update per episode), that profile), after the replay holds a
  full batch;
* ``raw_env_steps_per_s``: the same environment stepped with uniformly random available actions
  (chosen in torch, as the learner does) for the same number of steps; and their ratio;
* ``updates_per_s``: learner updates per second on batches sampled from that replay;
* ``peak_rss_mb``: the process's peak resident memory so far (ru_maxrss; cumulative over the session);
* a roofline: ``update_gflop`` (floating-point work of one update, counted by torch's
  FlopCounterMode: forward, backward and target networks), ``matmul_gflops`` (this core's speed on
  a matmul of the agent's shape, measured in the same run), ``update_efficiency`` (the fraction of
  that speed the update reaches) and ``compute_floor_env_steps_per_s``: the end-to-end speed if the
  update ran at ``matmul_gflops`` and acting cost nothing beyond the raw environment. It bounds what
  any implementation of the same algorithm (pymarl2's 128-episode batch per 8 new episodes,
  synchronous collection) can reach on this core;
* where an update's time goes (CPU rows): ``update_time_by_kind``, the share of the profiled
  self time of ``PROFILED_UPDATES`` updates by kind of op (matrix products; the C++ GRU's own
  per-step work; other element-wise ops and reductions; copies and layout changes; views; the
  optimizer; anything else), and ``update_top_ops``, the ten largest ops by self time (torch
  profiler; its own overhead is in neither).

Where CUDA is available, ``test_training_throughput_cuda`` measures three of the cases (3s_vs_5z x8,
Predator-Prey x8, the paper profile) with the learner on the GPU and the environment on the CPU
(``device`` in each row); the CPU rows of the same session give the speed-up as a ratio, and the
roofline's ``matmul_gflops`` is then the GPU's on the same product.

Run with ``make bench`` (JSON under results/benchmarks/) or
``.venv/bin/python -m pytest tests/benchmarks/test_bench_learners.py --benchmark-only``.
"""

from __future__ import annotations

import resource
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from marl.value.controller import uniform_available_actions
from marl.value.trainer import ValueTrainer

from marl.trainer import Budget
from tests.benchmarks import sync_device

# paper profile of suites/ddn_smax.yaml (the reference campaign's) is marked "paper".
CASES = [
    ("smax", "3m", 8, "pymarl2"),
    ("smax", "3s_vs_5z", 8, "pymarl2"),
    ("smax", "3m", 32, "pymarl2"),
    ("predator_prey", "stag_hunt", 8, "pymarl2"),
    ("predator_prey", "stag_hunt", 32, "pymarl2"),
    ("smax", "3s_vs_5z", 1, "pymarl"),
]


def _case_id(case) -> str:
    family, scenario, num_envs, profile = case
    return f"{family}-{scenario}-{num_envs}" + ("-paper" if profile == "pymarl" else "")


MEASURED_ROUNDS = 12
PROFILED_UPDATES = 3
THREADS = 1  # one learner per core: the suite runs one run per worker process


def _raw_env_steps_per_s(env, steps: int) -> float:
    out = env.reset(seed=0)
    generator = torch.Generator(device=out.avail_actions.device).manual_seed(0)
    n = max(steps // env.spec.num_envs, 1)
    start = time.perf_counter()
    for _ in range(n):
        out = env.step(uniform_available_actions(out.avail_actions, generator))
    return n * env.spec.num_envs / (time.perf_counter() - start)


def _matmul_gflops(hidden: int, device: torch.device) -> float:
    """Speed of the update's dominant product on ``device`` (one thread on the CPU): packed agent
    rows times a GRU's input/recurrent weights ([8192, H] @ [H, 3H])."""
    a, b = torch.randn(8192, hidden, device=device), torch.randn(hidden, 3 * hidden, device=device)
    for _ in range(5):
        a @ b
    n = 50 if device.type == "cpu" else 500
    sync_device(device)
    start = time.perf_counter()
    for _ in range(n):
        a @ b
    sync_device(device)
    return 2 * 8192 * hidden * 3 * hidden * n / (time.perf_counter() - start) / 1e9


OP_KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"),
    "copy_layout": (
        "aten::copy_",
        "aten::index_copy",
        "aten::index_copy_",
        "aten::index_select",
        "aten::index",
        "aten::index_put_",
        "aten::cat",
        "aten::clone",
        "aten::contiguous",
        "aten::_to_copy",
        "aten::to",
        "aten::gather",
        "aten::scatter",
        "aten::scatter_add",
        "aten::stack",
        "aten::repeat",
        "aten::new_zeros",
        "aten::zeros",
        "aten::zeros_like",
        "aten::fill_",
        "aten::zero_",
        "aten::empty",
        "aten::empty_like",
        "aten::new_empty",
        "aten::empty_strided",
        "aten::masked_fill",
        "aten::masked_select",
        "aten::nonzero",
        "aten::flip",
    ),
    "view": (
        "aten::view",
        "aten::reshape",
        "aten::_reshape_alias",
        "aten::transpose",
        "aten::t",
        "aten::narrow",
        "aten::slice",
        "aten::select",
        "aten::expand",
        "aten::unsqueeze",
        "aten::squeeze",
        "aten::permute",
        "aten::as_strided",
        "aten::flatten",
        "aten::unflatten",
        "aten::alias",
        "aten::detach",
        "detach",
        "aten::unbind",
        "aten::split",
        "aten::chunk",
        "aten::expand_as",
        "aten::view_as",
        "aten::lift_fresh",
    ),
}


def _op_kind(name: str) -> str:
    if "PackedGRURecurrence" in name:
        return "gru_recurrence"  # the C++ (or PyTorch-loop) recurrence's own work, products excluded
    if "_foreach" in name or "Optimizer" in name or "adam" in name.lower():
        return "optimizer"
    for kind, names in OP_KINDS.items():
        if name in names:
            return kind
    return "elementwise_reduction" if name.startswith("aten::") else "other"


def _update_time_by_op(trainer) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Shares of the profiled self CPU time of PROFILED_UPDATES updates, by op kind and top ops."""
    batches = [trainer.buffer.sample(trainer.cfg.batch_size, trainer.generator) for _ in range(PROFILED_UPDATES)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for batch in batches:
            trainer.learner.train_step(batch, trainer.episode)
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages() if e.self_cpu_time_total > 0}
    total = sum(self_us.values()) or 1.0
    kinds: dict[str, float] = {}
    for name, us in self_us.items():
        kind = _op_kind(name)
        kinds[kind] = kinds.get(kind, 0.0) + us / total
    top = sorted(self_us.items(), key=lambda kv: -kv[1])[:10]
    return {k: round(v, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}, [
        (name, round(us / total, 3)) for name, us in top
    ]


def _update_gflop(trainer, batch) -> float:
    with FlopCounterMode(display=False) as counter:
        trainer.learner.train_step(batch, trainer.episode)
    return counter.get_total_flops() / 1e9


@pytest.mark.parametrize("algorithm", ["qmix", "ddn"])
@pytest.mark.parametrize("family,scenario,num_envs,profile", CASES, ids=[_case_id(c) for c in CASES])
def test_training_throughput(benchmark, algorithm, family, scenario, num_envs, profile):
    _measure_training(benchmark, algorithm, family, scenario, num_envs, profile, torch.device("cpu"))


# The learner on a GPU (the environment stays on the CPU: SMAX's JAX and Predator-Prey's torch
# step there); the same cases' CPU rows of the same session give the GPU's speed-up as a ratio.
CUDA_CASES = [CASES[1], CASES[3], CASES[5]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("algorithm", ["qmix", "ddn"])
@pytest.mark.parametrize("family,scenario,num_envs,profile", CUDA_CASES, ids=[_case_id(c) for c in CUDA_CASES])
def test_training_throughput_cuda(benchmark, algorithm, family, scenario, num_envs, profile):
    _measure_training(benchmark, algorithm, family, scenario, num_envs, profile, torch.device("cuda"))


def _measure_training(benchmark, algorithm, family, scenario, num_envs, profile, device: torch.device):
    torch.set_num_threads(THREADS)
    overrides = {"profile": profile, "num_envs": num_envs}
    trainer = ValueTrainer(
        algorithm,
        family,
        scenario,
        seed=0,
        budget=Budget(env_steps=10**9, eval_episodes=1),
        overrides=overrides,
        device=str(device),
    )
    try:
        while not trainer.buffer.can_sample(trainer.cfg.batch_size):  # warm-up: fill one batch
            trainer.iteration()
        trainer.iteration()  # first update (one-off allocations)

        def measured():
            t0, updates0 = trainer.t_env, trainer.learner.updates
            sync_device(device)
            start = time.perf_counter()
            for _ in range(MEASURED_ROUNDS):
                trainer.iteration()
            sync_device(device)
            elapsed = time.perf_counter() - start
            return (trainer.t_env - t0) / elapsed, trainer.t_env - t0, trainer.learner.updates - updates0

        train_sps, steps, n_updates = benchmark.pedantic(measured, rounds=1, iterations=1)
        steps_measured = MEASURED_ROUNDS * num_envs * trainer.env.spec.episode_limit // 4
        raw_sps = _raw_env_steps_per_s(trainer.env, steps_measured)

        sync_device(device)
        start = time.perf_counter()
        for _ in range(5):
            trainer.learner.train_step(
                trainer.buffer.sample(trainer.cfg.batch_size, trainer.generator), trainer.episode
            )
        sync_device(device)
        updates_per_s = 5 / (time.perf_counter() - start)

        update_gflop = (
            sum(
                _update_gflop(trainer, trainer.buffer.sample(trainer.cfg.batch_size, trainer.generator))
                for _ in range(3)
            )
            / 3
        )
        peak_gflops = _matmul_gflops(trainer.cfg.hidden_dim, device)
        by_kind, top_ops = _update_time_by_op(trainer) if device.type == "cpu" else ({}, [])
        steps_per_update = steps / n_updates
        floor_sps = steps_per_update / (update_gflop / peak_gflops + steps_per_update / raw_sps)
        benchmark.extra_info.update(
            {
                "algorithm": algorithm,
                "family": family,
                "scenario": scenario,
                "num_envs": num_envs,
                "profile": profile,
                "device": device.type,
                "batch_size": trainer.cfg.batch_size,
                "torch_threads": THREADS,
                "train_env_steps_per_s": round(train_sps, 1),
                "raw_env_steps_per_s": round(raw_sps, 1),
                "ratio_to_raw_env": round(train_sps / raw_sps, 4),
                "updates_per_s": round(updates_per_s, 2),
                "updates_in_measurement": n_updates,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "env_steps_per_update": round(steps_per_update, 1),
                "update_gflop": round(update_gflop, 3),
                "matmul_gflops": round(peak_gflops, 1),
                "update_efficiency": round(update_gflop * updates_per_s / peak_gflops, 3),
                "compute_floor_env_steps_per_s": round(floor_sps, 1),
                "ratio_to_compute_floor": round(train_sps / floor_sps, 3),
                "update_time_by_kind": by_kind,
                "update_top_ops": top_ops,
            }
        )
        print(
            f"\n{algorithm} {family}/{scenario} x{num_envs} ({profile}, {device.type}): train {train_sps:.0f} env steps/s, "
            f"raw {raw_sps:.0f} (ratio {train_sps / raw_sps:.3f}), {updates_per_s:.2f} updates/s, "
            f"update {update_gflop:.2f} GFLOP at {update_gflop * updates_per_s:.1f} of {peak_gflops:.0f} GFLOP/s, "
            f"compute floor {floor_sps:.0f} env steps/s (ratio {train_sps / floor_sps:.3f})"
        )
    finally:
        trainer.close()
