"""Before any work starts: do the runs that will execute side by side fit in this machine's memory?

A replay-based value learner keeps ``buffer_size`` whole episodes (5000 in the PyMARL profiles),
padded to the episode limit. Its storage is allocated lazily and fills as episodes arrive, so a run
whose replay cannot fit is killed by the kernel hours in, when the replay fills, and the runs beside
it with it. That is bad input the suite can see at the start: the replay's size follows from the
learner's config and the environment's spec alone (computed here on the ``meta`` device: nothing is
allocated).

Estimate per run = replay (its compact storage dtypes) + ``BASE_BYTES``, the rest of a value run's
resident memory: interpreter, PyTorch, JAX for SMAX, the update's activations (kept by the
allocator, marl/allocator.py). Measured (tests/benchmarks/test_bench_memory.py, a fresh process
with its replay full of episodes at the length limit, updates, an evaluation and checkpoints):
the rest is 0.66-1.24 GiB (DDN on SMAX 3s_vs_5z and Predator-Prey stag hunt, QMIX on stag hunt;
the most for DDN's pymarl2 batches of 128: 1.95-2.01 GiB in all with its 0.78 GiB replay; real
DDN pymarl2 runs before the SMAX import was slimmed peaked at 2.17-2.19 GiB, VmHWM at 1.8-1.9M
steps). ``BASE_BYTES`` keeps a margin above the largest. Policy learners keep one rollout and are
not counted.

The check sums the estimates of the ``slots`` largest pending runs (the most that can run at once)
and compares them with MemAvailable (/proc/meminfo). Off Linux nothing is checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

BASE_BYTES = int(1.5 * 2**30)  # resident memory of a value run besides its replay (see above)
GIB = 2**30


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable in bytes, or None where the kernel does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def replay_bytes(
    algorithm: str, family: str, scenario: str, overrides: dict[str, Any], env_options: dict[str, Any]
) -> int | None:
    """Bytes of a full replay of this run (None: the learner keeps no replay, or the environment
    cannot be built here, e.g. StarCraft II outside the image)."""
    import envs
    from marl.registry import get_algorithm
    from marl.value.buffer import EpisodeLayout

    algo = get_algorithm(algorithm)
    if algo.kind != "value":
        return None
    cfg = algo.make_config(overrides, scenario=scenario)
    try:
        env = envs.make_env(family, scenario, num_envs=1, seed=0, **env_options)
    except envs.BackendUnavailableError:
        return None
    try:
        layout = EpisodeLayout.from_spec(env.spec)
    finally:
        env.close()
    tensors = layout.allocate(cfg.buffer_size, torch.device("meta"), compact=True)
    return sum(t.numel() * t.element_size() for t in tensors.values()) + cfg.buffer_size * 8  # + lengths


def memory_problem(specs: Iterable[Any], slots: int, available: int | None = None) -> str | None:
    """A message saying which runs cannot fit and what to do, or None when they fit (or when
    the machine's available memory is unknown). ``specs``: the RunSpecs that will execute."""
    available = available_bytes() if available is None else available
    if available is None:
        return None
    sizes: dict[tuple, int | None] = {}
    estimates = []
    for spec in specs:
        key = (spec.algorithm, spec.family, spec.scenario, repr(sorted(spec.overrides.items())), repr(spec.env_options))
        if key not in sizes:
            sizes[key] = replay_bytes(spec.algorithm, spec.family, spec.scenario, spec.overrides, spec.env_options)
        if sizes[key] is not None:
            estimates.append((sizes[key] + BASE_BYTES, sizes[key], spec))
    if not estimates:
        return None
    estimates.sort(key=lambda e: -e[0])
    largest, replay, spec = estimates[0]
    where = f"{spec.algorithm} on {spec.family}/{spec.scenario} (run {spec.id})"
    if largest > available:
        return (
            f"{where} needs about {largest / GIB:.1f} GiB ({replay / GIB:.1f} GiB of replay for "
            f"buffer_size episodes padded to the episode limit, plus {BASE_BYTES / GIB:.1f} GiB), but this "
            f"machine has {available / GIB:.1f} GiB available; nothing was started. Give the run a smaller "
            "replay (an override buffer_size: N in the manifest, or --set buffer_size=N for one run), "
            "leave that scenario out with --only, or run it on a machine with more memory."
        )
    together = estimates[: max(1, slots)]
    total = sum(e[0] for e in together)
    if total > available:
        fit, used = 0, 0
        for est, _, _ in together:
            if used + est > available:
                break
            fit, used = fit + 1, used + est
        return (
            f"{len(together)} runs side by side would need about {total / GIB:.1f} GiB (the largest: {where}, "
            f"{largest / GIB:.1f} GiB), but this machine has {available / GIB:.1f} GiB available; nothing was "
            f"started. Run fewer at once (--workers {fit}) or give the runs a smaller replay (buffer_size)."
        )
    return None
